"""permessage-deflate without I/O: which offers the server accepts and how it answers
them, and wsproto's extension bounded by the message size limit."""

from __future__ import annotations

import base64
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from trioserve._proto import deflate
from trioserve._proto.deflate import BoundedDeflate, DeflateSettings, agree, offers

DEFAULT = DeflateSettings()
KEY = base64.b64encode(b"0123456789abcdef")
MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("offer", "settings", "response", "bits"),
    [
        (
            "permessage-deflate",
            DEFAULT,
            "server_no_context_takeover; client_no_context_takeover",
            (15, 15),
        ),
        ("permessage-deflate", DeflateSettings(context_takeover=True), "", (15, 15)),
        (
            "permessage-deflate; client_no_context_takeover",
            DeflateSettings(context_takeover=True),
            "client_no_context_takeover",
            (15, 15),
        ),
        (
            "permessage-deflate; server_no_context_takeover",
            DeflateSettings(context_takeover=True),
            "server_no_context_takeover",
            (15, 15),
        ),
        (
            "permessage-deflate; server_max_window_bits=10",
            DeflateSettings(context_takeover=True),
            "server_max_window_bits=10",
            (10, 15),
        ),
        (
            "permessage-deflate; server_max_window_bits=12",
            DeflateSettings(context_takeover=True, window_bits=10),
            "server_max_window_bits=10",
            (10, 15),
        ),
        (
            "permessage-deflate; client_max_window_bits",
            DeflateSettings(context_takeover=True, window_bits=11),
            "client_max_window_bits=11",
            (11, 11),
        ),
        (
            'permessage-deflate; client_max_window_bits="10"',
            DeflateSettings(context_takeover=True),
            "client_max_window_bits=10",
            (15, 10),
        ),
        (
            "permessage-deflate; client_max_window_bits=8",
            DeflateSettings(context_takeover=True),
            "client_max_window_bits=8",
            (15, 9),
        ),
        (
            "Permessage-Deflate; Client_Max_Window_Bits ; server_no_context_takeover",
            DEFAULT,
            "server_no_context_takeover; client_no_context_takeover; client_max_window_bits=15",
            (15, 15),
        ),
    ],
)
def test_agree_answers_an_acceptable_offer(
    offer: str, settings: DeflateSettings, response: str, bits: tuple[int, int]
) -> None:
    """An acceptable offer is answered with the parameters RFC 7692 section 7.1 asks:
    no_context_takeover both ways by default, windows no larger than offered or set."""
    agreement = agree(offer, settings)
    assert agreement is not None
    assert agreement.response == response
    assert (agreement.compress_bits, agreement.inflate_bits) == bits


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; x_unknown",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=ten",
        "permessage-deflate; ",
    ],
)
def test_agree_declines_a_bad_offer(offer: str) -> None:
    """Unknown, repeated or malformed parameters, and a server window of 8 (zlib cannot
    compress with one), decline the offer."""
    assert agree(offer, DEFAULT) is None


def test_settings_refuse_a_window_zlib_cannot_use() -> None:
    """window_bits must be 9 to 15."""
    with pytest.raises(ValueError, match="window_bits must be 9 to 15, got 8"):
        DeflateSettings(window_bits=8)


def test_offers_picks_permessage_deflate() -> None:
    """Only permessage-deflate offers count, whatever their case."""
    assert offers(["x-webkit-deflate-frame", "PerMessage-Deflate; a", "permessage-deflate"]) == [
        "PerMessage-Deflate; a",
        "permessage-deflate",
    ]


def _handshake(
    extensions_field: bytes,
    settings: DeflateSettings = DEFAULT,
    max_message_size: int = MiB,
) -> tuple[WSConnection, BoundedDeflate, bytes]:
    """A wsproto server that was offered ``extensions_field`` and accepted with
    BoundedDeflate; and the 101 it wrote."""
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
        b"Sec-WebSocket-Extensions: " + extensions_field + b"\r\n\r\n"
    )
    request = next(server.events())
    assert isinstance(request, Request)
    extension = BoundedDeflate(settings, max_message_size)
    response = server.send(AcceptConnection(extensions=[extension]))
    return server, extension, response


