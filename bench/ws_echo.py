"""WebSocket echo throughput of trioserve against its peers: messages per second.

Run from the repository root, with the peers installed (see bench/README.md)::

    .bench-venv/bin/python bench/ws_echo.py [--duration 10] [--rounds 2]
        [--servers trioserve-asgi,trioserve-native,uvicorn-websockets,uvicorn-wsproto,
                   hypercorn-asyncio,hypercorn-trio]
        [--scenarios small,large] [--connections 64] [--compression] [--json FILE]

Every server serves the echo of ``bench/ws_app.py`` from one process (hypercorn: a
master and one worker) pinned to CPU 0. The load generator is this script's
``client`` mode, one process pinned to CPU 1: a single-threaded epoll loop over N
websockets, each sending one message and waiting for its echo before sending the
next (request/response), for a fixed time after a warm-up. It builds its one masked
frame once and only reads frame headers to find the echo, so it spends far less per
message than any server does. Without ``--compression`` the client offers no
extension, so no server compresses: like for like.

Servers are interleaved (A B C A B C ...), each run starts a fresh server, and the
table shows medians over the rounds. All traffic goes to 127.0.0.1 and every wait
is bounded.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if not __package__:
    # Run as a script (python bench/X.py): make the "bench" package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (
    HOST,
    REPO_ROOT,
    changed_sources,
    importable_servers,
    machine_facts,
    names_arg,
    positive_int,
    sources_fingerprint,
)
from bench.run import (
    CLIENT_CPU,
    FIFO_HELP,
    PRIORITY,
    SERVER_CPU,
    BenchError,
    Server,
    StartError,
    running,
    use_fifo,
)

APP = "bench.ws_app:app"
HANDLER = "bench.ws_app:handler"

WARMUP_SECONDS = 2.0
CLIENT_GRACE = 30.0  # seconds the client may run past warm-up + duration before it is killed
HANDSHAKE_TIMEOUT = 10.0
ECHO_CHECK_TIMEOUT = 10.0
RECEIVE_SIZE = 256 * 1024
CLIENT_BUSY = 0.9  # the client's CPU share above which a rate may be the client's limit
TIMES = "\N{MULTIPLICATION SIGN}"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# --- what is measured ----------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One message shape."""

    name: str
    size: int
    text: bool
    description: str


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("small", 16, text=True, description="16-byte text messages"),
        Scenario("large", 64 * 1024, text=False, description="64 KiB binary messages"),
    )
}


def _trioserve_argv(target: str, *extra: str) -> Any:
    def argv(port: int, workers: int = 1) -> list[str]:  # (one worker: run.py's signature)
        return [
            *("-m", "trioserve", target, *extra),
            *("--bind", f"{HOST}:{port}", "--workers", "0"),
        ]

    return argv


def _uvicorn_argv(ws: str, http: str = "h11", loop: str = "asyncio") -> Any:
    def argv(port: int, workers: int = 1) -> list[str]:  # (one worker: run.py's signature)
        return [
            *("-m", "uvicorn", "--ws", ws, "--http", http, "--loop", loop, "--workers", "1"),
            *("--no-access-log", "--host", HOST, "--port", str(port), APP),
        ]

    return argv


def _hypercorn_argv(worker_class: str) -> Any:
    def argv(port: int, workers: int = 1) -> list[str]:  # (one worker: run.py's signature)
        return [
            *("-m", "hypercorn", "--worker-class", worker_class, "--workers", "1"),
            *("--bind", f"{HOST}:{port}", APP),
        ]

    return argv


