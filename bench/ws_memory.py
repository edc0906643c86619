"""Memory an idle accepted websocket costs in trioserve and in its peers.

Run from the repository root with the benchmark virtualenv (see bench/README.md)::

    .bench-venv/bin/python bench/ws_memory.py [--connections 5000] [--rounds 1]
        [--servers hypercorn-trio,trio-websocket,uvicorn-wsproto,wsproto,
                   trioserve-asgi,trioserve-native] [--json FILE]

For each server: start it (one process, or hypercorn's master plus its one
worker), wait until a websocket echo round trip works (that first connection
also pays for lazy imports and first-use caches, so they are not counted), let
it settle, read the RSS of its whole process tree from /proc, open N websockets
from one client process (a trio task per connection driving wsproto: a cheap
client, which answers pings and otherwise stays idle), wait until all N
handshakes completed, let it settle again, read the RSS again and report
``(after - before) / N`` in KiB. The client offers no extensions, so no
compression is negotiated. The table gives the median over ``--rounds`` and the
figures from issue 4 beside it.

With ``--compression`` each client connection offers permessage-deflate (wsproto's
default offer: windows of 2**15 both ways, context takeover allowed), counts the
connections whose offer was accepted, and exchanges one compressible 2 KB text
message (and its echo) before it idles, so that the server has compressed and
inflated once: an idle compressed websocket is measured, not one that never
allocated its compression state.

Everything listens on and connects to 127.0.0.1; every wait is bounded, and every
process started here is stopped by its pid (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

if not __package__:
    # Run as a script (python bench/X.py): make the "bench" package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from bench.common import (
    HOST,
    REPO_ROOT,
    changed_sources,
    free_port,
    machine_facts,
    names_arg,
    positive_int,
    sources_fingerprint,
)

APP = "bench.ws_app:app"
HANDLER = "bench.ws_app:handler"

READY_TIMEOUT = 20.0  # seconds for a server to answer a websocket echo
SETTLE_SECONDS = 2.0  # after start, and after the N connections are open
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
CLIENT_EXIT_TIMEOUT = 30.0
FD_LIMIT = 20_000
FD_MARGIN = 256  # descriptors a process needs besides the connections
RECEIVE_BYTES = 4096

# Issue 4's figures, KiB of RSS per idle websocket (5,000 connections, one worker).
REFERENCE_KIB: dict[str, float] = {
    "hypercorn-trio": 22.1,
    "trio-websocket": 19.9,
    "uvicorn-wsproto": 17.6,
    "wsproto": 10.9,
}
# What trioserve must reach: issue 16's aim (issue 4 asked for 17.5, below every peer).
TARGET_KIB = 14.0


# --- what is measured ----------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """How to start one server on a port, and what it needs installed."""

    name: str
    argv: Callable[[int], list[str]]
    module: str  # must be importable for the server to run
    distributions: tuple[str, ...]  # reported with their versions
    description: str
    is_trioserve: bool = False


def _trioserve_argv(target: str, *extra: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return [
            *("-m", "trioserve", target, *extra),
            # One process serving the connections: --workers 0 serves in the master,
            # the only mode this release has (hypercorn's row counts master + worker).
            *("--bind", f"{HOST}:{port}", "--workers", "0"),
        ]

    return argv


SERVERS: dict[str, Server] = {
    s.name: s
    for s in (
        Server(
            "hypercorn-trio",
            lambda port: [
                *("-m", "hypercorn", "--worker-class", "trio", "--workers", "1"),
                *("--bind", f"{HOST}:{port}", APP),
            ],
            module="hypercorn",
            distributions=("hypercorn", "trio", "wsproto"),
            description="hypercorn --worker-class trio --workers 1, ASGI echo",
        ),
        Server(
            "trio-websocket",
            lambda port: ["-m", "bench.ws_memory_servers", "trio-websocket", "--port", str(port)],
            module="trio_websocket",
            distributions=("trio-websocket", "trio", "wsproto"),
            description="bare trio_websocket.serve_websocket echo",
        ),
        Server(
            "uvicorn-wsproto",
            lambda port: [
                *("-m", "uvicorn", "--ws", "wsproto", "--http", "h11", "--loop", "asyncio"),
                *("--workers", "1", "--no-access-log", "--host", HOST, "--port", str(port), APP),
            ],
            module="uvicorn",
            distributions=("uvicorn", "wsproto", "h11"),
            description="uvicorn --ws wsproto --workers 1, ASGI echo",
        ),
        Server(
            "uvicorn-websockets",
            lambda port: [
                *("-m", "uvicorn", "--ws", "websockets", "--http", "h11", "--loop", "asyncio"),
                *("--workers", "1", "--no-access-log", "--host", HOST, "--port", str(port), APP),
            ],
            module="uvicorn",
            distributions=("uvicorn", "websockets", "h11"),
            description="uvicorn --ws websockets --workers 1, ASGI echo (compression on)",
        ),
        Server(
            "wsproto",
            lambda port: ["-m", "bench.ws_memory_servers", "wsproto", "--port", str(port)],
            module="wsproto",
            distributions=("wsproto", "trio"),
            description="a trio task per connection driving wsproto directly",
        ),
        Server(
            "trioserve-asgi",
            _trioserve_argv(APP),
            module="trioserve",
            distributions=("trioserve", "trio", "trio-websocket", "wsproto"),
            description="trioserve --workers 0 (one process), ASGI echo",
            is_trioserve=True,
        ),
        Server(
            "trioserve-asgi-takeover",
            _trioserve_argv(APP, "--ws-deflate-context-takeover"),
            module="trioserve",
            distributions=("trioserve", "trio", "trio-websocket", "wsproto"),
            description="trioserve --workers 0 --ws-deflate-context-takeover, ASGI echo",
            is_trioserve=True,
        ),
        Server(
            "trioserve-asgi-no-deflate",
            _trioserve_argv(APP, "--no-ws-per-message-deflate"),
            module="trioserve",
            distributions=("trioserve", "trio", "trio-websocket", "wsproto"),
            description="trioserve --workers 0 --no-ws-per-message-deflate, ASGI echo",
            is_trioserve=True,
        ),
        Server(
            "trioserve-native",
            _trioserve_argv(HANDLER, "--interface", "websocket"),
            module="trioserve",
            distributions=("trioserve", "trio", "trio-websocket", "wsproto"),
            description="trioserve --workers 0 --interface websocket, native handler",
            is_trioserve=True,
        ),
    )
}


class BenchError(Exception):
    """A run that did not give a measurement; the message says why."""


class StartError(BenchError):
    """The server exited, or never completed a websocket echo, before the measurement."""


@dataclass
class Measurement:
    """What one run against one server saw."""

    server: str
    round: int
    connections: int
    rss_before_kib: int
    rss_after_kib: int
    processes: int
    open_seconds: float
    per_connection_kib: float
    compressed: int = 0  # websockets whose permessage-deflate offer was accepted
    per_process_kib: dict[str, tuple[int, int]] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)


# --- /proc ---------------------------------------------------------------------------


def _parent_pids() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split after it.
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parent_pids().items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def vmrss_kib(pid: int) -> int | None:
    """VmRSS of one process in KiB, or None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])  # the kernel writes "kB", meaning KiB
    return None


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)[:120]


