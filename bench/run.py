"""Throughput of trioserve against its peers, measured with wrk.

Run from the repository root, with the peers installed in their own virtualenv
(see bench/README.md)::

    .bench-venv/bin/python bench/run.py [--duration 10] [--rounds 2]
        [--servers trioserve,hypercorn,uvicorn] [--scenarios keepalive64,single,close]
        [--workers 1,2] [--json FILE]

Every server serves ``bench.app:app`` from one process pinned to CPU 0; wrk runs
with one thread pinned to CPU 1. Servers are interleaved (A B C A B C ...) so a
slow phase of the machine does not land on one server only, and the table shows
the median over rounds. All traffic goes to 127.0.0.1 and every wait is bounded.

With ``--workers 1,2`` every server also runs with two worker processes, pinned to
both CPUs: wrk then shares CPU 1 with one of them, so a 2-worker row measures two
workers and the load generator on two CPUs, not two workers on two CPUs of their own.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if not __package__:
    # Run as a script (python bench/X.py): make the "bench" package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (
    HOST,
    REPO_ROOT,
    accepts,
    changed_sources,
    free_port,
    importable_servers,
    machine_facts,
    names_arg,
    positive_int,
    sources_fingerprint,
)

APP = "bench.app:app"
EXPECTED_BODY = b"Hello, world!"

SERVER_CPU = "0"
CLIENT_CPU = "1"
# Servers with more than one worker run on both CPUs, sharing CPU 1 with wrk.
SHARED_CPUS = "0,1"
# Put before the server's and wrk's commands: ``chrt -f 20`` with --fifo (see there).
PRIORITY: list[str] = []
READY_TIMEOUT = 15.0  # seconds for a server to accept TCP connections
WARMUP_SECONDS = 2
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
WRK_GRACE = 30.0  # seconds wrk may run past its own -d before it is killed

TIMES = "\N{MULTIPLICATION SIGN}"
WRK_MISSING = (
    "wrk not found: install it with 'apt-get install wrk' (Debian/Ubuntu) "
    "or your distribution's package"
)


# --- what is measured ----------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One wrk load shape."""

    name: str
    connections: int
    headers: tuple[str, ...] = ()
    description: str = ""


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("keepalive64", 64, description="64 keep-alive connections"),
        Scenario("single", 1, description="1 keep-alive connection"),
        Scenario(
            "close",
            64,
            headers=("Connection: close",),
            description="64 connections, a new connection per request",
        ),
    )
}


@dataclass(frozen=True)
class Server:
    """How to start one server on a port, and what it needs installed."""

    name: str
    # The command line after the interpreter, for a port and a worker count.
    argv: Callable[[int, int], list[str]]
    module: str  # the module that must be importable for the server to run
    distributions: tuple[str, ...]  # reported with their versions
    ready_line: str | None = None  # a stderr line that says the server is listening
    note: str = ""
    # Whether it can run more than one worker process (--workers 2).
    workers: bool = True
    # Another interpreter and working directory than this script's and the checkout's
    # (trioserve-mypyc: the compiled build's venv, run where the checkout's pure source
    # is not on sys.path).
    python: Path | None = None
    cwd: Path | None = None


def _trioserve_argv(http: str, *extra: str) -> Callable[[int, int], list[str]]:
    def argv(port: int, workers: int) -> list[str]:
        # --http is explicit for both variants: the default 'auto' would pick the
        # compiled parser whenever h11-mypyc is installed, hiding the difference.
        # One worker: served in the process itself (--workers 0), no master. More: the
        # master and its workers, each on a socket of its own (--reuse-port): on the
        # master's one shared socket, a burst of new connections (wrk's 64 keep-alive
        # ones) spread anywhere from 32/32 to 64/0 in tests, and stays so for the run.
        if workers == 1:
            processes = ["--workers", "0"]
        else:
            processes = ["--workers", str(workers), "--reuse-port"]
        return [
            *("-m", "trioserve", APP),
            *("--bind", f"{HOST}:{port}", *processes, "--http", http),
            *extra,
        ]

    return argv


