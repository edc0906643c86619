"""Tests for trioserve._proto.channel: the master's messages and boot message, sans-IO."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from trioserve._proto import channel
from trioserve._proto.channel import (
    FROM_PRELOADER,
    MAX_LINE,
    TO_MASTER,
    TO_PRELOADER,
    TO_WORKER,
    BootFailed,
    BootReader,
    ChannelError,
    Counts,
    Decoder,
    Fork,
    Forked,
    Heartbeat,
    Loaded,
    Message,
    Ready,
    Reaped,
    ReloadCerts,
    Retire,
    Stop,
    WorkerBoot,
    boot_pieces,
    encode,
)

EXAMPLES: list[tuple[Message, tuple[type[Message], ...]]] = [
    (Ready(("http://127.0.0.1:8000", "unix:/run/app.sock")), TO_MASTER),
    (Ready(()), TO_MASTER),
    (Heartbeat(0), TO_MASTER),
    (Heartbeat(123456), TO_MASTER),
    (Retire(), TO_MASTER),
    (
        Counts(
            requests=(("GET", 2, 10), ("OTHER", 4, 1)),
            durations=(3, 0, 8),
            duration_sum=0.25,
            body_bytes=1024,
            rejected=((413, 1),),
            connections=(("http", 2, 11), ("websocket", 0, 0)),
            in_flight=1,
            logs=(("warning", 2),),
        ),
        TO_MASTER,
    ),
    (BootFailed(3, "could not import 'app:app' ✗\nsecond line"), TO_MASTER),
    (Stop(), TO_WORKER),
    (ReloadCerts("SIGURG"), TO_WORKER),
    (Stop("memory"), TO_WORKER),
    (Fork(7), TO_PRELOADER),
    (Loaded("app:app"), FROM_PRELOADER),
    (Forked(4242), FROM_PRELOADER),
    (Reaped(4242, -9), FROM_PRELOADER),
    (BootFailed(1, "boom"), FROM_PRELOADER),
]

BOOT = WorkerBoot(
    slot=2,
    app="/api",
    master_pid=100,
    config_file="/etc/trioserve.py",
    fds=(3, 4),
    reuse_port=((2, ("127.0.0.1", 8000)),),
    heartbeat=0.5,
    account=(1000, 1000, "www"),
    main_path="/srv/script.py",
    embedded_log=(20, True),
)


@pytest.mark.parametrize(("message", "direction"), EXAMPLES, ids=lambda v: repr(v)[:40])
def test_every_message_round_trips(message: Message, direction: tuple[type[Message], ...]) -> None:
    """Each message type encodes to one line and decodes back equal."""
    data = encode(message)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert Decoder(direction).feed(data) == [message]


def test_every_message_type_is_in_a_direction() -> None:
    """No message type is left out of the directions, so every one can be received."""
    kinds = {type(message) for message, _ in EXAMPLES}
    directions = set(TO_MASTER) | set(TO_WORKER) | set(TO_PRELOADER) | set(FROM_PRELOADER)
    assert kinds == directions
    assert {kind for kind in vars(channel).values() if _is_message_type(kind)} == kinds


def _is_message_type(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, Message) and value is not Message


def test_framing_split_at_every_byte() -> None:
    """Messages fed in two parts, split at any byte, come out whole and in order."""
    messages = [m for m, direction in EXAMPLES if direction is TO_MASTER]
    data = b"".join(encode(m) for m in messages)
    for cut in range(len(data) + 1):
        decoder = Decoder(TO_MASTER)
        received = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert received == messages, cut
        assert decoder.pending == 0


def test_framing_one_byte_at_a_time() -> None:
    """Fed a byte at a time, a decoder holds the partial line back until its newline."""
    decoder = Decoder(TO_MASTER)
    data = encode(Heartbeat(5))
    for byte in data[:-1]:
        assert decoder.feed(bytes([byte])) == []
    assert decoder.pending == len(data) - 1
    assert decoder.feed(b"\n") == [Heartbeat(5)]


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (b"not json", "not a JSON line"),
        (b"\xff\xfe", "not a JSON line"),
        (b"[1, 2]", "not a JSON object"),
        (b"{}", "unexpected message None"),
        (b'{"t": "launch"}', "unexpected message 'launch'"),
        (b'{"t": 3}', "unexpected message 3"),
        (b'{"t": "stop"}', "unexpected message 'stop'"),  # the other direction
        (b'{"t": "hb"}', "bad 'hb' message"),
        (b'{"t": "hb", "requests": "12"}', "bad 'hb' message: requests: expected int"),
        (b'{"t": "hb", "requests": true}', "bad 'hb' message"),
        (b'{"t": "hb", "requests": 1, "extra": 2}', "bad 'hb' message"),
        (b'{"t": "ready", "urls": "http://x"}', "bad 'ready' message"),
        (b'{"t": "ready", "urls": [1]}', "bad 'ready' message"),
        (b'{"t": "boot_error", "code": 3}', "bad 'boot_error' message"),
    ],
)
def test_bad_frames_are_refused(line: bytes, match: str) -> None:
    """A line that is no message of the decoder's direction raises ChannelError."""
    with pytest.raises(ChannelError, match=match):
        Decoder(TO_MASTER).feed(line + b"\n")