def tree_rss(root: int) -> dict[int, int]:
    """VmRSS in KiB of every live process in the tree rooted at ``root``."""
    sizes = {}
    for pid in process_tree(root):
        rss = vmrss_kib(pid)
        if rss is not None:
            sizes[pid] = rss
    return sizes


# --- a websocket echo, blocking, for readiness -----------------------------------------


def _recv_events(sock: socket.socket, ws: WSConnection, deadline: float) -> list[Event]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("timed out")
    sock.settimeout(remaining)
    data = sock.recv(RECEIVE_BYTES)
    ws.receive_data(data or None)
    events = list(ws.events())
    if not data and not events:
        raise ConnectionError("the server closed the connection")
    return events


def websocket_echo(port: int, timeout: float) -> None:
    """One handshake, one text message echoed back, one close handshake; raise if not."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        ws = WSConnection(ConnectionType.CLIENT)
        sock.sendall(ws.send(Request(host=f"{HOST}:{port}", target="/")))
        accepted = False
        status = None
        while not accepted:
            for event in _recv_events(sock, ws, deadline):
                if isinstance(event, AcceptConnection):
                    accepted = True
                elif isinstance(event, RejectConnection):
                    status = event.status_code
                elif isinstance(event, RejectData) and event.body_finished:
                    raise ConnectionError(
                        f"the server answered the upgrade with HTTP {status} instead of 101"
                    )
        sock.sendall(ws.send(TextMessage(data="echo?")))
        while True:
            events = _recv_events(sock, ws, deadline)
            texts = [e.data for e in events if isinstance(e, TextMessage)]
            if texts:
                if texts[0] != "echo?":
                    raise ConnectionError(f"expected the echo 'echo?', got {texts[0]!r}")
                break
            if any(isinstance(e, CloseConnection) for e in events):
                raise ConnectionError("the server closed the websocket instead of echoing")
        sock.sendall(ws.send(CloseConnection(code=1000)))
        with contextlib.suppress(OSError, TimeoutError, LocalProtocolError):
            while not any(isinstance(e, CloseConnection) for e in _recv_events(sock, ws, deadline)):
                pass


# --- the client process ----------------------------------------------------------------


# The message a --compression client sends once, and gets back, before it idles.
COMPRESSIBLE = '{"event": "update", "values": [1, 2, 3], "ok": true}' * 40


@dataclass
class _ClientState:
    target: int
    compression: bool = False
    compressed: int = 0
    opened: int = 0
    failed: int = 0
    closed_by_server: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    all_tried: trio.Event = field(default_factory=trio.Event)

    def tried(self) -> None:
        if self.opened + self.failed == self.target:
            self.all_tried.set()
        if (self.opened + self.failed) % 1000 == 0:
            print(f"client: {self.opened} open, {self.failed} failed", file=sys.stderr)


async def _handshake(port: int, state: _ClientState) -> tuple[trio.SocketStream, WSConnection]:
    stream = await trio.open_tcp_stream(HOST, port)
    try:
        ws = WSConnection(ConnectionType.CLIENT)
        offer = [PerMessageDeflate()] if state.compression else []
        await stream.send_all(ws.send(Request(host=f"{HOST}:{port}", target="/", extensions=offer)))
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise ConnectionError("closed during the handshake")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    if state.compression:
                        if event.extensions:
                            state.compressed += 1
                        await _exchange_one(stream, ws)
                    return stream, ws
                if isinstance(event, RejectConnection):
                    raise ConnectionError(f"rejected with HTTP {event.status_code}")
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def _exchange_one(stream: trio.SocketStream, ws: WSConnection) -> None:
    """Send COMPRESSIBLE and wait for its echo (the server compresses and inflates once)."""
    await stream.send_all(ws.send(TextMessage(data=COMPRESSIBLE)))
    parts = []
    while True:
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            raise ConnectionError("closed before the echo")
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, Ping):
                await stream.send_all(ws.send(event.response()))
            elif isinstance(event, TextMessage):
                parts.append(event.data)
                if event.message_finished:
                    if "".join(parts) != COMPRESSIBLE:
                        raise ConnectionError("the echo differs from the message")
                    return
            elif isinstance(event, CloseConnection):
                raise ConnectionError(f"closed with {event.code} before the echo")


async def _idle(stream: trio.SocketStream, ws: WSConnection, state: _ClientState) -> None:
    """Stay open without sending anything but answers: pongs, and the close handshake."""
    async with stream:
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, Ping):
                    await stream.send_all(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    state.closed_by_server += 1
                    state.errors[f"closed by the server with {event.code}"] += 1
                    with contextlib.suppress(LocalProtocolError):
                        await stream.send_all(ws.send(event.response()))
                    return
                elif isinstance(event, TextMessage | BytesMessage):
                    state.errors["unexpected message from the server"] += 1
            if not data:
                state.closed_by_server += 1
                state.errors["connection closed by the server"] += 1
                return


async def _one_connection(
    port: int, state: _ClientState, limiter: trio.CapacityLimiter, handshake_seconds: float
) -> None:
    try:
        async with limiter:
            with trio.fail_after(handshake_seconds):
                stream, ws = await _handshake(port, state)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError, RemoteProtocolError) as exc:
        state.failed += 1
        state.errors[f"open: {type(exc).__name__}: {exc}"[:160]] += 1
        state.tried()
        return
    state.opened += 1
    state.tried()
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await _idle(stream, ws, state)


async def _client(
    port: int,
    connections: int,
    concurrency: int,
    handshake_timeout: float,
    lifetime: float,
    compression: bool,
) -> None:
    state = _ClientState(target=connections, compression=compression)
    limiter = trio.CapacityLimiter(concurrency)
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(_one_connection, port, state, limiter, handshake_timeout)
        # Every attempt ends within its timeout; queued ones wait for the limiter.
        budget = handshake_timeout * (math.ceil(connections / concurrency) + 1)
        with trio.move_on_after(budget):
            await state.all_tried.wait()
        report = {
            "opened": state.opened,
            "failed": state.failed,
            "closed_by_server": state.closed_by_server,
            "compressed": state.compressed,
            "seconds": round(time.monotonic() - started, 3),
            "errors": dict(state.errors.most_common(5)),
        }
        print(json.dumps(report), flush=True)
        # Hold every connection open until the harness closes our stdin (or, should
        # the harness vanish, until the lifetime is up).
        with trio.move_on_after(lifetime):
            await trio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)
        report = {"closed_by_server": state.closed_by_server, "errors": dict(state.errors)}
        print(json.dumps(report), flush=True)
        nursery.cancel_scope.cancel()


def client_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/ws_memory.py client",
        description="Open N idle websockets to 127.0.0.1:PORT (used by the harness).",
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--handshake-timeout", type=float, default=30.0)
    parser.add_argument("--lifetime", type=float, default=600.0)
    parser.add_argument("--compression", action="store_true")
    args = parser.parse_args(argv)
    trio.run(
        _client,
        args.port,
        args.connections,
        args.concurrency,
        args.handshake_timeout,
        args.lifetime,
        args.compression,
    )
    return 0


# --- running processes -----------------------------------------------------------------


def stop_process(process: subprocess.Popen[bytes], name: str) -> None:
    """SIGTERM, then SIGKILL after a bounded wait; then the group it leads, by its id."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"  {name} did not stop within {STOP_TIMEOUT:g}s: SIGKILL", file=sys.stderr)
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
    # The group was created for this process only (start_new_session): a worker a
    # killed master left behind is reached through it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class LineReader:
    """Whole lines from a pipe, each wait bounded."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""

    def readline(self, timeout: float) -> bytes | None:
        """The next line, or None at end of file or when ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


