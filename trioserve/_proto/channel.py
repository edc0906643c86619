"""The master's channels to its workers and to the preloader, sans-IO.

Two kinds of bytes travel on them:

- The **boot message**, master to worker (or to the preloader) once: the
  :class:`WorkerBoot` header as JSON, then the pickled Config, each with its length
  in front (4 bytes, big-endian). :func:`boot_pieces` writes it, :class:`BootReader`
  reads it ``wanted`` bytes at a time (the preloader's SEQPACKET socket delivers it as
  one packet per piece, so a reader never asks for more than one piece holds).
- **Messages**, both ways afterwards: one JSON object per line, its kind under ``"t"``.
  :func:`encode` writes one, a :class:`Decoder` reads them back from any split of the
  bytes and refuses what is no message of its direction.

Worker to master: :class:`Ready`, :class:`Heartbeat`, :class:`Counts`, :class:`Retire`,
:class:`BootFailed`; master to worker: :class:`Stop`, :class:`ReloadCerts`. Master to preloader:
:class:`Fork` (the worker's channel rides along as SCM_RIGHTS); preloader to master:
:class:`Loaded`, :class:`Forked`, :class:`Reaped`, :class:`BootFailed`.

Standard library and attrs only: this module never imports trio.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

import attrs

_LENGTH = struct.Struct("!I")
# A message line longer than this is refused rather than buffered without end.
MAX_LINE = 1 << 20


class ChannelError(ValueError):
    """Bytes on a channel that are no message (of this direction)."""


_KINDS: dict[str, type[Message]] = {}
_M = TypeVar("_M", bound="type[Message]")


class Message:
    """Base of every message; ``TAG`` is its ``"t"`` on the wire."""

    TAG: ClassVar[str]


def _message(tag: str) -> Any:
    def register(cls: _M) -> _M:
        cls.TAG = tag
        _KINDS[tag] = cls
        return cls

    return register


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"expected a list of strings, got {value!r}")
    return tuple(value)


def _exact(kind: type) -> Any:
    """A validator refusing ``bool`` where an ``int`` is expected (JSON's true is no pid)."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if type(value) is not kind:
            raise TypeError(f"{attribute.name}: expected {kind.__name__}, got {value!r}")

    return check


def _exact_or_none(kind: type) -> Any:
    """:func:`_exact`, or None."""
    exact = _exact(kind)

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            exact(instance, attribute, value)

    return check


# -- worker → master ---------------------------------------------------------------------


@_message("ready")
@attrs.frozen
class Ready(Message):
    """The worker accepts connections, at ``urls``."""

    urls: tuple[str, ...] = attrs.field(converter=_strings)


@_message("hb")
@attrs.frozen
class Heartbeat(Message):
    """The worker's loop is alive and has served ``requests`` requests."""

    requests: int = attrs.field(validator=_exact(int))


def _rows(value: object, *kinds: type) -> Any:
    """``value`` as a tuple of rows of exactly ``kinds`` (JSON gives lists; tuples make
    two messages compare equal when their counts are)."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"expected a list of rows, got {value!r}")
    rows = []
    for row in value:
        if (
            not isinstance(row, (list, tuple))
            or len(row) != len(kinds)
            or not all(type(item) is kind for item, kind in zip(row, kinds, strict=True))
        ):
            names = ", ".join(kind.__name__ for kind in kinds)
            raise TypeError(f"expected rows of ({names}), got {row!r}")
        rows.append(tuple(row))
    return tuple(rows)


def _str_int_int(value: object) -> tuple[tuple[str, int, int], ...]:
    return _rows(value, str, int, int)  # type: ignore[no-any-return]


def _int_int(value: object) -> tuple[tuple[int, int], ...]:
    return _rows(value, int, int)  # type: ignore[no-any-return]


def _str_int(value: object) -> tuple[tuple[str, int], ...]:
    return _rows(value, str, int)  # type: ignore[no-any-return]


def _ints(value: object) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(type(v) is int for v in value):
        raise TypeError(f"expected a list of integers, got {value!r}")
    return tuple(value)


def _number(value: object) -> float:
    # JSON writes 0.0 as 0.0, but a sum that is a whole number may come back as an int.
    if type(value) not in (int, float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)  # type: ignore[arg-type]


@_message("metrics")
@attrs.frozen
class Counts(Message):
    """What the worker counted since it started (cumulative, never deltas: a lost or
    repeated message then costs nothing), for ``--metrics-bind``.

    Attributes:
        requests: (method, status class (2 for 2xx), requests) rows.
        durations: Requests per duration bucket, as the worker's and the master's
            ``DURATION_BUCKETS`` (in ``trioserve._metrics``) cut them; the last is +Inf.
        duration_sum: The sum of the request durations, in seconds.
        body_bytes: Response body bytes sent.
        rejected: (status, requests) rows: requests refused before or while the app read
            them (400, 408, 413, 414, 431, 503).
        connections: (kind, open now, accepted in all) rows; kind is http, websocket
            or tcp.
        in_flight: HTTP requests being served right now.
        logs: (level, records) rows: trioserve's log records at warning and above.
    """

    requests: tuple[tuple[str, int, int], ...] = attrs.field(converter=_str_int_int)
    durations: tuple[int, ...] = attrs.field(converter=_ints)
    duration_sum: float = attrs.field(converter=_number)
    body_bytes: int = attrs.field(validator=_exact(int))
    rejected: tuple[tuple[int, int], ...] = attrs.field(converter=_int_int)
    connections: tuple[tuple[str, int, int], ...] = attrs.field(converter=_str_int_int)
    in_flight: int = attrs.field(validator=_exact(int))
    logs: tuple[tuple[str, int], ...] = attrs.field(converter=_str_int)


@_message("retire")
@attrs.frozen
class Retire(Message):
    """The worker served ``max_requests``: the master starts its replacement."""


@_message("boot_error")
@attrs.frozen
class BootFailed(Message):
    """The worker (or the preloader) could not start; ``code`` is its exit status."""

    code: int = attrs.field(validator=_exact(int))
    message: str = attrs.field(validator=_exact(str))


# -- master → worker ---------------------------------------------------------------------


@_message("stop")
@attrs.frozen
class Stop(Message):
    """Stop gracefully (a message, not SIGTERM: see ``Master.ask_to_stop``); ``reason``
    is why (an ``ExitReason`` value such as ``"memory"``), for the worker's hooks."""

    reason: str | None = attrs.field(default=None, validator=_exact_or_none(str))


@_message("reload_certs")
@attrs.frozen
class ReloadCerts(Message):
    """Build a new TLS context from the certificate files for new connections; ``why``
    names what asked for it (for the worker's log)."""

    why: str = attrs.field(validator=_exact(str))


# -- master ↔ preloader ------------------------------------------------------------------


@_message("fork")
@attrs.frozen
class Fork(Message):
    """Fork worker ``slot``; its channel is the file descriptor sent with this message."""

    slot: int = attrs.field(validator=_exact(int))


@_message("loaded")
@attrs.frozen
class Loaded(Message):
    """The preloader imported the app (``target``, as the settings name it)."""

    target: str = attrs.field(validator=_exact(str))


@_message("forked")
@attrs.frozen
class Forked(Message):
    """The preloader forked the worker asked for last, as process ``pid``."""

    pid: int = attrs.field(validator=_exact(int))


@_message("reaped")
@attrs.frozen
class Reaped(Message):
    """The preloader reaped its child ``pid``: ``status`` as ``Popen.returncode`` says it."""

    pid: int = attrs.field(validator=_exact(int))
    status: int = attrs.field(validator=_exact(int))


TO_MASTER: tuple[type[Message], ...] = (Ready, Heartbeat, Counts, Retire, BootFailed)
TO_WORKER: tuple[type[Message], ...] = (Stop, ReloadCerts)
TO_PRELOADER: tuple[type[Message], ...] = (Fork,)
FROM_PRELOADER: tuple[type[Message], ...] = (Loaded, Forked, Reaped, BootFailed)


def encode(message: Message) -> bytes:
    """``message`` as one line of the channel."""
    fields = attrs.asdict(message)  # type: ignore[arg-type]
    return json.dumps({"t": message.TAG, **fields}, separators=(",", ":")).encode() + b"\n"


def _decode(line: bytes, accepts: tuple[type[Message], ...]) -> Message:
    try:
        raw = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both
        raise ChannelError(f"not a JSON line: {line[:80]!r}") from None
    if not isinstance(raw, dict):
        raise ChannelError(f"not a JSON object: {line[:80]!r}")
    tag = raw.pop("t", None)
    kind = _KINDS.get(tag) if isinstance(tag, str) else None
    if kind is None or kind not in accepts:
        expected = ", ".join(repr(k.TAG) for k in accepts)
        raise ChannelError(f"unexpected message {tag!r} (expected {expected})")
    try:
        return kind(**raw)
    except (TypeError, ValueError) as exc:
        raise ChannelError(f"bad {tag!r} message: {exc}") from None


class Decoder:
    """Reads the messages of one direction (``accepts``) from the bytes of a channel.

    A :class:`ChannelError` leaves the decoder unusable: the channel is then broken.
    """

    def __init__(self, accepts: Iterable[type[Message]]) -> None:
        self._accepts = tuple(accepts)
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray) -> list[Message]:
        """The messages ``data`` completes, in order.

        Raises:
            ChannelError: a line is no message this decoder accepts, or is longer than
                ``MAX_LINE``.
        """
        self._buffer += data
        messages = []
        start = 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            messages.append(_decode(bytes(self._buffer[start:end]), self._accepts))
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > MAX_LINE:
            raise ChannelError(f"a message longer than {MAX_LINE} bytes")
        return messages

    @property
    def pending(self) -> int:
        """Bytes of an incomplete line held back."""
        return len(self._buffer)