def _extensions_field(response: bytes) -> bytes | None:
    for line in response.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"sec-websocket-extensions":
            return value.strip()
    return None


def test_first_acceptable_offer_is_answered() -> None:
    """Of several offers the first acceptable one is answered, and the extension takes
    its parameters only (wsproto's own would answer and mix in the last)."""
    _, extension, response = _handshake(
        b"permessage-deflate; x_bad, permessage-deflate; server_max_window_bits=10, "
        b"permessage-deflate; server_max_window_bits=12; client_max_window_bits=9"
    )
    assert _extensions_field(response) == (
        b"permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        b"server_max_window_bits=10"
    )
    assert extension.server_max_window_bits == 10
    assert extension.client_max_window_bits == 15


def test_no_extension_when_every_offer_is_declined() -> None:
    """When no offer is acceptable the 101 has no Sec-WebSocket-Extensions."""
    _, extension, response = _handshake(b"permessage-deflate; server_max_window_bits=8")
    assert _extensions_field(response) is None
    assert not extension.enabled()


def _client_for(response: bytes) -> Connection:
    """wsproto's client side of what the server agreed in ``response``."""
    field = _extensions_field(response)
    assert field is not None
    client = PerMessageDeflate()
    client.finalize(field.decode())
    return Connection(ConnectionType.CLIENT, [client])


def _events(connection: WSConnection | Connection, data: bytes) -> list[Event]:
    connection.receive_data(data)
    return list(connection.events())


def _message(events: list[Event]) -> bytes | str:
    parts = [event.data for event in events if isinstance(event, Message)]
    assert isinstance(events[-1], Message)
    assert events[-1].message_finished
    return b"".join(parts) if isinstance(parts[0], bytes) else "".join(parts)


def test_round_trip_holds_no_zlib_state_between_messages() -> None:
    """Messages are compressed both ways; by default neither the compressor nor the
    inflater outlives its message, so an idle websocket keeps no zlib state."""
    server, extension, response = _handshake(b"permessage-deflate")
    client = _client_for(response)
    payload = b'{"key": "value", "list": [1, 2, 3]}' * 1000
    wire = client.send(BytesMessage(data=payload))
    assert len(wire) < len(payload) // 10
    assert _message(_events(server, wire)) == payload
    answer = server.send(TextMessage(data=payload.decode()))
    assert len(answer) < len(payload) // 10
    assert _message(_events(client, answer)) == payload.decode()
    assert extension._compressor is None
    assert extension._decompressor is None


def test_context_takeover_keeps_zlib_state_when_set() -> None:
    """With context takeover on, a repeated message compresses to a few bytes."""
    server, extension, response = _handshake(
        b"permessage-deflate", DeflateSettings(context_takeover=True)
    )
    client = _client_for(response)
    payload = os.urandom(2000)
    for size in (2000, 20):
        wire = client.send(BytesMessage(data=payload))
        assert _message(_events(server, wire)) == payload
        answer = server.send(BytesMessage(data=payload))
        assert _message(_events(client, answer)) == payload
        assert len(answer) < size + 20
    assert extension._compressor is not None
    assert extension._decompressor is not None


def test_ping_between_compressed_fragments() -> None:
    """A ping between two fragments of a compressed message leaves the message whole."""
    server, _, response = _handshake(b"permessage-deflate")
    client = _client_for(response)
    payload = b"fragmented " * 100
    first = client.send(BytesMessage(data=payload[:500], message_finished=False))
    ping = client.send(Ping(payload=b"?"))
    last = client.send(BytesMessage(data=payload[500:], message_finished=True))
    events = _events(server, first + ping + last)
    assert [type(event) for event in events] == [BytesMessage, Ping, BytesMessage]
    assert b"".join(e.data for e in events if isinstance(e, BytesMessage)) == payload