SERVERS: dict[str, Server] = {
    s.name: s
    for s in (
        Server(
            "trioserve-asgi",
            _trioserve_argv(APP),
            module="trioserve",
            distributions=("trioserve", "trio", "trio-websocket", "wsproto"),
            ready_line="listening on",
            note="trioserve --workers 0, the ASGI echo",
        ),
        Server(
            "trioserve-native",
            _trioserve_argv(HANDLER, "--interface", "websocket"),
            module="trioserve",
            distributions=("trioserve", "trio", "trio-websocket", "wsproto"),
            ready_line="listening on",
            note="trioserve --workers 0 --interface websocket, a native handler",
        ),
        Server(
            "uvicorn-websockets",
            _uvicorn_argv("websockets"),
            module="websockets",
            distributions=("uvicorn", "websockets", "h11"),
            note="uvicorn --ws websockets --loop asyncio (needs websockets)",
        ),
        Server(
            "uvicorn-wsproto",
            _uvicorn_argv("wsproto"),
            module="wsproto",
            distributions=("uvicorn", "wsproto", "h11"),
            note="uvicorn --ws wsproto --loop asyncio",
        ),
        Server(
            "uvicorn-std",
            _uvicorn_argv("websockets", http="httptools", loop="uvloop"),
            module="uvloop",
            distributions=("uvicorn", "websockets", "httptools", "uvloop"),
            note="uvicorn[standard]: websockets on uvloop (needs uvloop, httptools)",
        ),
        Server(
            "hypercorn-asyncio",
            _hypercorn_argv("asyncio"),
            module="hypercorn",
            distributions=("hypercorn", "wsproto"),
            note="hypercorn --worker-class asyncio --workers 1",
        ),
        Server(
            "hypercorn-trio",
            _hypercorn_argv("trio"),
            module="hypercorn",
            distributions=("hypercorn", "trio", "wsproto"),
            note="hypercorn --worker-class trio --workers 1",
        ),
    )
}

DEFAULT_SERVERS = (
    "trioserve-asgi",
    "trioserve-native",
    "uvicorn-websockets",
    "uvicorn-wsproto",
    "hypercorn-asyncio",
    "hypercorn-trio",
)
BASELINE = "trioserve-asgi"


@dataclass
class Measurement:
    """What one client run against one server saw."""

    server: str
    scenario: str
    round: int
    connections: int
    messages: int
    seconds: float
    messages_per_sec: float
    latency_p50_ms: float
    latency_p99_ms: float
    compressed: int
    client_cpu: float
    loadavg_1m: float
    errors: dict[str, int] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)


# --- the client ----------------------------------------------------------------------


def frame(opcode: int, payload: bytes, mask: bytes, rsv1: bool = False) -> bytes:
    """One final, masked client frame (RFC 6455 section 5.2)."""
    first = 0x80 | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + masked


def parse_frame(buf: bytearray) -> tuple[int, int, bytes, int] | None:
    """(first byte, opcode, payload, bytes used) of the first whole server frame in
    ``buf``, or None until it is all there. Server frames are not masked."""
    if len(buf) < 2:
        return None
    first, second = buf[0], buf[1]
    n = second & 0x7F
    pos = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, pos = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, pos = int.from_bytes(buf[2:10], "big"), 10
    if second & 0x80:
        raise ConnectionError("the server sent a masked frame")
    end = pos + n
    if len(buf) < end:
        return None
    return first, first & 0x0F, bytes(buf[pos:end]), end


class _Conn:
    """One websocket of the client: what it sent, what it has read."""

    __slots__ = ("buf", "inflater", "out", "parts", "rsv1", "sent_at", "sock", "takeover")

    def __init__(self, sock: socket.socket, rest: bytes, takeover: bool | None) -> None:
        self.sock = sock
        self.buf = bytearray(rest)
        self.out = b""  # what a partial send left to write
        self.parts: list[bytes] = []
        self.rsv1 = False
        self.sent_at = 0.0
        # None: no compression; False/True: the server's context takeover.
        self.takeover = takeover
        self.inflater = zlib.decompressobj(-15) if takeover is not None else None