# -- the boot message --------------------------------------------------------------------


@attrs.frozen
class WorkerBoot:
    """What the master tells a new worker besides its Config (the boot header).

    Attributes:
        slot: The worker's stable index.
        app: The application's prefix in a MultiApp, or None.
        master_pid: The master's process id.
        config_file: A Python config file to run before unpickling the Config (its
            hooks are pickled by reference), or None.
        fds: Inherited listening sockets.
        reuse_port: (family, sockaddr) pairs to listen on with SO_REUSEPORT.
        heartbeat: Seconds between heartbeats.
        account: (uid, gid, user name) to drop to (--user/--group), or None.
        main_path: The parent's main script, imported as ``__mp_main__`` before the
            Config is unpickled, when an app or hook pickled in the Config lives there
            (``python script.py`` that calls serve()); None when nothing does.
        embedded_log: serve() from a program: (level, shown) of the "trioserve" logger
            there, which the worker copies, so the program's logging decides as it does
            with workers=0. None from the command line: the worker configures logging
            from the settings.
    """

    slot: int
    app: str | None
    master_pid: int
    config_file: str | None
    fds: tuple[int, ...]
    reuse_port: tuple[tuple[int, tuple[Any, ...]], ...]
    heartbeat: float
    account: tuple[int, int, str | None] | None = None
    main_path: str | None = None
    embedded_log: tuple[int, bool] | None = None

    def to_json(self) -> bytes:
        return json.dumps(attrs.asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> WorkerBoot:
        """The header read back.

        Raises:
            ChannelError: ``data`` is no boot header.
        """
        try:
            raw = json.loads(data)
            raw["fds"] = tuple(raw["fds"])
            raw["reuse_port"] = tuple((family, tuple(addr)) for family, addr in raw["reuse_port"])
            for name in ("account", "embedded_log"):
                if raw.get(name) is not None:
                    raw[name] = tuple(raw[name])
            return cls(**raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise ChannelError(f"not a boot header: {exc!r}") from None


def boot_pieces(header: bytes, pickled: bytes) -> list[bytes]:
    """The boot message: length, header, length, pickled Config.

    A stream sends them joined; the preloader's SEQPACKET socket one packet each.
    """
    return [_LENGTH.pack(len(header)), header, _LENGTH.pack(len(pickled)), pickled]


class BootReader:
    """Reads the boot message: feed it ``wanted`` bytes (or fewer) until ``done``."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._current = bytearray()
        self._size: int | None = None

    @property
    def done(self) -> bool:
        return len(self._pieces) == 2

    @property
    def wanted(self) -> int:
        """How many bytes the reader can take next (0 once done)."""
        if self.done:
            return 0
        size = _LENGTH.size if self._size is None else self._size
        return size - len(self._current)

    def feed(self, data: bytes) -> None:
        """Take ``data`` (at most ``wanted`` bytes).

        Raises:
            ChannelError: more bytes than the boot message holds.
        """
        if len(data) > self.wanted:
            raise ChannelError(f"{len(data)} bytes where the boot message wants {self.wanted}")
        self._current += data
        if self.wanted:
            return
        if self._size is None:
            (self._size,) = _LENGTH.unpack(self._current)
        else:
            self._pieces.append(bytes(self._current))
            self._size = None
        self._current.clear()
        if self._size == 0:  # an empty piece: complete without reading anything
            self._pieces.append(b"")
            self._size = None

    @property
    def header(self) -> WorkerBoot:
        """The header once done (raises :class:`ChannelError` if it is none)."""
        assert self.done
        return WorkerBoot.from_json(self._pieces[0])

    @property
    def pickled(self) -> bytes:
        """The pickled Config, once done."""
        assert self.done
        return self._pieces[1]
