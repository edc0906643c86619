"""WSGI (PEP 3333) apps served through ASGI: each request runs the app in a worker thread.

``wsgi_to_asgi`` turns a WSGI app into an ASGI 3 app. Trio stays in charge of the
connection; the blocking WSGI app runs in a thread from ``trio.to_thread.run_sync``,
bounded by one ``trio.CapacityLimiter`` per adapter, and talks back to trio through
``trio.from_thread.run``: ``wsgi.input`` pulls ``http.request`` messages as the app
reads, and the response goes out chunk by chunk as the app produces it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol, TypeAlias

import trio

from ._errors import ClientDisconnected
from ._types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Environ", "ExcInfo", "StartResponse", "WSGIApp", "wsgi_to_asgi"]

LOGGER = logging.getLogger("trioserve.wsgi")

Environ: TypeAlias = dict[str, Any]
ExcInfo: TypeAlias = (
    tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
)
Write: TypeAlias = Callable[[bytes], None]


class StartResponse(Protocol):
    """The ``start_response`` callable a WSGI app is given."""

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = ..., /
    ) -> Write: ...


WSGIApp: TypeAlias = Callable[[Environ, StartResponse], Iterable[bytes]]

# Headers that PEP 3333 puts in the environ without the HTTP_ prefix.
_UNPREFIXED = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}


def wsgi_to_asgi(app: WSGIApp, *, threads: int, multiprocess: bool = False) -> ASGIApp:
    """Wrap a WSGI app into an ASGI 3 app that runs each request in a worker thread.

    At most ``threads`` requests run the app at once; more wait, in trio, for a
    free thread. The request body is read from the client only as the app reads
    ``wsgi.input``, and each chunk the app returns or ``write()``s is sent as it
    comes. An exception from the app propagates out of the ASGI app, so the server
    answers 500 (or closes the connection if the response had begun).

    ``lifespan`` connections complete startup and shutdown at once, so the app can
    be served with lifespan on; any other connection type but ``http`` is an error.

    Cancellation abandons the thread: the ASGI call returns at once, so a stop's
    deadline holds even for an app blocked in a thread (a cancellation only reaches a
    running app when a stop's deadline passes). The thread runs on by itself; its calls
    back into trio (reading ``wsgi.input``, sending the response) raise
    ``trio.Cancelled``, which ends the request unless the app catches it, and its place
    in the limiter is held until it returns. Threads are daemons: a worker process
    exits without waiting for them, as gunicorn's arbiter kills a worker whose
    requests outlive the graceful timeout.

    Args:
        app: A PEP 3333 application: ``app(environ, start_response)`` returning an
            iterable of bytes.
        threads: How many requests may run the app at the same time (at least 1).
        multiprocess: ``wsgi.multiprocess``: other processes serve the app too.

    Returns:
        An ASGI 3 callable.

    Raises:
        ValueError: ``threads`` is not an integer of at least 1.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected an integer of at least 1, got {threads!r}")
    limiter = trio.CapacityLimiter(threads)

    async def wsgi_adapter(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            request = _Request(app, scope, receive, send)
            request.environ["wsgi.multiprocess"] = multiprocess
            await trio.to_thread.run_sync(request.run, limiter=limiter, abandon_on_cancel=True)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        else:
            raise RuntimeError(f"WSGI apps serve HTTP only; got a {kind!r} connection")

    return wsgi_adapter


async def _lifespan(receive: Receive, send: Send) -> None:
    # A WSGI app has no startup or shutdown of its own to run.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# --- the environ --------------------------------------------------------------------


def _native(text: str) -> str:
    """PEP 3333's "bytes as latin-1 native string": the UTF-8 bytes, one char per byte."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


def _split_host(host: str, default_port: str) -> tuple[str, str]:
    """``"example.com:8080"`` → ``("example.com", "8080")``; brackets kept for IPv6."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return host, default_port
        name, rest = host[: end + 1], host[end + 1 :]
    else:
        name, colon, rest = host.rpartition(":")
        if not colon:
            return host, default_port
        rest = ":" + rest
    port = rest[1:]
    if rest.startswith(":") and port.isascii() and port.isdigit():
        return name, port
    return name, default_port


def sent_target(scope: Scope) -> tuple[str, str]:
    """The request target's path and query as the client sent them (percent-encoded,
    latin-1): ``scope["raw_path"]`` less the ``root_path`` the server put before it."""
    root_path: str = scope.get("root_path", "")
    path: str = scope["path"]
    raw_path = bytes(scope.get("raw_path") or path.encode("utf-8"))
    if root_path and path.startswith(root_path):
        raw_path = raw_path.removeprefix(root_path.encode("utf-8"))
    return raw_path.decode("latin-1"), bytes(scope.get("query_string", b"")).decode("latin-1")


def build_environ(
    scope: Scope, stdin: object, errors: object, *, multiprocess: bool = False
) -> Environ:
    """The PEP 3333 environ for an ASGI ``http`` scope.

    ``SCRIPT_NAME`` is ``root_path`` and ``PATH_INFO`` the rest of ``scope["path"]`` (which
    begins with ``root_path``, as ASGI says). ``RAW_URI`` is the request target as the
    client sent it, as in gunicorn (an app can tell ``%2F`` from ``/`` by it). ``multiprocess`` is
    ``wsgi.multiprocess``: True when other worker processes serve the same app.

    ``wsgi.input_terminated`` is True (as in gunicorn): ``wsgi.input`` ends where the
    body ends, also for a chunked body without Content-Length. Werkzeug (Flask) reads
    such a body only when this key says so; without it a chunked upload reached the app
    as 0 bytes.
    """
    scheme = scope.get("scheme", "http")
    root_path: str = scope.get("root_path", "")
    path: str = scope["path"]
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    raw_path, query = sent_target(scope)
    raw_uri = raw_path + ("?" + query if query else "")
    environ: Environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": _native(root_path),
        "PATH_INFO": _native(path),
        "QUERY_STRING": query,
        "RAW_URI": raw_uri,
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": stdin,
        "wsgi.input_terminated": True,
        "wsgi.errors": errors,
        "wsgi.multithread": True,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
    }

    values: dict[str, list[str]] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = bytes(raw_name).decode("latin-1").lower()
        if "_" in name:
            # "X_User" and "X-User" would both become HTTP_X_USER, letting a client
            # spoof a header a proxy in front vouches for; such names are dropped.
            LOGGER.debug("dropped request header %r: '_' in a header name", name)
            continue
        values.setdefault(name, []).append(bytes(raw_value).decode("latin-1"))
    for name, parts in values.items():
        key = _UNPREFIXED.get(name) or "HTTP_" + name.upper().replace("-", "_")
        environ[key] = ("; " if name == "cookie" else ", ").join(parts)

    default_port = "443" if scheme in ("https", "wss") else "80"
    server = scope.get("server")
    client = scope.get("client")
    if server is not None and server[1] is not None:
        environ["SERVER_NAME"], environ["SERVER_PORT"] = str(server[0]), str(server[1])
    elif "HTTP_HOST" in environ:
        environ["SERVER_NAME"], environ["SERVER_PORT"] = _split_host(
            environ["HTTP_HOST"], default_port
        )
    else:
        environ["SERVER_NAME"], environ["SERVER_PORT"] = "localhost", default_port
    if client is not None:
        environ["REMOTE_ADDR"] = str(client[0])
        if client[1] is not None:
            environ["REMOTE_PORT"] = str(client[1])
    return environ


def _send_from_thread(send: Send, message: Message) -> None:
    """``send(message)`` from the request's thread, unless the request was cancelled:
    a thread abandoned at a stop's deadline then gets trio.Cancelled instead (trio would
    otherwise still run the send, as a system task, for a request that has ended)."""
    trio.from_thread.check_cancelled()
    trio.from_thread.run(send, message)


# --- wsgi.input and wsgi.errors -----------------------------------------------------


class _Input:
    """``wsgi.input``: the request body, received from trio only as the app reads it.

    Created in trio; read from the app's worker thread, or from a thread the app
    started itself (Django runs an async view under WSGI in a thread of its own, and
    reads the body there). From trio's worker thread a read is part of the request's
    task, so cancelling the request interrupts it; from another thread it runs as a
    system task of the same trio loop, found by the token taken here.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._token = trio.lowlevel.current_trio_token()
        self._buffer = bytearray()
        self._eof = False

    def _receive_from_thread(self) -> Message:
        try:
            trio.from_thread.check_cancelled()
        except RuntimeError:
            # Not a thread trio started (it would know its task): one the app started.
            return trio.from_thread.run(self._receive, trio_token=self._token)
        return trio.from_thread.run(self._receive)

    def _fill(self) -> None:
        message = self._receive_from_thread()
        if message["type"] == "http.request":
            self._buffer += message.get("body", b"")
            if not message.get("more_body", False):
                self._eof = True
        else:
            # http.disconnect: the client left, so the body ends here. Never ask again
            # after the last chunk either: receive() would then wait for a disconnect.
            self._eof = True

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (fewer only at the end of the body); all of it if negative."""
        if size is None or size < 0:
            while not self._eof:
                self._fill()
            return self._take(len(self._buffer))
        while len(self._buffer) < size and not self._eof:
            self._fill()
        return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        """One line including its ``b"\\n"``, at most ``size`` bytes if not negative."""
        limit = -1 if size is None else size
        searched = 0
        while True:
            newline = self._buffer.find(b"\n", searched)
            if newline >= 0:
                end = newline + 1
                break
            if 0 <= limit <= len(self._buffer) or self._eof:
                end = len(self._buffer)
                break
            searched = len(self._buffer)
            self._fill()
        return self._take(end if limit < 0 else min(end, limit))

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """The remaining lines; stops once they add up to ``hint`` bytes if positive."""
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class _Errors:
    """``wsgi.errors``: each line written is logged at ERROR on ``trioserve.wsgi``."""

    def __init__(self) -> None:
        self._partial = ""

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"wsgi.errors.write() takes a str, got {type(text).__name__}")
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            LOGGER.error("%s", line)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._partial:
            LOGGER.error("%s", self._partial)
            self._partial = ""