# The build compiled with mypyc (docs/deployment.md, "The compiled build"), made by
# bench/mypyc_setup.sh: its own venv, and a directory holding only a link to bench/ to run
# it from (in the checkout, ``-m trioserve`` would import the pure source there instead).
MYPYC_DIR = REPO_ROOT / ".bench-mypyc"
MYPYC_PYTHON = MYPYC_DIR / "venv" / "bin" / "python"


def _mypyc_build(name: str, *extra: str, note: str, distributions: tuple[str, ...] = ()) -> Server:
    """A row of the compiled build, served with ``--http h11-compiled`` and ``extra``."""
    return Server(
        name,
        _trioserve_argv("h11-compiled", *extra),
        module="trioserve",
        distributions=("trioserve", "h11-mypyc", *distributions),
        # The start-up line of the compiled build (after "listening on"): a server
        # that started on the pure source never gets a row under this name.
        ready_line="HTTP/1.1 modules compiled with mypyc",
        note=f"{note} (build it first: bench/mypyc_setup.sh)",
        python=MYPYC_PYTHON,
        cwd=MYPYC_DIR / "run",
    )


SERVERS: dict[str, Server] = {
    s.name: s
    for s in (
        Server(
            "trioserve",
            _trioserve_argv("h11"),
            module="trioserve",
            distributions=("trioserve", "trio", "h11"),
            ready_line="listening on",
        ),
        Server(
            "trioserve-compiled",
            _trioserve_argv("h11-compiled"),
            module="h11_mypyc",
            distributions=("trioserve", "h11-mypyc"),
            ready_line="listening on",
            note="needs h11-mypyc (pip install h11-mypyc)",
        ),
        _mypyc_build(
            "trioserve-mypyc",
            note="trioserve's hot modules compiled with mypyc, --http h11-compiled",
        ),
        Server(
            "trioserve-metrics",
            # Port 0: the metrics listener is not scraped; what is measured is the
            # counting on the request path (and the listener being there).
            _trioserve_argv("h11", "--metrics-bind", f"{HOST}:0"),
            module="prometheus_client",
            distributions=("trioserve", "prometheus-client"),
            ready_line="listening on",
            note="trioserve with --metrics-bind (needs prometheus_client)",
        ),
        # With --metrics-bind: there the counting on the request path is compiled too
        # (_exchange is one of the compiled modules).
        _mypyc_build(
            "trioserve-mypyc-metrics",
            "--metrics-bind",
            f"{HOST}:0",
            note="the compiled build with --metrics-bind",
            distributions=("prometheus-client",),
        ),
        Server(
            "trioserve-httptools",
            _trioserve_argv("httptools"),
            module="httptools",
            distributions=("trioserve", "httptools"),
            ready_line="listening on",
            note="needs httptools (pip install 'trioserve[speed]')",
        ),
        Server(
            "hypercorn",
            lambda port, workers: [
                *("-m", "hypercorn", "--worker-class", "trio", "--workers", str(workers)),
                *("--bind", f"{HOST}:{port}", APP),
            ],
            module="hypercorn",
            distributions=("hypercorn", "trio", "h11"),
        ),
        Server(
            "bare",
            lambda port, workers: ["-m", "bench.bare", str(port), "h11"],
            module="trio",
            distributions=("trio", "h11"),
            ready_line="listening on",
            note="calibration: a bare trio + h11 loop, no ASGI (bench/bare.py)",
            workers=False,
        ),
        Server(
            "bare-compiled",
            lambda port, workers: ["-m", "bench.bare", str(port), "h11_mypyc"],
            module="h11_mypyc",
            distributions=("trio", "h11-mypyc"),
            ready_line="listening on",
            note="calibration: bench/bare.py on the compiled h11",
            workers=False,
        ),
        Server(
            "uvicorn",
            lambda port, workers: [
                *("-m", "uvicorn", "--http", "h11", "--loop", "asyncio", "--workers", str(workers)),
                *("--no-access-log", "--port", str(port), "--host", HOST, APP),
            ],
            module="uvicorn",
            distributions=("uvicorn", "h11"),
        ),
        Server(
            "uvicorn-std",
            lambda port, workers: [
                *("-m", "uvicorn", "--http", "httptools", "--loop", "uvloop"),
                *("--workers", str(workers)),
                *("--no-access-log", "--port", str(port), "--host", HOST, APP),
            ],
            module="uvloop",
            distributions=("uvicorn", "httptools", "uvloop"),
            note="uvicorn[standard]'s parser and loop: needs httptools and uvloop",
        ),
    )
}

