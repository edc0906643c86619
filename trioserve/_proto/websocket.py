"""WebSocket rules, without I/O: which requests ask for a websocket, what a server must
refuse in an opening handshake (RFC 6455 section 4.2.1), how a refusal's head is
finished, and the ASGI ``websocket`` exchange (the scope, and which app message is
valid when and what it asks of the connection: :class:`ASGIWebSocket`).

wsproto (through trio-websocket) parses the handshake and frames the messages; the
trio edge in ``_serve_ws`` asks this module about the fields wsproto lets through and
about the app's messages, and does the I/O. Standard library and the rest of
``_proto`` only (a test asserts trio is never imported from here).
"""

from __future__ import annotations

import binascii
import enum
import http
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .http import ASGI_VERSION, ASGIProtocolError, decode_path, rooted, split_target
from .validate import FORBIDDEN_IN_VALUE, TOKEN

# The one version of the protocol there is (RFC 6455 section 4.2.1, item 6).
VERSION = b"13"
# A status line; h11 writes an empty reason phrase when wsproto gives it none.
_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ([^\r\n]*)\r\n")
_CONNECTION_FIELD = re.compile(rb"\r\nconnection[ \t]*:", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A handshake the server must refuse: the status to answer, the headers the
    answer needs, and why (for the log)."""

    status: int
    reason: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


def handshake_refusal(headers: Iterable[tuple[bytes, bytes]]) -> Refusal | None:
    """The refusal a handshake request with these (lowercase-named) headers gets, or
    None when its ``Sec-WebSocket-Version`` and ``Sec-WebSocket-Key`` are valid.

    A version other than 13 is answered 426 with the version we speak; a missing or
    repeated version, and a key that is missing, repeated or not the base64 of 16
    bytes, are answered 400.
    """
    versions = []
    keys = []
    for name, value in headers:
        if name == b"sec-websocket-version":
            versions.append(value)
        elif name == b"sec-websocket-key":
            keys.append(value)
    if len(versions) != 1:
        return Refusal(400, f"expected one Sec-WebSocket-Version field, got {len(versions)}")
    if versions[0] != VERSION:
        return Refusal(
            426,
            f"unsupported Sec-WebSocket-Version {versions[0]!r}",
            ((b"sec-websocket-version", VERSION),),
        )
    if len(keys) != 1:
        return Refusal(400, f"expected one Sec-WebSocket-Key field, got {len(keys)}")
    if not valid_key(keys[0]):
        return Refusal(400, f"Sec-WebSocket-Key is not the base64 of 16 bytes: {keys[0]!r}")
    return None


def valid_key(key: bytes) -> bool:
    """True when ``key`` is the base64 of 16 bytes, as a client's key must be
    (section 4.2.1, item 5): padded, no other characters."""
    try:
        return len(binascii.a2b_base64(key, strict_mode=True)) == 16
    except binascii.Error:
        return False


def closing_refusal(response: bytes) -> bytes:
    """``response``, a refusal of a handshake as h11 wrote it, as the server sends it
    before closing the connection: the standard reason phrase in a status line that
    has none (``HTTP/1.1 426 `` becomes ``HTTP/1.1 426 Upgrade Required``), and
    ``connection: close`` unless the head has a Connection field already."""
    match = _STATUS_LINE.match(response)
    if match is None:
        return response
    status_line = match[0]
    if not match[2]:
        try:
            phrase = http.HTTPStatus(int(match[1])).phrase
        except ValueError:
            pass
        else:
            status_line = b"HTTP/1.1 %s %s\r\n" % (match[1], phrase.encode("ascii"))
    rest = response[match.end() :]
    fields = b"" if rest.startswith(b"\r\n") else b"\r\n" + rest.partition(b"\r\n\r\n")[0]
    if _CONNECTION_FIELD.search(fields) is None:
        status_line += b"connection: close\r\n"
    return status_line + rest


def asks_websocket(
    method: bytes, http_version: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> bool:
    """Whether a request is a GET over HTTP/1.1 with ``Upgrade: websocket`` and
    ``Connection: upgrade`` (lowercase names, as h11 gives them)."""
    if method != b"GET" or http_version != b"1.1":
        return False
    upgrade = connection = False
    for name, value in headers:
        if name == b"upgrade":
            upgrade = upgrade or b"websocket" in value.lower()
        elif name == b"connection":
            connection = connection or b"upgrade" in value.lower()
    return upgrade and connection


# -- the ASGI websocket exchange ------------------------------------------------------


def websocket_scope(
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    subprotocols: Iterable[str],
    *,
    scheme: str,
    client: tuple[str, int] | None,
    server: tuple[str, int | None] | None,
    root_path: str,
    state: dict[str, Any] | None,
    extensions: dict[str, Any] | None,
) -> dict[str, Any]:
    """The ASGI ``websocket`` scope for a handshake request to ``target`` with these
    (lowercase-named) headers, proposing these subprotocols. ``state`` is the lifespan
    state; each websocket gets a shallow copy of it."""
    raw_path, query = split_target(target)
    path = decode_path(raw_path)
    if root_path:
        path, raw_path = rooted(root_path, path, raw_path)
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": ASGI_VERSION,
        "http_version": "1.1",
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": headers,
        "client": client,
        "server": server,
        "subprotocols": list(subprotocols),
        "extensions": {"websocket.http.response": {}, **(extensions or {})},
    }
    if state is not None:
        scope["state"] = dict(state)
    return scope


class WebSocketPhase(enum.Enum):
    """Where an ASGI websocket stands, as far as the app's messages go."""

    HANDSHAKE = "before websocket.accept"
    DENYING = "sending a denial response"
    OPEN = "accepted"
    CLOSED = "closed"


class Action(enum.Enum):
    """What an app's message asks of the connection (see :meth:`ASGIWebSocket.on_send`)."""

    NOTHING = "nothing to send yet"
    SEND = "send a message: the payload is str or bytes"
    CLOSE = "close the websocket: (code, reason)"
    ACCEPT = "accept the handshake: (subprotocol or None, extra headers)"
    REJECT = "refuse the handshake: (status, headers, body); the connection then closes"
    GONE = "the websocket is closed: the app's send() raises ClientDisconnected"


# What the app may not set on a denial response: its framing is worked out from its body.
_FRAMING = frozenset((b"content-length", b"transfer-encoding"))
# The refusals the server makes on the app's behalf: (status, headers, body).
_CLOSE_BEFORE_ACCEPT = (403, [(b"connection", b"close")], b"")
APP_ERROR_REFUSAL = (
    500,
    [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")],
    b"Internal Server Error\n",
)
_NOTHING = (Action.NOTHING, None)


class ASGIWebSocket:
    """The rules of one ASGI websocket exchange, without I/O: checks the app's
    messages against the phase they come in and says what each asks of the connection.

    The edge subclasses it (its sessions are kept small for idle websockets, hence
    the slots and no object of its own) and does what the returned actions say.

    Args:
        subprotocols: The subprotocols the client proposed.
    """

    __slots__ = ("connect_sent", "denial", "peer_gone", "phase", "subprotocols")

    def __init__(self, subprotocols: Iterable[str] = ()) -> None:
        self.subprotocols = subprotocols
        self.phase = WebSocketPhase.HANDSHAKE
        # Whether the app was given websocket.connect yet (its first receive()).
        self.connect_sent = False
        # True once the app was told websocket.disconnect.
        self.peer_gone = False
        # (status, headers, body so far) of a denial response.
        self.denial: tuple[int, list[tuple[bytes, bytes]], bytearray] | None = None

    @property
    def receiving_ended(self) -> bool:
        """True once no message can come from the peer any more: the app's receive()
        answers websocket.disconnect."""
        phase = self.phase
        return phase is WebSocketPhase.DENYING or phase is WebSocketPhase.CLOSED

    def on_send(self, message: Any) -> tuple[Action, Any]:
        """What one message from the app asks of the connection, with its argument
        (see :class:`Action`); the phase moves on as if the action succeeded.

        Raises:
            ASGIProtocolError: the message is not valid in this phase, or malformed.
        """
        kind = message.get("type") if isinstance(message, Mapping) else None
        phase = self.phase
        if phase is WebSocketPhase.OPEN:
            if kind == "websocket.send":
                return Action.SEND, _payload(message)
            if kind == "websocket.close":
                close = _close_args(message)
                self.phase = WebSocketPhase.CLOSED
                return Action.CLOSE, close
        elif phase is WebSocketPhase.HANDSHAKE:
            if kind == "websocket.accept":
                accept = self._accept_args(message)
                self.phase = WebSocketPhase.OPEN
                return Action.ACCEPT, accept
            if kind == "websocket.close":
                # ASGI: closing before the handshake is answered is a 403.
                self.phase = WebSocketPhase.CLOSED
                return Action.REJECT, _CLOSE_BEFORE_ACCEPT
            if kind == "websocket.http.response.start":
                status = message.get("status")
                if not isinstance(status, int) or not 200 <= status <= 999:
                    raise ASGIProtocolError(
                        f"'status' must be an int from 200 to 999, got {status!r}"
                    )
                headers = [
                    (name, value)
                    for name, value in _headers(message.get("headers", ()))
                    if name.lower() not in _FRAMING
                ]
                self.denial = (status, headers, bytearray())
                self.phase = WebSocketPhase.DENYING
                return _NOTHING
        elif phase is WebSocketPhase.DENYING:
            if kind == "websocket.http.response.body":
                body = message.get("body", b"")
                if not isinstance(body, bytes | bytearray | memoryview):
                    raise ASGIProtocolError(f"'body' must be bytes, got {type(body).__name__}")
                assert self.denial is not None
                status, headers, sofar = self.denial
                sofar += body
                if message.get("more_body", False):
                    return _NOTHING
                self.phase = WebSocketPhase.CLOSED
                return Action.REJECT, (status, headers, bytes(sofar))
        elif kind == "websocket.close":
            return _NOTHING
        elif kind == "websocket.send":
            return Action.GONE, None
        raise ASGIProtocolError(f"{kind!r} is not valid {phase.value}")

    def denial_refused(self, why: object) -> ASGIProtocolError:
        """The error for a denial response the handshake library would not send
        (``why``); the app may send another body message."""
        self.phase = WebSocketPhase.DENYING
        return ASGIProtocolError(f"invalid denial response: {why}")

    def on_app_returned(self) -> tuple[Action, Any, str | None]:
        """What the app's return asks of the connection, with its argument, and the
        error to log when it returned too early (then the app failed, see
        :meth:`on_app_failed`)."""
        phase = self.phase
        if phase is WebSocketPhase.HANDSHAKE and not self.peer_gone:
            return (*self.on_app_failed(), "without accepting or closing websocket")
        if phase is WebSocketPhase.DENYING:
            return (*self.on_app_failed(), "before finishing its denial response to")
        if phase is WebSocketPhase.OPEN:
            self.phase = WebSocketPhase.CLOSED
            return Action.CLOSE, (1000, ""), None
        return Action.NOTHING, None, None

    def on_app_failed(self) -> tuple[Action, Any]:
        """What the app's failure asks of the connection: a 500 before the handshake
        is answered, 1011 after."""
        phase = self.phase
        self.phase = WebSocketPhase.CLOSED
        if phase is WebSocketPhase.OPEN:
            return Action.CLOSE, (1011, "")
        if phase is not WebSocketPhase.CLOSED and not self.peer_gone:
            return Action.REJECT, APP_ERROR_REFUSAL
        return _NOTHING

    def _accept_args(self, message: Any) -> tuple[str | None, list[tuple[bytes, bytes]]]:
        subprotocol = message.get("subprotocol")
        if subprotocol is not None:
            if not isinstance(subprotocol, str):
                raise ASGIProtocolError(f"'subprotocol' must be a str, got {subprotocol!r}")
            if subprotocol not in self.subprotocols:
                raise ASGIProtocolError(
                    f"subprotocol {subprotocol!r} was not offered by the client"
                )
        headers = _headers(message.get("headers", ()))
        for name, value in headers:
            if not TOKEN.fullmatch(name) or FORBIDDEN_IN_VALUE.search(value):
                raise ASGIProtocolError(f"invalid header {name!r}: {value!r}")
        return subprotocol, headers


def _headers(raw: Any) -> list[tuple[bytes, bytes]]:
    headers = []
    try:
        for name, value in raw:
            if not isinstance(name, bytes) or not isinstance(value, bytes):
                raise TypeError
            headers.append((name, value))
    except (TypeError, ValueError):
        raise ASGIProtocolError(
            "'headers' must be an iterable of [name, value] pairs of bytes"
        ) from None
    return headers


def _payload(message: Mapping[str, Any]) -> str | bytes:
    text = message.get("text")
    data = message.get("bytes")
    if text is not None and data is None and isinstance(text, str):
        return text
    if data is not None and text is None and isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise ASGIProtocolError("websocket.send needs exactly one of 'bytes' (bytes) or 'text' (str)")


def _close_args(message: Mapping[str, Any]) -> tuple[int, str]:
    code = message.get("code", 1000)
    reason = message.get("reason") or ""
    if not isinstance(code, int) or isinstance(code, bool) or not 1000 <= code <= 4999:
        raise ASGIProtocolError(f"'code' must be an int from 1000 to 4999, got {code!r}")
    if not isinstance(reason, str):
        raise ASGIProtocolError(f"'reason' must be a str, got {reason!r}")
    return code, reason