@pytest.mark.parametrize("line", [b'{"t": "stop", "reason": 3}', b'{"t": "stop", "reason": true}'])
def test_a_stop_reason_must_be_a_string(line: bytes) -> None:
    """A Stop's reason is a string or null; anything else is a bad message."""
    with pytest.raises(ChannelError, match="bad 'stop' message: reason: expected str"):
        Decoder(TO_WORKER).feed(line + b"\n")


def test_each_direction_refuses_the_others_messages() -> None:
    """A worker does not take a worker's messages, nor the master a preloader's."""
    for message, _ in EXAMPLES:
        for other in (TO_MASTER, TO_WORKER, TO_PRELOADER, FROM_PRELOADER):
            if type(message) in other:
                continue
            with pytest.raises(ChannelError, match="unexpected message"):
                Decoder(other).feed(encode(message))


def test_an_endless_line_is_refused() -> None:
    """Bytes without a newline past MAX_LINE are refused rather than buffered forever."""
    decoder = Decoder(TO_MASTER)
    decoder.feed(b'{"t": "hb", "requests": ' + b"1" * (MAX_LINE - 100))
    with pytest.raises(ChannelError, match="longer than"):
        decoder.feed(b"1" * 200)


def test_the_wire_format_is_a_tagged_json_line() -> None:
    """A message is a JSON object with its kind under "t" and its fields beside it."""
    assert json.loads(encode(Reaped(12, 0))) == {"t": "reaped", "pid": 12, "status": 0}
    assert json.loads(encode(Stop())) == {"t": "stop", "reason": None}
    assert json.loads(encode(Stop("memory"))) == {"t": "stop", "reason": "memory"}


def test_boot_message_round_trips_split_at_every_byte() -> None:
    """The boot header and pickled Config come back whole from any split of the bytes."""
    pickled = bytes(range(256)) * 3
    data = b"".join(boot_pieces(BOOT.to_json(), pickled))
    for cut in range(len(data) + 1):
        reader = BootReader()
        for part in (data[:cut], data[cut:]):
            while part and not reader.done:
                take = part[: reader.wanted]
                reader.feed(take)
                part = part[len(take) :]
            assert not part
        assert reader.done, cut
        assert reader.header == BOOT
        assert reader.pickled == pickled


def test_boot_reader_asks_for_one_piece_at_a_time() -> None:
    """``wanted`` never spans two pieces: the preloader's packets are read one each."""
    pieces = boot_pieces(BOOT.to_json(), b"config")
    reader = BootReader()
    for piece in pieces:
        assert reader.wanted == len(piece)
        reader.feed(piece)
    assert reader.done and reader.wanted == 0


def test_boot_reader_takes_an_empty_piece() -> None:
    """A piece of length zero completes at once (no read of zero bytes is asked for)."""
    reader = BootReader()
    for piece in boot_pieces(BOOT.to_json(), b""):
        if piece:
            reader.feed(piece)
    assert reader.done and reader.pickled == b""


def test_boot_reader_refuses_more_than_it_wants() -> None:
    """Feeding more bytes than ``wanted`` is refused."""
    with pytest.raises(ChannelError, match="wants 4"):
        BootReader().feed(b"12345")


@pytest.mark.parametrize(
    "header", [b"not json", b"[]", b"{}", b'{"slot": 1}', json.dumps({"x": 1}).encode()]
)
def test_a_bad_boot_header_is_refused(header: bytes) -> None:
    """A header that is no WorkerBoot raises ChannelError."""
    reader = BootReader()
    for piece in boot_pieces(header, b""):
        if piece:
            reader.feed(piece)
    with pytest.raises(ChannelError, match="not a boot header"):
        reader.header  # noqa: B018


def test_channel_does_not_import_trio() -> None:
    """The sans-IO module loads with the stdlib and attrs only: trio is never imported."""
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("isolated_channel", {channel.__file__!r})
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
assert module.Decoder(module.TO_WORKER).feed(module.encode(module.Stop())) == [module.Stop()]
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("trio", "trioserve"))
assert not loaded, loaded
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