class RunningServer:
    """A server process in a session of its own, its output in a log file."""

    def __init__(self, server: Server, port: int, log_dir: Path) -> None:
        self.server = server
        self.port = port
        self.command = [sys.executable, *server.argv(port)]
        self.log_path = log_dir / f"{server.name}-{port}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 12) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self, when: str) -> None:
        if self.process.poll() is not None:
            raise BenchError(
                f"{self.server.name} exited {when} with status {self.process.returncode}:\n"
                f"{self.log_tail()}"
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Return once a websocket echo round trip works."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StartError(
                    f"{self.server.name} exited with status {self.process.returncode} "
                    f"before serving a websocket:\n{self.log_tail()}"
                )
            try:
                websocket_echo(self.port, timeout=min(5.0, max(0.1, deadline - time.monotonic())))
            except (OSError, LocalProtocolError, RemoteProtocolError) as exc:
                last = exc
                time.sleep(0.2)
            else:
                return
        raise StartError(
            f"{self.server.name} did not complete a websocket echo on {HOST}:{self.port} "
            f"within {timeout:g}s (last error: {last!r}):\n{self.log_tail()}"
        )


@contextlib.contextmanager
def running(server: Server, log_dir: Path) -> Iterator[RunningServer]:
    """Start a server on a fresh port, wait until it echoes, and always stop it."""
    proc = RunningServer(server, free_port(), log_dir)
    try:
        proc.wait_ready()
        yield proc
    finally:
        stop_process(proc.process, server.name)


