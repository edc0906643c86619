"""permessage-deflate (RFC 7692) on the server side, without I/O: which of a client's
offers to accept and with what parameters (:func:`agree`), and wsproto's extension
bounded so that a message inflates to at most the message size limit
(:class:`BoundedDeflate`).

wsproto compresses and inflates (``wsproto.extensions.PerMessageDeflate``); this
module changes three things about it:

- **Negotiation.** wsproto's ``accept`` lets every offer of a handshake change the
  extension and answers the last one; it takes parameters it does not know, repeated
  ones and values out of range. Here the first acceptable offer wins, as RFC 7692
  section 5 asks, and an offer with a bad parameter is declined (section 7.1).
- **Bounded inflation.** wsproto inflates each piece of a frame's payload whole: one
  64 KB read inflates to up to 64 MB (deflate's ratio is at most about 1:1032) before
  anyone counts it. Here each piece inflates with ``max_length`` set to what is left of
  the limit plus one byte, so a message over the limit costs at most the limit's worth
  of inflation; its rest is dropped uninflated and the connection closes with 1009.
- **Control frames inside a fragmented message** (a ping between two fragments) no
  longer end the message's compressed state in wsproto's extension.

Memory: a zlib compressor with a 2**15 window takes about 256 KiB, an inflater about
40 KiB. By default the server answers ``server_no_context_takeover`` and
``client_no_context_takeover`` so that wsproto drops both after each message, and an
idle websocket holds no zlib state (see docs/performance.md for the figures).

Standard library and wsproto (itself sans-IO) only: trio is never imported here.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

NAME = "permessage-deflate"
# What every compressed message ends with on the wire, removed by the sender (RFC 7692
# section 7.2.1) and given back to the inflater before the message ends.
_TRAILER = b"\x00\x00\xff\xff"
# A window size as section 7.1.2 spells it: 8 to 15, no leading zero.
_BITS = re.compile(r"8|9|1[0-5]")
# zlib's raw deflate writes with a window of at least 2**9 (it turns 8 into 9).
_MIN_COMPRESS_BITS = 9
_MAX_BITS = 15


@dataclass(frozen=True, slots=True)
class DeflateSettings:
    """The server's permessage-deflate policy (from the ``ws_deflate_*`` settings).

    Attributes:
        context_takeover: Keep each direction's compression context from one message
            to the next (better ratio for many small similar messages, about 300 KiB
            per websocket kept for its whole life). False asks both sides to reset.
        window_bits: The largest LZ77 window, as a power of two (9 to 15), the server
            compresses with and asks of clients that let it choose theirs.
    """

    context_takeover: bool = False
    window_bits: int = _MAX_BITS

    def __post_init__(self) -> None:
        if not _MIN_COMPRESS_BITS <= self.window_bits <= _MAX_BITS:
            raise ValueError(f"window_bits must be 9 to 15, got {self.window_bits!r}")


@dataclass(frozen=True, slots=True)
class Agreement:
    """What the server accepted of one offer.

    Attributes:
        response: The extension's parameters for the 101's Sec-WebSocket-Extensions
            ("" for none).
        server_no_context_takeover: The server resets its compressor after each message.
        client_no_context_takeover: The client resets its, so the server can drop its
            inflater after each message.
        compress_bits: The window the server compresses with.
        inflate_bits: The window the server inflates with (at least the client's).
    """

    response: str
    server_no_context_takeover: bool
    client_no_context_takeover: bool
    compress_bits: int
    inflate_bits: int


def offers(values: list[str]) -> list[str]:
    """The permessage-deflate offers among a request's extension offers (as wsproto
    splits the Sec-WebSocket-Extensions fields: one offer, with its parameters, each)."""
    return [value for value in values if value.partition(";")[0].strip().lower() == NAME]


def _parameters(offer: str) -> dict[str, str | None] | None:
    """The parameters of one offer by name (value unquoted, None when it has none), or
    None when one is repeated or malformed."""
    found: dict[str, str | None] = {}
    for item in offer.split(";")[1:]:
        name, equals, value = item.partition("=")
        name = name.strip().lower()
        if not name or name in found:
            return None
        if equals:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            found[name] = value
        else:
            found[name] = None
    return found


def agree(offer: str, settings: DeflateSettings) -> Agreement | None:
    """The server's answer to one permessage-deflate offer, or None to decline it.

    Declined (RFC 7692 section 7.1): an unknown or repeated parameter, a value where
    none is allowed or none where one is required, a window size other than 8 to 15,
    and ``server_max_window_bits=8`` (zlib cannot compress with a window that small).
    """
    parameters = _parameters(offer)
    if parameters is None:
        return None
    server_reset = not settings.context_takeover
    client_reset = not settings.context_takeover
    compress_bits = settings.window_bits
    inflate_bits = _MAX_BITS
    response = []
    for name, value in parameters.items():
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
            # The server's must be honoured; the client's announces it resets anyway.
            if name == "server_no_context_takeover":
                server_reset = True
            else:
                client_reset = True
        elif name == "server_max_window_bits":
            if value is None or not _BITS.fullmatch(value):
                return None
            if int(value) < _MIN_COMPRESS_BITS:
                return None
            compress_bits = min(compress_bits, int(value))
            # Offered, so the response must say the window we keep to (section 7.1.2.1).
            response.append(f"server_max_window_bits={compress_bits}")
        elif name == "client_max_window_bits":
            if value is not None and not _BITS.fullmatch(value):
                return None
            limit = _MAX_BITS if value is None else int(value)
            client_bits = min(limit, settings.window_bits)
            # The client lets us choose its window (section 7.1.2.2); our inflater
            # needs one at least that big, and zlib's is never below 9.
            response.append(f"client_max_window_bits={client_bits}")
            inflate_bits = max(client_bits, _MIN_COMPRESS_BITS)
        else:
            return None
    if client_reset:
        response.insert(0, "client_no_context_takeover")
    if server_reset:
        response.insert(0, "server_no_context_takeover")
    return Agreement(
        response="; ".join(response),
        server_no_context_takeover=server_reset,
        client_no_context_takeover=client_reset,
        compress_bits=compress_bits,
        inflate_bits=inflate_bits,
    )


class BoundedDeflate(PerMessageDeflate):
    """wsproto's permessage-deflate for one server-side websocket, negotiated by
    :func:`agree` and inflating at most ``max_message_size`` bytes of any message.

    When a message would inflate to more, :attr:`too_big` becomes true, the rest of
    the message is dropped without being inflated, and its last frame fails to parse
    with 1009 (MESSAGE_TOO_BIG), unless the connection closed already on seeing
    :attr:`too_big`.

    Args:
        settings: The server's policy.
        max_message_size: The most bytes one message may inflate to.
    """

    def __init__(self, settings: DeflateSettings, max_message_size: int) -> None:
        super().__init__()
        self._settings = settings
        self._max_message_size = max_message_size
        # Bytes the current message has inflated to so far.
        self._inflated = 0
        self.too_big = False

    @property
    def inflating(self) -> bool:
        """True while the message being received is compressed: its frames' lengths
        say nothing of its size."""
        return bool(self._inbound_compressed)

    def accept(self, offer: str) -> str | None:
        """The parameters to answer ``offer`` with, or None to decline it; only the
        first acceptable offer of a handshake is answered."""
        if self._enabled:
            return None
        agreement = agree(offer, self._settings)
        if agreement is None:
            return None
        self.server_no_context_takeover = agreement.server_no_context_takeover
        self.client_no_context_takeover = agreement.client_no_context_takeover
        self.server_max_window_bits = agreement.compress_bits
        self.client_max_window_bits = agreement.inflate_bits
        self._enabled = True
        return agreement.response

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if opcode.iscontrol():
            # A control frame may come between two fragments of a compressed message:
            # the message's state must outlive it.
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR
            self._inbound_is_compressible = False
            return RsvBits(True, False, False)
        if self._inbound_compressed is None:
            self._inflated = 0
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        if self.too_big:
            return b""
        return self._inflate(data)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if not self._inbound_is_compressible:
            return None
        if self.too_big:
            return CloseReason.MESSAGE_TOO_BIG if fin else None
        if not fin:
            return None
        if not self._inbound_compressed:
            self._inbound_compressed = None
            return None
        data = self._inflate(_TRAILER)
        if self.too_big:
            return CloseReason.MESSAGE_TOO_BIG
        if isinstance(data, CloseReason):
            return data
        if self.server_no_context_takeover if proto.client else self.client_no_context_takeover:
            self._decompressor = None
        self._inbound_compressed = None
        self._inflated = 0
        return data

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        """``data`` inflated, unless the message would then be over the limit: then
        nothing more of it is inflated."""
        decompressor = self._decompressor
        assert decompressor is not None
        room = self._max_message_size - self._inflated
        try:
            # One byte more than fits tells a message over the limit from one exactly
            # at it; zlib stops there, leaving the rest of the input untouched.
            inflated = decompressor.decompress(data, room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if len(inflated) > room:
            self.too_big = True
            # Its stream is abandoned mid-message: nothing can use it any more.
            self._decompressor = None
            return b""
        self._inflated += len(inflated)
        return inflated