def _handshake(port: int, compression: bool) -> _Conn:
    sock = socket.create_connection((HOST, port), timeout=HANDSHAKE_TIMEOUT)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16))
        request = (
            (
                f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            ).encode()
            + b"Sec-WebSocket-Key: "
            + key
            + b"\r\n"
        )
        if compression:
            request += b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        sock.sendall(request + b"\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if lines[0].split()[1:2] != [b"101"]:
            raise ConnectionError(f"handshake answered {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        if headers.get(b"sec-websocket-accept") != expected:
            raise ConnectionError("bad Sec-WebSocket-Accept")
        extensions = headers.get(b"sec-websocket-extensions", b"").lower()
        takeover = None
        if b"permessage-deflate" in extensions:
            takeover = b"server_no_context_takeover" not in extensions
        sock.setblocking(False)
        return _Conn(sock, rest, takeover)
    except BaseException:
        sock.close()
        raise


def run_client(
    port: int,
    connections: int,
    scenario: Scenario,
    warmup: float,
    duration: float,
    compression: bool,
) -> dict[str, Any]:
    """Echo ``scenario``'s message on ``connections`` websockets for warmup + duration
    seconds; the messages and latencies of the last ``duration`` seconds count."""
    payload = (b"0123456789abcdef" * (scenario.size // 16 + 1))[: scenario.size]
    opcode = 0x1 if scenario.text else 0x2
    mask = os.urandom(4)
    conns = [_handshake(port, compression) for _ in range(connections)]
    compressed = sum(1 for c in conns if c.takeover is not None)
    plain_frame = frame(opcode, payload, mask)
    # A fresh compressor per message (a client may always do without context takeover):
    # every compressed message is the same, built once.
    deflater = zlib.compressobj(wbits=-15)
    packed = deflater.compress(payload) + deflater.flush(zlib.Z_SYNC_FLUSH)
    deflated_frame = frame(opcode, packed[:-4], mask, rsv1=True)
    poller = select.epoll()
    by_fd = {c.sock.fileno(): c for c in conns}
    errors: dict[str, int] = {}
    latencies: list[float] = []
    counted = 0
    cpu_at_start: float | None = None
    now = time.perf_counter()
    start = now + warmup
    end = start + duration

    def send(c: _Conn, data: bytes) -> None:
        if c.out:
            c.out += data
            return
        try:
            sent = c.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            c.out = data[sent:]
            poller.modify(c.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)

    def send_message(c: _Conn) -> None:
        c.sent_at = time.perf_counter()
        send(c, plain_frame if c.takeover is None else deflated_frame)

    for c in conns:
        poller.register(c.sock.fileno(), select.EPOLLIN)
    for c in conns:
        send_message(c)
    active = len(conns)
    try:
        while active and now < end:
            for fd, events in poller.poll(min(1.0, max(0.0, end - now))):
                c = by_fd[fd]
                if events & select.EPOLLOUT:
                    data, c.out = c.out, b""
                    poller.modify(fd, select.EPOLLIN)
                    send(c, data)
                if not events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    continue
                try:
                    chunk = c.sock.recv(RECEIVE_SIZE)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    chunk = b""
                    errors[f"recv: {exc}"] = errors.get(f"recv: {exc}", 0) + 1
                if not chunk:
                    errors["closed by the server"] = errors.get("closed by the server", 0) + 1
                    poller.unregister(fd)
                    active -= 1
                    continue
                c.buf += chunk
                while (parsed := parse_frame(c.buf)) is not None:
                    first, op, data, used = parsed
                    del c.buf[:used]
                    if op == 0x9:  # ping: answer with a pong
                        send(c, frame(0xA, data, mask))
                        continue
                    if op == 0xA:
                        continue
                    if op == 0x8:
                        raise ConnectionError(f"the server closed: {data[:2].hex()} {data[2:]!r}")
                    if op != 0x0:
                        c.rsv1 = bool(first & 0x40)
                    c.parts.append(data)
                    if not first & 0x80:
                        continue
                    message = b"".join(c.parts)
                    c.parts = []
                    if c.rsv1:
                        assert c.inflater is not None
                        message = c.inflater.decompress(message + b"\x00\x00\xff\xff")
                        if not c.takeover:
                            c.inflater = zlib.decompressobj(-15)
                    if message != payload:
                        raise ConnectionError("the echo differs from the message sent")
                    now = time.perf_counter()
                    if now >= start:
                        if cpu_at_start is None:
                            cpu_at_start = time.process_time()
                        counted += 1
                        latencies.append(now - c.sent_at)
                    if now < end:
                        send_message(c)
            now = time.perf_counter()
        cpu = time.process_time() - (cpu_at_start or time.process_time())
    finally:
        closing = frame(0x8, (1000).to_bytes(2, "big"), mask)
        for c in conns:
            try:
                c.sock.setblocking(True)
                c.sock.settimeout(1.0)
                c.sock.sendall(c.out + closing)
            except OSError:
                pass
            c.sock.close()
        poller.close()
    latencies.sort()
    return {
        "messages": counted,
        "seconds": duration,
        "messages_per_sec": counted / duration,
        "latency_p50_ms": 1e3 * latencies[len(latencies) // 2] if latencies else 0.0,
        "latency_p99_ms": 1e3 * latencies[int(len(latencies) * 0.99)] if latencies else 0.0,
        "compressed": compressed,
        # The client's share of its CPU while measuring: near 1.0 it, not the server,
        # may be what limits the rate.
        "client_cpu": cpu / duration,
        "errors": errors,
    }


def client_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/ws_echo.py client",
        description="Echo messages on N websockets to 127.0.0.1:PORT (used by the harness).",
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=positive_int, required=True)
    parser.add_argument("--scenario", choices=list(SCENARIOS), required=True)
    parser.add_argument("--warmup", type=float, default=WARMUP_SECONDS)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--compression", action="store_true")
    args = parser.parse_args(argv)
    report = run_client(
        args.port,
        args.connections,
        SCENARIOS[args.scenario],
        args.warmup,
        args.duration,
        args.compression,
    )
    print(json.dumps(report), flush=True)
    return 0


# --- the harness ---------------------------------------------------------------------


def client_command(
    port: int, connections: int, scenario: Scenario, duration: int, compression: bool
) -> list[str]:
    return [
        *PRIORITY,
        *("taskset", "-c", CLIENT_CPU, sys.executable, "-m", "bench.ws_echo", "client"),
        *("--port", str(port), "--connections", str(connections)),
        *("--scenario", scenario.name, "--warmup", str(WARMUP_SECONDS)),
        *("--duration", str(duration)),
        *(["--compression"] if compression else []),
    ]


def check_echo(port: int, compression: bool) -> None:
    """One websocket, one small message echoed, before the load: the server works."""
    try:
        report = run_client(port, 1, SCENARIOS["small"], 0.0, 0.2, compression)
    except (OSError, ConnectionError) as exc:
        raise BenchError(f"the echo check failed: {exc!r}") from exc
    if not report["messages"]:
        raise BenchError(f"the echo check got no echo: {report['errors']}")


def measure(
    server: Server,
    scenario: Scenario,
    round_no: int,
    connections: int,
    duration: int,
    compression: bool,
    log_dir: Path,
) -> Measurement:
    """Start the server, check its echo, run the client once, stop the server."""
    with running(server, log_dir) as proc:
        check_echo(proc.port, compression)
        loadavg = os.getloadavg()[0]
        command = client_command(proc.port, connections, scenario, duration, compression)
        try:
            done = subprocess.run(
                command,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=WARMUP_SECONDS + duration + CLIENT_GRACE,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError("the client did not finish in time") from exc
        if done.returncode != 0:
            raise BenchError(f"the client exited with status {done.returncode}:\n{done.stderr}")
        if proc.process.poll() is not None:
            raise BenchError(
                f"{server.name} exited during the run with status "
                f"{proc.process.returncode}:\n{proc.log_tail()}"
            )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return Measurement(
        server=server.name,
        scenario=scenario.name,
        round=round_no,
        connections=connections,
        messages=int(report["messages"]),
        seconds=float(report["seconds"]),
        messages_per_sec=float(report["messages_per_sec"]),
        latency_p50_ms=float(report["latency_p50_ms"]),
        latency_p99_ms=float(report["latency_p99_ms"]),
        compressed=int(report["compressed"]),
        client_cpu=float(report["client_cpu"]),
        loadavg_1m=loadavg,
        errors=dict(report["errors"]),
        command=command,
    )


def render_table(
    results: Sequence[Measurement], scenarios: Sequence[str], servers: Sequence[str]
) -> str:
    """Medians per scenario and server, the ratio to trioserve-asgi, then the ratios of
    the trioserve rows to each peer."""
    lines = [
        "| scenario | server | msg/s (median) | msg/s range | p50 ms | p99 ms "
        f"| vs {BASELINE} | rounds |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    ratio_lines = []
    for scenario in scenarios:
        medians: dict[str, float] = {}
        for name in servers:
            mine = [m for m in results if m.scenario == scenario and m.server == name]
            if not mine:
                continue
            rates = [m.messages_per_sec for m in mine]
            medians[name] = statistics.median(rates)
            base = medians.get(BASELINE)
            ratio = f"{medians[name] / base:.2f}{TIMES}" if base else "n/a"
            errors = sum(sum(m.errors.values()) for m in mine)
            note = f" ({errors} errors)" if errors else ""
            lines.append(
                f"| {scenario} | {name} | {medians[name]:,.0f}{note} "
                f"| {min(rates):,.0f}-{max(rates):,.0f} "
                f"| {statistics.median(m.latency_p50_ms for m in mine):.2f} "
                f"| {statistics.median(m.latency_p99_ms for m in mine):.2f} | {ratio} "
                f"| {len(mine)} |"
            )
        parts = [
            f"{ours} / {peer} = {medians[ours] / medians[peer]:.2f}{TIMES}"
            for ours in ("trioserve-asgi", "trioserve-native")
            for peer in medians
            if ours in medians and not peer.startswith("trioserve") and medians[peer] > 0
        ]
        if parts:
            ratio_lines.append(f"- {scenario}: " + ", ".join(parts))
    return "\n".join([*lines, "", *ratio_lines])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/ws_echo.py",
        description="WebSocket echo messages/s of trioserve and its peers, one CPU each.",
    )
    parser.add_argument(
        "--duration", type=positive_int, default=10, help="Seconds measured per run (default: 10)."
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=2,
        help="Times every server runs every scenario; the table shows medians (default: 2).",
    )
    parser.add_argument(
        "--servers",
        type=names_arg("server", list(SERVERS)),
        default=list(DEFAULT_SERVERS),
        help="Comma-separated servers, run in this order each round (default: "
        + ",".join(DEFAULT_SERVERS)
        + "; also: "
        + ",".join(name for name in SERVERS if name not in DEFAULT_SERVERS)
        + ").",
    )
    parser.add_argument(
        "--scenarios",
        type=names_arg("scenario", list(SCENARIOS)),
        default=list(SCENARIOS),
        help="Comma-separated scenarios: "
        + ", ".join(f"{s.name} ({s.description})" for s in SCENARIOS.values()),
    )
    parser.add_argument(
        "--connections",
        type=positive_int,
        default=64,
        help="Websockets, each with one message in flight (default: 64).",
    )
    parser.add_argument(
        "--compression",
        action="store_true",
        help="Offer permessage-deflate (each server compresses as it negotiates).",
    )
    parser.add_argument("--fifo", action="store_true", help=FIFO_HELP)
    parser.add_argument("--json", type=Path, metavar="FILE", help="Write the raw results here.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    args = build_parser().parse_args(argv)
    if shutil.which("taskset") is None:
        print("taskset not found: it is in util-linux", file=sys.stderr)
        return 2
    cpus = os.sched_getaffinity(0)
    if not {int(SERVER_CPU), int(CLIENT_CPU)} <= cpus:
        print(
            f"need CPUs {SERVER_CPU} and {CLIENT_CPU} (server and client), this process may "
            f"use {sorted(cpus)}",
            file=sys.stderr,
        )
        return 2
    if args.fifo and not use_fifo():
        return 2
    servers = importable_servers(args.servers, SERVERS)
    scenarios: list[str] = args.scenarios
    duration: int = args.duration
    per_run = duration + WARMUP_SECONDS + 3
    estimate = int(per_run * len(servers) * len(scenarios) * args.rounds)
    print(
        f"{args.rounds} round(s) x {len(servers)} server(s) x {len(scenarios)} scenario(s), "
        f"{duration}s each: about {estimate // 60}m{estimate % 60:02d}s",
        file=sys.stderr,
    )
    env = machine_facts(dist for name in servers for dist in SERVERS[name].distributions)
    results: list[Measurement] = []
    failures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trioserve-ws-echo-") as tmp:
        for round_no in range(1, args.rounds + 1):
            for name in servers:
                for scenario_name in scenarios:
                    label = f"round {round_no}/{args.rounds} {name:<18} {scenario_name:<6}"
                    try:
                        m = measure(
                            SERVERS[name],
                            SCENARIOS[scenario_name],
                            round_no,
                            args.connections,
                            duration,
                            args.compression,
                            Path(tmp),
                        )
                    except (BenchError, StartError) as exc:
                        failures.append(
                            {
                                "server": name,
                                "scenario": scenario_name,
                                "round": round_no,
                                "error": str(exc),
                            }
                        )
                        print(f"{label} FAILED: {exc}", file=sys.stderr)
                        continue
                    results.append(m)
                    errors = f"  errors: {m.errors}" if m.errors else ""
                    squeezed = f"  {m.compressed} compressed" if args.compression else ""
                    print(
                        f"{label} {m.messages_per_sec:>10,.0f} msg/s  p50 "
                        f"{m.latency_p50_ms:.2f} ms  p99 {m.latency_p99_ms:.2f} ms  "
                        f"load {m.loadavg_1m:.2f}  client CPU {m.client_cpu:.0%}"
                        f"{squeezed}{errors}",
                        file=sys.stderr,
                    )
    ran = [name for name in servers if any(m.server == name for m in results)]
    mode = "permessage-deflate offered" if args.compression else "no compression"
    print(
        f"\n{args.connections} websockets, one message in flight on each, one worker, {mode}; "
        f"medians of {args.rounds} round(s) of {duration}s\n"
    )
    print(render_table(results, scenarios, ran))
    print()
    for name in ran:
        argv_text = " ".join(SERVERS[name].argv(0, 1)[1:]).replace(":0", ":PORT")
        print(f"- {name}: {argv_text.replace('--port 0', '--port PORT')}")
    busy = [m for m in results if m.client_cpu >= CLIENT_BUSY]
    if busy:
        print(
            f"\nwarning: the client used {CLIENT_BUSY:.0%} or more of its CPU in "
            + ", ".join(f"round {m.round} {m.server} {m.scenario}" for m in busy)
            + ": those rates may be the client's limit, not the server's."
        )
    if failures:
        print(f"\n{len(failures)} run(s) gave no measurement (see above).")
    changed = changed_sources(env["trioserve_sources_sha256"], sources_fingerprint())
    if changed:
        print(
            "\nwarning: trioserve's sources changed during the run, so these numbers may mix "
            f"builds ({', '.join(changed)}); run it again on a quiet tree."
        )
    if args.json is not None:
        report = {
            "environment": env,
            "sources_changed_during_run": changed,
            "settings": {
                "duration": duration,
                "rounds": args.rounds,
                "warmup": WARMUP_SECONDS,
                "connections": args.connections,
                "compression": args.compression,
                "server_cpu": SERVER_CPU,
                "client_cpu": CLIENT_CPU,
                "servers": servers,
                "scenarios": scenarios,
            },
            "results": [asdict(m) for m in results],
            "failures": failures,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nraw results written to {args.json}", file=sys.stderr)
    return 1 if failures and not results else 0


if __name__ == "__main__":
    sys.exit(main())