# --- the response -------------------------------------------------------------------


def _parse_status(status: object) -> int:
    if not isinstance(status, str):
        raise TypeError(f"start_response(): status must be a str like '200 OK', got {status!r}")
    code = status[:3]
    if (
        not (code.isascii() and code.isdigit())
        or status[3:4] not in ("", " ")
        or "\r" in status
        or "\n" in status
    ):
        raise ValueError(
            f"start_response(): status must be three digits and a reason like '200 OK',"
            f" got {status!r}"
        )
    return int(code)


def _encode_headers(headers: object) -> tuple[list[tuple[bytes, bytes]], int | None]:
    """The headers as latin-1 bytes, and the Content-Length if the app set one."""
    if not isinstance(headers, list | tuple):
        raise TypeError(
            f"start_response(): headers must be a list of (name, value) tuples, got {headers!r}"
        )
    encoded: list[tuple[bytes, bytes]] = []
    content_length: int | None = None
    for item in headers:
        if not (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], str)
        ):
            raise TypeError(
                f"start_response(): each header must be a (name, value) tuple of str, got {item!r}"
            )
        name, value = item
        if any(char in text for text in item for char in "\r\n"):
            raise ValueError(
                f"start_response(): header {name!r}: {value!r} contains a CR or LF character"
            )
        try:
            encoded.append((name.encode("latin-1"), value.encode("latin-1")))
        except UnicodeEncodeError:
            raise ValueError(
                f"start_response(): header {name!r}: {value!r} is not latin-1 text;"
                " encode other characters (RFC 8187, percent-encoding) first"
            ) from None
        if name.lower() == "content-length" and value.strip().isascii() and value.strip().isdigit():
            content_length = int(value)
    return encoded, content_length