DEFAULT_SERVERS = ("trioserve", "trioserve-compiled", "hypercorn", "uvicorn")
BASELINE = "trioserve"


class BenchError(Exception):
    """A server or wrk run that did not give a measurement; the message says why."""


class StartError(BenchError):
    """The server exited, or did not accept connections, before the load started."""


@dataclass
class Measurement:
    """What one wrk run against one server saw."""

    server: str
    scenario: str
    round: int
    requests_per_sec: float
    latency_p50_ms: float
    latency_p99_ms: float
    requests: int
    errors: dict[str, int]
    loadavg_1m: float
    h11_mypyc_loaded: bool | None  # None where /proc/PID/maps cannot be read
    command: list[str] = field(default_factory=list)
    workers: int = 1
    server_cpus: str = SERVER_CPU

    @property
    def row(self) -> str:
        """The table row it belongs to: the server, and its worker count if not one."""
        return self.server if self.workers == 1 else f"{self.server} {self.workers}w"

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())


# --- wrk output ----------------------------------------------------------------------

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"


def _parse_duration_ms(text: str, label: str, output: str) -> float:
    match = re.search(rf"^\s*{re.escape(label)}\s+{_DURATION}\s*$", output, re.MULTILINE)
    if match is None:
        raise BenchError(f"wrk output has no {label!r} latency line:\n{output}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> tuple[float, float, float, int, dict[str, int]]:
    """Requests/sec, p50 ms, p99 ms, request count and error counts from ``wrk --latency``."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in ", output, re.MULTILINE)
    if rps is None or total is None:
        raise BenchError(f"could not read Requests/sec from wrk output:\n{output}")
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non_2xx_3xx": 0}
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sock is not None:
        for key, value in zip(("connect", "read", "write", "timeout"), sock.groups(), strict=True):
            errors[key] = int(value)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx is not None:
        errors["non_2xx_3xx"] = int(non2xx.group(1))
    return (
        float(rps.group(1)),
        _parse_duration_ms("p50", "50%", output),
        _parse_duration_ms("p99", "99%", output),
        int(total.group(1)),
        errors,
    )


# --- running servers -----------------------------------------------------------------


class RunningServer:
    """A server process pinned to the server CPU, with its output in a log file."""

    def __init__(self, server: Server, port: int, log_dir: Path, workers: int = 1) -> None:
        self.server = server
        self.port = port
        self.cpus = SERVER_CPU if workers == 1 else SHARED_CPUS
        self.command = [
            *PRIORITY,
            "taskset",
            "-c",
            self.cpus,
            str(server.python or sys.executable),
            *server.argv(port, workers),
        ]
        self.log_path = log_dir / f"{server.name}-{workers}-{port}.log"
        self._log = self.log_path.open("wb")
        # A session of its own, so that a worker child left behind by a killed
        # master (hypercorn runs one) can still be reached by its group id.
        self.process = subprocess.Popen(
            self.command,
            cwd=server.cwd or REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Return once the server accepts TCP connections (and printed its ready line)."""
        deadline = time.monotonic() + timeout
        ready_line = self.server.ready_line
        seen_line = ready_line is None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StartError(
                    f"{self.server.name} exited with status {self.process.returncode} "
                    f"before accepting connections:\n{self.log_tail()}"
                )
            if ready_line is not None and ready_line in self.log_text():
                seen_line = True
            if seen_line and accepts(self.port):
                return
            time.sleep(0.05)
        raise StartError(
            f"{self.server.name} did not accept connections on {HOST}:{self.port} "
            f"within {timeout:g}s:\n{self.log_tail()}"
        )

    def loads_h11_mypyc(self) -> bool | None:
        """Whether the compiled h11 is mapped into the server process (or, with workers,
        into any process of its group), read from /proc."""
        pids = [self.process.pid]
        with contextlib.suppress(OSError):
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit() and _group_of(int(entry.name)) == self.process.pid:
                    pids.append(int(entry.name))
        loaded = None
        for pid in pids:
            try:
                maps = Path(f"/proc/{pid}/maps").read_text()
            except OSError:
                continue
            loaded = loaded or f"{os.sep}h11_mypyc{os.sep}" in maps
        return loaded

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a bounded wait; by pid, then the group it leads."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(
                    f"  {self.server.name} did not stop within {STOP_TIMEOUT:g}s of SIGTERM: "
                    "sending SIGKILL",
                    file=sys.stderr,
                )
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        # The process group is the one this script created for this server only.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@contextlib.contextmanager
def running(server: Server, log_dir: Path, workers: int = 1) -> Iterator[RunningServer]:
    """Start a server on a fresh port, wait until it is ready, and always stop it."""
    proc = RunningServer(server, free_port(), log_dir, workers)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def check_response(port: int) -> None:
    """One plain GET, to be sure every server serves the same thing before it is timed."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"GET / failed: {exc!r}") from exc
    finally:
        conn.close()
    if response.status != 200 or body != EXPECTED_BODY:
        raise BenchError(
            f"GET / answered {response.status} {body!r}, expected 200 {EXPECTED_BODY!r}"
        )


def wrk_command(port: int, scenario: Scenario, seconds: int) -> list[str]:
    command = [*PRIORITY, "taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{scenario.connections}"]
    command += [f"-d{seconds}s", "--latency"]
    for header in scenario.headers:
        command += ["-H", header]
    return [*command, f"http://{HOST}:{port}/"]


def run_wrk(command: list[str], seconds: int) -> str:
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=seconds + WRK_GRACE,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {seconds + WRK_GRACE:g}s") from exc
    if done.returncode != 0:
        raise BenchError(f"wrk exited with status {done.returncode}:\n{done.stderr}{done.stdout}")
    return done.stdout


def measure(
    server: Server,
    scenario: Scenario,
    round_no: int,
    duration: int,
    log_dir: Path,
    workers: int = 1,
) -> Measurement:
    """Start the server, warm it up, run wrk once, stop the server."""
    with running(server, log_dir, workers) as proc:
        check_response(proc.port)
        run_wrk(wrk_command(proc.port, scenario, WARMUP_SECONDS), WARMUP_SECONDS)
        loadavg = os.getloadavg()[0]
        command = wrk_command(proc.port, scenario, duration)
        output = run_wrk(command, duration)
        compiled = proc.loads_h11_mypyc()
        if proc.process.poll() is not None:
            raise BenchError(
                f"{server.name} exited during the run with status "
                f"{proc.process.returncode}:\n{proc.log_tail()}"
            )
    rps, p50, p99, total, errors = parse_wrk(output)
    return Measurement(
        server=server.name,
        scenario=scenario.name,
        round=round_no,
        requests_per_sec=rps,
        latency_p50_ms=p50,
        latency_p99_ms=p99,
        requests=total,
        errors=errors,
        loadavg_1m=loadavg,
        h11_mypyc_loaded=compiled,
        command=command,
        workers=workers,
        server_cpus=proc.cpus,
    )


# --- report --------------------------------------------------------------------------


@dataclass
class Row:
    server: str
    rps: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    rounds: int
    errors: int


def summarize(results: Sequence[Measurement], scenario: str, servers: Sequence[str]) -> list[Row]:
    rows = []
    for name in servers:
        mine = [m for m in results if m.scenario == scenario and m.row == name]
        if mine:
            rows.append(
                Row(
                    server=name,
                    rps=statistics.median(m.requests_per_sec for m in mine),
                    rps_min=min(m.requests_per_sec for m in mine),
                    rps_max=max(m.requests_per_sec for m in mine),
                    p50_ms=statistics.median(m.latency_p50_ms for m in mine),
                    p99_ms=statistics.median(m.latency_p99_ms for m in mine),
                    rounds=len(mine),
                    errors=sum(m.error_total for m in mine),
                )
            )
    return rows


def _ratio(rows: Sequence[Row], numerator: str, denominator: str) -> float | None:
    by_name = {row.server: row for row in rows}
    if numerator in by_name and denominator in by_name and by_name[denominator].rps > 0:
        return by_name[numerator].rps / by_name[denominator].rps
    return None


def _p50_ratio(rows: Sequence[Row], numerator: str, denominator: str) -> float | None:
    by_name = {row.server: row for row in rows}
    if numerator in by_name and denominator in by_name and by_name[denominator].p50_ms > 0:
        return by_name[numerator].p50_ms / by_name[denominator].p50_ms
    return None


def _fmt_ratio(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}{TIMES}"


def render_table(
    results: Sequence[Measurement], scenarios: Sequence[str], servers: Sequence[str]
) -> str:
    """The results as a Markdown table, then the ratios the targets are stated in."""
    lines = [
        "| scenario | server | req/s (median) | req/s range | p50 ms | p99 ms | vs trioserve |"
        " rounds |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    ratio_lines = []
    for scenario in scenarios:
        rows = summarize(results, scenario, servers)
        for row in rows:
            errors = f" ({row.errors} errors)" if row.errors else ""
            lines.append(
                f"| {scenario} | {row.server} | {row.rps:,.0f}{errors} "
                f"| {row.rps_min:,.0f}-{row.rps_max:,.0f} | {row.p50_ms:.3f} "
                f"| {row.p99_ms:.3f} | {_fmt_ratio(_ratio(rows, row.server, BASELINE))} "
                f"| {row.rounds} |"
            )
        pairs = [
            (BASELINE, "hypercorn"),
            (BASELINE, "uvicorn"),
            ("trioserve-compiled", "uvicorn"),
            ("trioserve-metrics", BASELINE),
            ("trioserve-mypyc-metrics", "trioserve-mypyc"),
            ("trioserve-compiled", "uvicorn-std"),
            ("trioserve-httptools", "uvicorn-std"),
        ]
        # How each server scales with its workers (rows "NAME Nw" beside "NAME").
        pairs += [
            (row.server, row.server.rsplit(" ", 1)[0])
            for row in rows
            if re.search(r" \d+w$", row.server)
        ]
        parts = [
            f"{num} / {den} = {_fmt_ratio(_ratio(rows, num, den))}"
            for num, den in pairs
            if num in servers and den in servers
        ]
        if scenario == "single":
            # One connection measures latency: the ratios of the medians of p50.
            parts += [
                f"p50 {num} / {den} = {_fmt_ratio(_p50_ratio(rows, num, den))}"
                for num, den in pairs
                if num in servers and den in servers and den == "uvicorn-std"
            ]
        if parts:
            ratio_lines.append(f"- {scenario}: " + ", ".join(parts))
    return "\n".join([*lines, "", *ratio_lines])


def environment(servers: Sequence[str]) -> dict[str, Any]:
    """The machine and the versions the numbers belong to."""
    facts = machine_facts(dist for name in servers for dist in SERVERS[name].distributions)
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False)
    facts["wrk"] = (wrk.stdout + wrk.stderr).strip().splitlines()[0:1]
    return facts


# --- command line --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Requests/sec of trioserve and its peers under wrk, one CPU each.",
    )
    parser.add_argument(
        "--duration", type=positive_int, default=10, help="Seconds per wrk run (default: 10)."
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
        help=(
            "Comma-separated servers, run in this order each round (default: "
            "trioserve,trioserve-compiled,hypercorn,uvicorn; trioserve-compiled only when "
            "h11_mypyc is importable)."
        ),
    )
    parser.add_argument(
        "--scenarios",
        type=names_arg("scenario", list(SCENARIOS)),
        default=list(SCENARIOS),
        help="Comma-separated scenarios: "
        + ", ".join(f"{s.name} ({s.description})" for s in SCENARIOS.values()),
    )
    parser.add_argument(
        "--workers",
        type=_worker_counts,
        default=[1],
        help="Comma-separated worker counts every server runs with (default: 1). One "
        f"worker runs on CPU {SERVER_CPU}; more run on CPUs {SHARED_CPUS}, where wrk (on "
        f"CPU {CLIENT_CPU}) shares a CPU with them. Rows of N > 1 workers are named "
        "'SERVER Nw'. trioserve runs in-process (--workers 0) for one worker, as its master "
        "and N workers with --reuse-port for more.",
    )
    parser.add_argument("--fifo", action="store_true", help=FIFO_HELP)
    parser.add_argument("--json", type=Path, metavar="FILE", help="Write the raw results here.")
    return parser


def _worker_counts(text: str) -> list[int]:
    counts = []
    for item in text.split(","):
        try:
            count = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a worker count: {item!r}") from None
        if count < 1:
            raise argparse.ArgumentTypeError(f"a worker count is at least 1, not {count}")
        if count not in counts:
            counts.append(count)
    return counts


def _parser_problem(m: Measurement) -> str | None:
    """Why a measurement does not measure the parser its row is named after, if it does not."""
    if m.server == "trioserve-httptools" and m.h11_mypyc_loaded:
        return (
            "trioserve-httptools started, but the server loaded h11_mypyc: --http httptools "
            "has no effect in this build; skipping it"
        )
    if m.server == "trioserve-compiled" and m.h11_mypyc_loaded is False:
        return (
            "trioserve-compiled started, but the server never loaded h11_mypyc: "
            "--http h11-compiled has no effect in this build, so its numbers would be plain "
            "h11; skipping it"
        )
    return None


def _one_line(m: Measurement) -> str:
    text = (
        f"{m.requests_per_sec:>10,.0f} req/s  p50 {m.latency_p50_ms:.2f} ms  "
        f"p99 {m.latency_p99_ms:.2f} ms  load {m.loadavg_1m:.2f}"
    )
    if m.error_total:
        text += "  errors: " + ", ".join(f"{k} {v}" for k, v in m.errors.items() if v)
    if m.server == "trioserve" and m.h11_mypyc_loaded:
        text += "  (warning: h11_mypyc was loaded despite --http h11)"
    return text


FIFO_HELP = (
    "Run the server and the load generator at real-time priority (chrt -f 20; needs root "
    "or CAP_SYS_NICE): on a machine others share, they then hardly lose the CPU to other "
    "work, which the ratios need. The kernel still keeps 5%% of each second for the rest "
    "(sched_rt_runtime_us), so figures are a little below a quiet machine's."
)


def use_fifo() -> bool:
    """Put ``chrt -f 20`` before the servers' and the load generator's commands (--fifo);
    False, said on stderr, when this process may not."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
    except OSError as exc:
        print(f"--fifo: this process may not use real-time priority ({exc})", file=sys.stderr)
        return False
    # (Only to check that it may: the server and the load generator get it from chrt.)
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    PRIORITY[:] = ["chrt", "-f", "20"]
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if shutil.which("wrk") is None:
        print(WRK_MISSING, file=sys.stderr)
        return 2
    if shutil.which("taskset") is None:
        print(
            "taskset not found: it is in util-linux ('apt-get install util-linux')", file=sys.stderr
        )
        return 2
    cpus = os.sched_getaffinity(0)
    if not {int(SERVER_CPU), int(CLIENT_CPU)} <= cpus:
        print(
            f"need CPUs {SERVER_CPU} and {CLIENT_CPU} (server and wrk), this process may use "
            f"{sorted(cpus)}",
            file=sys.stderr,
        )
        return 2

    if args.fifo and not use_fifo():
        return 2
    servers = importable_servers(args.servers, SERVERS)
    if BASELINE not in servers:
        print(f"note: {BASELINE} is not in the run, so the ratio column is n/a", file=sys.stderr)
    scenarios: list[str] = args.scenarios
    duration: int = args.duration
    worker_counts: list[int] = args.workers
    # (server, workers) pairs, in the order each round runs them.
    runs = [
        (name, workers)
        for name in servers
        for workers in worker_counts
        if workers == 1 or SERVERS[name].workers
    ]
    for name in servers:
        if not SERVERS[name].workers and any(w > 1 for w in worker_counts):
            print(f"note: {name} runs one process only: no rows with more workers", file=sys.stderr)
    per_run = duration + WARMUP_SECONDS + 2
    estimate = per_run * len(runs) * len(scenarios) * args.rounds
    print(
        f"{args.rounds} round(s) x {len(runs)} server run(s) x {len(scenarios)} scenario(s), "
        f"{duration}s each: about {estimate // 60}m{estimate % 60:02d}s",
        file=sys.stderr,
    )
    if any(w > 1 for w in worker_counts):
        print(
            f"note: servers with more than one worker run on CPUs {SHARED_CPUS} and share CPU "
            f"{CLIENT_CPU} with wrk: their rows show what two CPUs give server and load "
            "generator together, not what two CPUs of their own would give the server",
            file=sys.stderr,
        )

    env = environment(servers)
    results: list[Measurement] = []
    failures: list[dict[str, Any]] = []
    skipped: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="trioserve-bench-") as tmp:
        for round_no in range(1, args.rounds + 1):
            for name, workers in runs:
                for scenario_name in scenarios:
                    if name in skipped:
                        continue
                    row = name if workers == 1 else f"{name} {workers}w"
                    label = f"round {round_no}/{args.rounds} {row:<21} {scenario_name:<11}"
                    skip = False  # only for a missing parser, not for a noisy run
                    try:
                        m = measure(
                            SERVERS[name],
                            SCENARIOS[scenario_name],
                            round_no,
                            duration,
                            Path(tmp),
                            workers,
                        )
                        problem = _parser_problem(m)
                        skip = problem is not None
                    except StartError as exc:
                        problem = str(exc)
                        if name == "trioserve-compiled":
                            skip = True
                            problem = (
                                "trioserve-compiled failed to start with --http h11-compiled "
                                f"(not implemented in this build?): skipping it\n{exc}"
                            )
                    except BenchError as exc:
                        problem = str(exc)
                    else:
                        if problem is None:
                            results.append(m)
                            print(f"{label} {_one_line(m)}", file=sys.stderr)
                            continue
                    failures.append(
                        {
                            "server": name,
                            "workers": workers,
                            "scenario": scenario_name,
                            "round": round_no,
                            "error": problem,
                        }
                    )
                    print(f"{label} FAILED: {problem}", file=sys.stderr)
                    if skip:
                        skipped.add(name)

    rows = [name if w == 1 else f"{name} {w}w" for name, w in runs]
    ran = [row for row in rows if any(m.row == row for m in results)]
    print()
    print(render_table(results, scenarios, ran))
    if any(m.error_total for m in results):
        print("\nwrk saw errors (socket errors or non-2xx/3xx responses):")
        for m in results:
            if m.error_total:
                detail = ", ".join(f"{k} {v}" for k, v in m.errors.items() if v)
                print(f"- round {m.round} {m.row} {m.scenario}: {detail}")
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
                "server_cpu": SERVER_CPU,
                "priority": " ".join(PRIORITY) or "normal",
                "client_cpu": CLIENT_CPU,
                "servers": servers,
                "workers": worker_counts,
                "shared_cpus": SHARED_CPUS,
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