@contextlib.contextmanager
def client_process(
    port: int, connections: int, concurrency: int, log_path: Path, compression: bool = False
) -> Iterator[tuple[subprocess.Popen[bytes], LineReader]]:
    command = [
        *(sys.executable, "-m", "bench.ws_memory", "client", "--port", str(port)),
        *("--connections", str(connections), "--concurrency", str(concurrency)),
        *(["--compression"] if compression else []),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    assert process.stdout is not None
    try:
        yield process, LineReader(process.stdout.fileno())
    finally:
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=CLIENT_EXIT_TIMEOUT)
        stop_process(process, "client")
        process.stdout.close()


def _read_report(reader: LineReader, timeout: float, what: str, log: Path) -> dict[str, Any]:
    line = reader.readline(timeout)
    if line is None:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-8:])
        raise BenchError(f"the client gave no report {what} within {timeout:g}s:\n{tail}")
    report: dict[str, Any] = json.loads(line)
    return report


def measure(
    server: Server,
    round_no: int,
    connections: int,
    concurrency: int,
    settle: float,
    log_dir: Path,
    compression: bool = False,
) -> Measurement:
    """Start the server, open N idle websockets, and read the RSS before and after."""
    with running(server, log_dir) as proc:
        time.sleep(settle)
        before = tree_rss(proc.process.pid)
        client_log = log_dir / f"client-{server.name}-{proc.port}.log"
        with client_process(proc.port, connections, concurrency, client_log, compression) as (
            client,
            reader,
        ):
            opening_budget = 30.0 * (math.ceil(connections / concurrency) + 1) + 10.0
            opened = _read_report(reader, opening_budget, "after opening", client_log)
            proc.check_alive("while the connections were opened")
            if opened["opened"] != connections:
                raise BenchError(
                    f"only {opened['opened']} of {connections} websockets opened "
                    f"({opened['failed']} failed: {opened['errors']})"
                )
            # A bounded settle, sampled: the last sample is the figure.
            after = tree_rss(proc.process.pid)
            settle_deadline = time.monotonic() + settle
            while time.monotonic() < settle_deadline:
                time.sleep(min(0.5, max(0.0, settle_deadline - time.monotonic())))
                after = tree_rss(proc.process.pid)
            proc.check_alive("while the connections were idle")
            assert client.stdin is not None
            client.stdin.close()
            closed = _read_report(reader, CLIENT_EXIT_TIMEOUT, "when told to stop", client_log)
            if closed["closed_by_server"]:
                raise BenchError(
                    f"the server closed {closed['closed_by_server']} websockets before the "
                    f"measurement ended: {closed['errors']}"
                )
        per_process = {
            f"{pid} {_cmdline(pid)}": (before.get(pid, 0), after.get(pid, 0))
            for pid in sorted(before.keys() | after.keys())
        }
    rss_before, rss_after = sum(before.values()), sum(after.values())
    return Measurement(
        server=server.name,
        round=round_no,
        connections=connections,
        rss_before_kib=rss_before,
        rss_after_kib=rss_after,
        processes=len(after),
        open_seconds=float(opened["seconds"]),
        per_connection_kib=(rss_after - rss_before) / connections,
        compressed=int(opened.get("compressed", 0)),
        per_process_kib=per_process,
        command=proc.command,
    )