def _checked_body(data: object, where: str) -> bytes | bytearray:
    if not isinstance(data, bytes | bytearray):
        raise TypeError(f"WSGI app gave {where} a {type(data).__name__}; body must be bytes")
    return data


class _Request:
    """One request: the environ, ``start_response`` and the response sent from the thread."""

    def __init__(self, app: WSGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        self._app = app
        self._send = send
        self._errors = _Errors()
        self.environ = build_environ(scope, _Input(receive), self._errors)
        self._status: int | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._headers_sent = False
        # Body bytes the app's Content-Length still allows; None without one.
        self._remaining: int | None = None

    def run(self) -> None:
        """Call the app and send its response; runs in the worker thread.

        Once the client has gone, sending raises ClientDisconnected: the iteration
        stops there and the iterable's close() is called (PEP 3333), so a streaming
        response stops being produced. That ends the request quietly, as does an app
        whose own ``write()`` raised it and that let it propagate.
        """
        try:
            result = self._app(self.environ, self.start_response)
            try:
                for chunk in result:
                    if not self._body(chunk, "the response iterable"):
                        break
                self._end()
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except ClientDisconnected:
            LOGGER.debug(
                "client went away during %s %s; the response stopped",
                self.environ["REQUEST_METHOD"],
                self.environ["PATH_INFO"],
            )
        finally:
            self._errors.flush()

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None, /
    ) -> Write:
        if exc_info is not None and exc_info[1] is not None:
            error, traceback = exc_info[1], exc_info[2]
            # Drop the references: the traceback holds the app's frame, which holds exc_info.
            exc_info = None
            if self._headers_sent:
                # Too late to replace the response: fail the way the app was failing.
                raise error.with_traceback(traceback)
        elif self._status is not None:
            raise RuntimeError(
                "start_response() was called a second time without exc_info;"
                " only an error handler may replace the status and headers"
            )
        code = _parse_status(status)
        self._headers, self._remaining = _encode_headers(headers)
        self._status = code
        return self.write

    def write(self, data: bytes) -> None:
        """The ``write()`` callable ``start_response`` returns: sends ``data`` now."""
        if self._remaining is not None and len(_checked_body(data, "write()")) > self._remaining:
            raise RuntimeError(
                f"write() of {len(data)} bytes goes past the app's Content-Length"
                f" ({self._remaining} bytes left)"
            )
        self._body(data, "write()")

    def _body(self, data: object, where: str) -> bool:
        """Send one body chunk; False once Content-Length allows no more bytes."""
        chunk = _checked_body(data, where)
        if self._remaining is not None:
            if len(chunk) > self._remaining:
                LOGGER.error("WSGI app sent more body than its Content-Length; the rest is dropped")
            chunk = chunk[: self._remaining]
            self._remaining -= len(chunk)
        if chunk:
            self._start()
            message = {"type": "http.response.body", "body": bytes(chunk), "more_body": True}
            _send_from_thread(self._send, message)
        return self._remaining != 0

    def _start(self) -> None:
        if self._headers_sent:
            return
        if self._status is None:
            raise RuntimeError("WSGI app sent body bytes before calling start_response()")
        self._headers_sent = True
        message = {"type": "http.response.start", "status": self._status, "headers": self._headers}
        _send_from_thread(self._send, message)

    def _end(self) -> None:
        if self._status is None:
            raise RuntimeError("WSGI app returned without calling start_response()")
        self._start()
        message = {"type": "http.response.body", "body": b"", "more_body": False}
        _send_from_thread(self._send, message)