def masked_frame(opcode: int, payload: bytes, *, rsv1: bool, fin: bool = True) -> bytes:
    """A client frame with a zero mask (so the payload goes as is)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    if len(payload) < 126:
        head = struct.pack("!BB", first, 0x80 | len(payload))
    elif len(payload) < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, len(payload))
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, len(payload))
    return head + b"\0\0\0\0" + payload


def bomb(inflated_mib: int) -> bytes:
    """A raw deflate stream (as permessage-deflate sends it: no final block, no sync
    marker) of ``inflated_mib`` MiB of zeros, built from one flushed MiB repeated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = compressor.compress(b"\0" * MiB) + compressor.flush(zlib.Z_FULL_FLUSH)
    return one * inflated_mib


def test_inflate_bomb_is_refused_after_the_limits_worth_of_work() -> None:
    """A ~1 MB frame inflating to 1 GiB, limit 1 MiB: at most the limit (plus a byte)
    is ever inflated, memory stays a few MiB, and its last piece fails with 1009."""
    server, extension, _ = _handshake(b"permessage-deflate", max_message_size=MiB)
    payload = bomb(1024)
    assert len(payload) < 1100 * 1024
    frame = masked_frame(0x2, payload, rsv1=True)
    inflated = 0
    events: list[Event] = []
    tracemalloc.start()
    try:
        for start in range(0, len(frame), 65536):
            for event in _events(server, frame[start : start + 65536]):
                events.append(event)
                if isinstance(event, Message):
                    inflated += len(event.data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert extension.too_big
    assert inflated <= MiB
    assert peak < 8 * MiB
    close = events[-1]
    assert isinstance(close, CloseConnection)
    assert close.code == 1009


def test_message_of_exactly_the_limit_passes_and_one_byte_more_does_not() -> None:
    """The limit counts inflated bytes exactly: limit bytes pass, limit + 1 do not."""
    limit = 100_000
    server, extension, response = _handshake(b"permessage-deflate", max_message_size=limit)
    client = _client_for(response)
    assert _message(_events(server, client.send(BytesMessage(data=b"a" * limit)))) == (b"a" * limit)
    assert not extension.too_big
    events = _events(server, client.send(BytesMessage(data=b"a" * (limit + 1))))
    assert extension.too_big
    assert isinstance(events[-1], CloseConnection)
    assert events[-1].code == 1009
    assert sum(len(e.data) for e in events if isinstance(e, Message)) <= limit


def test_limit_counts_the_whole_fragmented_message() -> None:
    """Fragments of one compressed message count together against the limit."""
    limit = 10_000
    server, extension, response = _handshake(b"permessage-deflate", max_message_size=limit)
    client = _client_for(response)
    wire = b"".join(
        client.send(BytesMessage(data=b"b" * 4000, message_finished=last))
        for last in (False, False, True)
    )
    events = _events(server, wire)
    assert extension.too_big
    assert isinstance(events[-1], CloseConnection)
    assert events[-1].code == 1009


def test_corrupt_compressed_data_is_1007() -> None:
    """Compressed data zlib cannot inflate fails with 1007."""
    server, _, _ = _handshake(b"permessage-deflate")
    events = _events(server, masked_frame(0x2, b"\xff\xff\xff\xff", rsv1=True))
    assert isinstance(events[-1], CloseConnection)
    assert events[-1].code == 1007


def test_proto_deflate_does_not_import_trio() -> None:
    """The sans-IO module loads without trio (wsproto is sans-IO too)."""
    code = f"""
import importlib, os, sys, types
package = types.ModuleType("trioserve")
package.__path__ = [os.path.dirname(os.path.dirname({deflate.__file__!r}))]
sys.modules["trioserve"] = package
importlib.import_module("trioserve._proto.deflate")
loaded = sorted(
    name for name in sys.modules
    if name.split(".")[0] == "trio"
    or (name.startswith("trioserve.") and not name.startswith("trioserve._proto"))
)
assert not loaded, loaded
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