# --- report --------------------------------------------------------------------------


def _display_command(server: Server) -> str:
    argv = server.argv(0)
    # Installed servers have a console script of their own; the bare ones run with -m.
    if argv[0] == "-m" and not argv[1].startswith("bench."):
        argv = argv[1:]
    text = " ".join(["python", *argv] if argv[0] == "-m" else argv)
    return text.replace(f"{HOST}:0", f"{HOST}:PORT").replace("--port 0", "--port PORT")


def render_table(
    results: Sequence[Measurement], unavailable: dict[str, str], servers: Sequence[str]
) -> str:
    """The medians as a Markdown table, with issue 4's figures beside them."""
    lines = [
        "| server | KiB per idle websocket (median) | range | rounds | issue 4 figure |",
        "|---|---:|---:|---:|---:|",
    ]
    verdicts = []
    for name in servers:
        server = SERVERS[name]
        reference = (
            f"target ≤ {TARGET_KIB}"
            if server.is_trioserve
            else (f"{REFERENCE_KIB[name]}" if name in REFERENCE_KIB else "")
        )
        mine = [m.per_connection_kib for m in results if m.server == name]
        if mine:
            median = statistics.median(mine)
            lines.append(
                f"| {name} | {median:.1f} | {min(mine):.1f}-{max(mine):.1f} | {len(mine)} "
                f"| {reference} |"
            )
            if server.is_trioserve:
                verdict = "meets" if median <= TARGET_KIB else "misses"
                verdicts.append(f"- {name}: {median:.1f} KiB {verdict} the ≤ {TARGET_KIB} target")
        else:
            # "not available yet: <why>": the table says the first part, a note the rest.
            why = unavailable.get(name, "no measurement")
            lines.append(f"| {name} | {why.partition(':')[0]} | | 0 | {reference} |")
            verdicts.append(f"- {name}: not measured, {why}")
    return "\n".join([*lines, "", *verdicts]) if verdicts else "\n".join(lines)


def environment(servers: Sequence[str]) -> dict[str, Any]:
    """The machine and the versions the numbers belong to."""
    return machine_facts(dist for name in servers for dist in SERVERS[name].distributions)


# --- limits --------------------------------------------------------------------------


def raise_fd_limit(connections: int) -> str | None:
    """Raise RLIMIT_NOFILE (inherited by the servers and the client); why not, if it can't."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = connections + FD_MARGIN
    wanted = max(FD_LIMIT, needed)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < needed:
        return (
            f"the hard limit on open files is {hard}, below the {needed} descriptors "
            f"{connections} connections need (server and client each): use "
            f"--connections {max(1, hard - FD_MARGIN)} or raise it (ulimit -Hn)"
        )
    return None


def check_port_range(connections: int) -> str | None:
    """All client sockets go to one address and port: each needs an ephemeral port."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return None
    if high - low + 1 < connections + 100:
        return (
            f"the ephemeral port range {low}-{high} is too small for {connections} "
            "connections to one port"
        )
    return None


# --- command line --------------------------------------------------------------------


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 60:
        raise argparse.ArgumentTypeError(f"expected 0 to 60 seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/ws_memory.py",
        description="RSS growth per idle accepted websocket, trioserve against its peers.",
    )
    parser.add_argument(
        "--connections",
        type=positive_int,
        default=5000,
        help="Idle websockets opened against each server (default: 5000).",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=1,
        help="Times each server is measured; the table shows the median (default: 1).",
    )
    parser.add_argument(
        "--servers",
        type=names_arg("server", list(SERVERS)),
        default=list(SERVERS),
        help="Comma-separated servers, measured in this order each round (default: "
        + ",".join(SERVERS)
        + ").",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=100,
        help="Handshakes the client has in flight at once (default: 100).",
    )
    parser.add_argument(
        "--settle",
        type=_seconds,
        default=SETTLE_SECONDS,
        help=f"Seconds to wait before each RSS reading (default: {SETTLE_SECONDS:g}).",
    )
    parser.add_argument(
        "--compression",
        action="store_true",
        help="Offer permessage-deflate and exchange one message before idling.",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="Write the raw results here.")
    return parser


def _short_reason(exc: BenchError) -> str:
    """The first line of the error, and the last line of the server's log if it has one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[0].rstrip(":") if lines else type(exc).__name__
    if len(lines) > 1:
        reason += f"; its log ends with: {lines[-1]}"
    return reason


def _available(names: Sequence[str], unavailable: dict[str, str]) -> list[str]:
    kept = []
    for name in names:
        module = SERVERS[name].module
        if importlib.util.find_spec(module) is None:
            unavailable[name] = f"not installed: no module {module!r}"
            print(
                f"skipping {name}: {module!r} is not importable by {sys.executable}",
                file=sys.stderr,
            )
        else:
            kept.append(name)
    return kept


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    args = build_parser().parse_args(argv)
    connections: int = args.connections
    for problem in (raise_fd_limit(connections), check_port_range(connections)):
        if problem is not None:
            print(f"bench/ws_memory.py: error: {problem}", file=sys.stderr)
            return 2
    unavailable: dict[str, str] = {}
    servers = _available(args.servers, unavailable)
    env = environment(args.servers)
    env["fd_limit"] = list(resource.getrlimit(resource.RLIMIT_NOFILE))
    results: list[Measurement] = []
    failures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trioserve-ws-memory-") as tmp:
        for round_no in range(1, args.rounds + 1):
            for name in servers:
                if name in unavailable:
                    continue
                server = SERVERS[name]
                label = f"round {round_no}/{args.rounds} {name:<17}"
                try:
                    m = measure(
                        server,
                        round_no,
                        connections,
                        args.concurrency,
                        args.settle,
                        Path(tmp),
                        args.compression,
                    )
                except BenchError as exc:
                    first = _short_reason(exc)
                    if server.is_trioserve and isinstance(exc, StartError):
                        # WebSocket support may not be in this build yet: say so, go on.
                        unavailable[name] = f"not available yet: {first}"
                    failures.append(
                        {"server": name, "round": round_no, "reason": first, "error": str(exc)}
                    )
                    print(f"{label} FAILED: {exc}", file=sys.stderr)
                    continue
                results.append(m)
                print(
                    f"{label} {m.per_connection_kib:6.1f} KiB/websocket  "
                    f"RSS {m.rss_before_kib / 1024:.1f} -> {m.rss_after_kib / 1024:.1f} MiB "
                    f"over {m.processes} process(es); {connections} opened in "
                    f"{m.open_seconds:.1f}s"
                    + (f"; {m.compressed} compressed" if args.compression else ""),
                    file=sys.stderr,
                )
    for failure in failures:
        unavailable.setdefault(failure["server"], "failed: " + failure["reason"])
    print()
    mode = (
        "permessage-deflate offered, one message exchanged"
        if args.compression
        else "no compression"
    )
    print(f"{connections} idle websockets per server, one worker, {mode}\n")
    print(render_table(results, unavailable, args.servers))
    print()
    for name in args.servers:
        print(f"- {name}: {_display_command(SERVERS[name])}")
    before = env["trioserve_sources_sha256"]
    after = sources_fingerprint()
    changed = changed_sources(before, after)
    if changed:
        print(
            "\nwarning: trioserve's sources changed during the run, so its rows may mix "
            f"builds ({', '.join(changed)}); run it again on a quiet tree."
        )
    if args.json is not None:
        report = {
            "environment": env,
            "sources_changed_during_run": changed,
            "settings": {
                "connections": connections,
                "rounds": args.rounds,
                "concurrency": args.concurrency,
                "settle": args.settle,
                "servers": args.servers,
                "compression": args.compression,
            },
            "results": [asdict(m) for m in results],
            "failures": failures,
            "reference_kib": REFERENCE_KIB,
            "target_kib": TARGET_KIB,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nraw results written to {args.json}", file=sys.stderr)
    return 1 if failures and not results else 0


if __name__ == "__main__":
    sys.exit(main())
