"""HTTP/2 throughput of trioserve against its peers, measured with h2load (nghttp2).

Run from the repository root, with the peers installed (see bench/README.md)::

    .venv/bin/python bench/h2.py [--duration 5] [--rounds 2]
        [--servers trioserve,hypercorn-trio,hypercorn-asyncio,granian] [--json FILE]
    .venv/bin/python bench/h2.py --abrupt SERVER [--runs 5] [--duration 5]

Every server serves ``bench.app:app`` over cleartext HTTP/2 with prior knowledge (h2c,
what h2load speaks to an ``http://`` URL), one worker process, the whole server pinned
to CPU 0 with taskset; h2load runs on CPU 1 with ``-c 16 -m 16`` (16 connections, 16
streams each) for ``--duration`` seconds after a 2-second warm-up in the same run. The
first mode runs the servers round after round, interleaved (A B C A B C ...), each
started afresh for its run, and prints the median req/s per server and the ratios to
trioserve. A server that dies during a run, or is not answering once the run ended
(hypercorn's trio worker crashes when an h2load run ends), is recorded as such: its
numbers are kept, and later runs of it still start afresh.

``--abrupt SERVER`` starts one server and runs h2load against it ``--runs`` times in a
row, each run ending abruptly (h2load drops its connections with streams in flight):
every run must be served without a failed request, the server's log must hold no
ERROR line or traceback, and its worker process must never be replaced. The verdict
is printed per run, and the exit status is 1 if any check failed.

All traffic goes to 127.0.0.1; every wait and every child process is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if not __package__:
    # Run as a script (python bench/X.py): make the "bench" package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (
    HOST,
    REPO_ROOT,
    accepts,
    free_port,
    importable_servers,
    machine_facts,
    names_arg,
    positive_int,
)

APP = "bench.app:app"
SERVER_CPU = "0"
CLIENT_CPU = "1"
CONNECTIONS = 16
STREAMS = 16  # concurrent streams per connection (h2load -m)
WARMUP_SECONDS = 2
READY_TIMEOUT = 20.0  # seconds for a server to accept TCP connections
PROBE_TIMEOUT = 10.0  # seconds for one probe request over HTTP/2
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
H2LOAD_GRACE = 30.0  # seconds h2load may run past its own -D and warm-up
BASELINE = "trioserve"
TIMES = "\N{MULTIPLICATION SIGN}"
H2LOAD_MISSING = (
    "h2load not found: install it with 'apt-get install nghttp2-client' (Debian/Ubuntu)"
)
# What a server's log must not hold after a run (trioserve's level names, tracebacks).
LOG_PROBLEM = re.compile(r"\[ERROR\]|\[CRITICAL\]|Traceback|ExceptionGroup")


@dataclass(frozen=True)
class Server:
    """How to start one server on a port, speaking h2c with prior knowledge."""

    name: str
    argv: Callable[[int], list[str]]
    module: str  # must be importable by this interpreter for the server to run
    distributions: tuple[str, ...]
    note: str = ""


SERVERS: dict[str, Server] = {
    s.name: s
    for s in (
        Server(
            "trioserve",
            lambda port: [
                *("-m", "trioserve", APP, "--bind", f"{HOST}:{port}", "--workers", "1"),
                *("--http-protocols", "h1,h2", "--http2-cleartext", "prior-knowledge"),
            ],
            module="h2",
            distributions=("trioserve", "trio", "h2", "hpack"),
            note="needs the h2 package (pip install 'trioserve[http2]')",
        ),
        Server(
            "hypercorn-trio",
            lambda port: [
                *("-m", "hypercorn", "--worker-class", "trio", "--workers", "1"),
                *("--bind", f"{HOST}:{port}", APP),
            ],
            module="hypercorn",
            distributions=("hypercorn", "trio", "h2"),
        ),
        Server(
            "hypercorn-asyncio",
            lambda port: [
                *("-m", "hypercorn", "--worker-class", "asyncio", "--workers", "1"),
                *("--bind", f"{HOST}:{port}", APP),
            ],
            module="hypercorn",
            distributions=("hypercorn", "h2"),
        ),
        Server(
            "granian",
            lambda port: [
                *("-m", "granian", "--interface", "asgi", "--http", "2", "--workers", "1"),
                *("--host", HOST, "--port", str(port), "--no-access-log", APP),
            ],
            module="granian",
            distributions=("granian",),
            note="the ceiling (Rust HTTP/2); pip install granian",
        ),
    )
}
DEFAULT_SERVERS = ("trioserve", "hypercorn-trio", "hypercorn-asyncio", "granian")


class BenchError(Exception):
    """A run that gave no measurement; the message says why."""


class StartError(BenchError):
    """The server exited, or did not serve HTTP/2, before the load started."""


# --- h2load output --------------------------------------------------------------------


@dataclass(frozen=True)
class H2Load:
    """What one h2load run reported."""

    requests_per_sec: float
    started: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    status_4xx_5xx: int
    mean_request_ms: float | None
    protocol: str | None


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_h2load(output: str) -> H2Load:
    """The figures of an h2load run's output (nghttp2 1.52's format)."""
    rps = re.search(r"^finished in [\d.]+\w+, ([\d.]+) req/s", output, re.MULTILINE)
    counts = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        output,
        re.MULTILINE,
    )
    status = re.search(
        r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output, re.MULTILINE
    )
    if rps is None or counts is None or status is None:
        raise BenchError(f"could not read h2load's output:\n{output}")
    mean = re.search(r"^time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\s", output, re.MULTILINE)
    protocol = re.search(r"^Application protocol: (\S+)", output, re.MULTILINE)
    _total, started, done, succeeded, failed, errored, timeout = map(int, counts.groups())
    return H2Load(
        requests_per_sec=float(rps.group(1)),
        started=started,
        done=done,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeout=timeout,
        status_2xx=int(status.group(1)),
        status_4xx_5xx=int(status.group(3)) + int(status.group(4)),
        mean_request_ms=float(mean.group(1)) * _UNITS_MS[mean.group(2)] if mean else None,
        protocol=protocol.group(1) if protocol else None,
    )


def h2load_command(port: int, *, seconds: int | None, requests: int | None = None) -> list[str]:
    """h2load on the client CPU: a timed run (with warm-up) or a fixed number of requests."""
    command = ["taskset", "-c", CLIENT_CPU, "h2load"]
    if seconds is not None:
        command += [f"-c{CONNECTIONS}", f"-m{STREAMS}", f"--warm-up-time={WARMUP_SECONDS}"]
        command += [f"-D{seconds}"]
    else:
        command += ["-c1", "-m1", f"-n{requests}"]
    return [*command, f"http://{HOST}:{port}/"]


def run_h2load(command: list[str], limit: float) -> H2Load:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"h2load did not finish within {limit:g}s") from exc
    if done.returncode != 0:
        raise BenchError(
            f"h2load exited with status {done.returncode}:\n{done.stderr}{done.stdout}"
        )
    return parse_h2load(done.stdout)


# --- running servers ------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            # The command may hold spaces and parentheses: fields follow the last ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


class RunningServer:
    """A server process (master and worker) pinned to the server CPU, logging to a file."""

    def __init__(self, server: Server, port: int, log_dir: Path) -> None:
        self.server = server
        self.port = port
        self.command = ["taskset", "-c", SERVER_CPU, sys.executable, *server.argv(port)]
        self.log_path = log_dir / f"{server.name}-{port}.log"
        self._log = self.log_path.open("wb")
        # A session of its own: workers left behind by a dead master can be reached by
        # the group id, and only this server's processes are ever signalled.
        self.process = subprocess.Popen(
            self.command,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_problems(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if LOG_PROBLEM.search(line)]

    def workers(self) -> list[int]:
        """The server's worker processes: the children of its master."""
        return _children(self.process.pid)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Return once the server accepts connections and has a worker."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StartError(
                    f"{self.server.name} exited with status {self.process.returncode} "
                    f"before accepting connections:\n{self.log_tail()}"
                )
            if accepts(self.port) and self.workers():
                return
            time.sleep(0.05)
        raise StartError(
            f"{self.server.name} did not accept connections on {HOST}:{self.port} "
            f"within {timeout:g}s:\n{self.log_tail()}"
        )

    def serves_h2(self) -> str | None:
        """None when one request over h2c (prior knowledge) succeeds, else why not."""
        try:
            result = run_h2load(h2load_command(self.port, seconds=None, requests=1), PROBE_TIMEOUT)
        except BenchError as exc:
            return str(exc)
        if result.succeeded != 1 or result.status_2xx != 1:
            return (
                f"one request over h2c got {result.succeeded} success(es), "
                f"{result.status_2xx} 2xx (protocol {result.protocol})"
            )
        return None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a bounded wait; then the group this script made."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(
                    f"  {self.server.name} did not stop within {STOP_TIMEOUT:g}s: SIGKILL",
                    file=sys.stderr,
                )
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


@contextlib.contextmanager
def running(server: Server, log_dir: Path) -> Iterator[RunningServer]:
    """Start a server on a fresh port, wait until it serves h2c, and always stop it."""
    proc = RunningServer(server, free_port(), log_dir)
    try:
        proc.wait_ready()
        problem = proc.serves_h2()
        if problem is not None:
            raise StartError(
                f"{server.name} does not serve HTTP/2 with prior knowledge: {problem}\n"
                f"{proc.log_tail()}"
            )
        yield proc
    finally:
        proc.stop()


# --- throughput mode -------------------------------------------------------------------


@dataclass
class Measurement:
    """One h2load run against one freshly started server."""

    server: str
    round: int
    requests_per_sec: float
    succeeded: int
    failed: int
    errored: int
    timeout: int
    mean_request_ms: float | None
    died: str | None  # why the server is gone or not answering after the run, if it is
    loadavg_1m: float
    command: list[str]


def _after_run(proc: RunningServer, workers_before: list[int]) -> str | None:
    """Why the server is not the one that started the run, alive and serving, if not."""
    if proc.process.poll() is not None:
        return f"the server exited with status {proc.process.returncode}"
    workers = proc.workers()
    if workers != workers_before:
        return f"its worker was replaced or is gone (pids {workers_before} -> {workers})"
    problem = proc.serves_h2()
    if problem is not None:
        return f"it no longer answers: {problem}"
    return None


def measure(server: Server, round_no: int, duration: int, log_dir: Path) -> Measurement:
    with running(server, log_dir) as proc:
        workers = proc.workers()
        loadavg = os.getloadavg()[0]
        command = h2load_command(proc.port, seconds=duration)
        result = run_h2load(command, duration + WARMUP_SECONDS + H2LOAD_GRACE)
        died = _after_run(proc, workers)
        if died is not None:
            died += "\n" + proc.log_tail(6)
    return Measurement(
        server=server.name,
        round=round_no,
        requests_per_sec=result.requests_per_sec,
        succeeded=result.succeeded,
        failed=result.failed,
        errored=result.errored,
        timeout=result.timeout,
        mean_request_ms=result.mean_request_ms,
        died=died,
        loadavg_1m=loadavg,
        command=command,
    )


def render_table(results: Sequence[Measurement], servers: Sequence[str]) -> str:
    lines = [
        "| server | req/s (median) | req/s range | mean ms | failed+errored | died after "
        "runs | vs trioserve | rounds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    medians: dict[str, float] = {}
    for name in servers:
        mine = [m for m in results if m.server == name]
        if mine:
            medians[name] = statistics.median(m.requests_per_sec for m in mine)
    for name in servers:
        mine = [m for m in results if m.server == name]
        if not mine:
            continue
        base = medians.get(BASELINE)
        ratio = f"{medians[name] / base:.2f}{TIMES}" if base else "n/a"
        means = [m.mean_request_ms for m in mine if m.mean_request_ms is not None]
        mean = f"{statistics.median(means):.2f}" if means else "n/a"
        lines.append(
            f"| {name} | {medians[name]:,.0f} "
            f"| {min(m.requests_per_sec for m in mine):,.0f}-"
            f"{max(m.requests_per_sec for m in mine):,.0f} | {mean} "
            f"| {sum(m.failed + m.errored + m.timeout for m in mine)} "
            f"| {sum(m.died is not None for m in mine)}/{len(mine)} | {ratio} | {len(mine)} |"
        )
    ratios = [
        f"{BASELINE} / {name} = {medians[BASELINE] / medians[name]:.2f}{TIMES}"
        for name in servers
        if name != BASELINE and BASELINE in medians and medians.get(name)
    ]
    return "\n".join([*lines, "", *([f"- {', '.join(ratios)}"] if ratios else [])])


def throughput(args: argparse.Namespace, servers: list[str], log_dir: Path) -> int:
    duration: int = args.duration
    per_run = duration + WARMUP_SECONDS + 4
    estimate = per_run * len(servers) * args.rounds
    print(
        f"{args.rounds} round(s) x {len(servers)} server(s), {duration}s each (after a "
        f"{WARMUP_SECONDS}s warm-up): about {estimate // 60}m{estimate % 60:02d}s",
        file=sys.stderr,
    )
    env = machine_facts(dist for name in servers for dist in SERVERS[name].distributions)
    results: list[Measurement] = []
    failures: list[dict[str, Any]] = []
    skipped: set[str] = set()
    for round_no in range(1, args.rounds + 1):
        for name in servers:
            if name in skipped:
                continue
            label = f"round {round_no}/{args.rounds} {name:<18}"
            try:
                m = measure(SERVERS[name], round_no, duration, log_dir)
            except StartError as exc:
                # It will not start or speak h2c in this build: no point in more rounds.
                skipped.add(name)
                failures.append({"server": name, "round": round_no, "error": str(exc)})
                print(f"{label} SKIPPED: {exc}", file=sys.stderr)
                continue
            except BenchError as exc:
                failures.append({"server": name, "round": round_no, "error": str(exc)})
                print(f"{label} FAILED: {exc}", file=sys.stderr)
                continue
            results.append(m)
            text = f"{m.requests_per_sec:>10,.0f} req/s  load {m.loadavg_1m:.2f}"
            if m.failed or m.errored or m.timeout:
                text += f"  failed {m.failed}, errored {m.errored}, timeout {m.timeout}"
            if m.died is not None:
                text += f"\n    DIED after the run: {m.died}"
            print(f"{label} {text}", file=sys.stderr)
    ran = [name for name in servers if any(m.server == name for m in results)]
    print()
    print(render_table(results, ran))
    for m in results:
        if m.died is not None:
            print(f"- round {m.round} {m.server}: died after the run ({m.died.splitlines()[0]})")
    if failures:
        print(f"\n{len(failures)} run(s) gave no measurement (see above).")
    if args.json is not None:
        report = {
            "environment": env,
            "settings": {
                "mode": "throughput",
                "duration": duration,
                "warmup": WARMUP_SECONDS,
                "rounds": args.rounds,
                "connections": CONNECTIONS,
                "streams": STREAMS,
                "servers": servers,
            },
            "results": [asdict(m) for m in results],
            "failures": failures,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failures and not results else 0


# --- abrupt-endings mode ----------------------------------------------------------------


def abrupt(args: argparse.Namespace, name: str, log_dir: Path) -> int:
    """Run h2load ``--runs`` times against one server; check each run's end left it
    serving, quiet and with the same worker."""
    duration: int = args.duration
    checks: list[dict[str, Any]] = []
    try:
        with running(SERVERS[name], log_dir) as proc:
            workers = proc.workers()
            print(f"{name}: master {proc.process.pid}, workers {workers}", file=sys.stderr)
            for run in range(1, args.runs + 1):
                problems: list[str] = []
                try:
                    result = run_h2load(
                        h2load_command(proc.port, seconds=duration),
                        duration + WARMUP_SECONDS + H2LOAD_GRACE,
                    )
                except BenchError as exc:
                    result = None
                    problems.append(str(exc))
                if result is not None:
                    if result.failed or result.errored or result.timeout:
                        problems.append(
                            f"requests failed {result.failed}, errored {result.errored}, "
                            f"timed out {result.timeout}"
                        )
                    if result.succeeded == 0 or result.status_4xx_5xx:
                        problems.append(
                            f"{result.succeeded} succeeded, {result.status_4xx_5xx} answered "
                            "with a 4xx or 5xx"
                        )
                gone = _after_run(proc, workers)
                if gone is not None:
                    problems.append(gone)
                logged = proc.log_problems()
                if logged:
                    problems.append(f"the log holds {len(logged)} error line(s): {logged[0]}")
                checks.append(
                    {
                        "run": run,
                        "requests_per_sec": result.requests_per_sec if result else None,
                        "succeeded": result.succeeded if result else None,
                        "workers": proc.workers(),
                        "problems": problems,
                    }
                )
                verdict = "ok" if not problems else "FAILED: " + "; ".join(problems)
                rps = f"{result.requests_per_sec:>9,.0f} req/s" if result else "no result"
                print(f"run {run}/{args.runs} {rps}  {verdict}", file=sys.stderr)
                if gone is not None:
                    break  # nothing left to run against
    except StartError as exc:
        print(f"{name} SKIPPED: {exc}", file=sys.stderr)
        return 2
    passed = len(checks) == args.runs and not any(c["problems"] for c in checks)
    print(
        f"\n{name}: {args.runs} abrupt run(s): "
        + (
            "all served, nothing logged at error level, worker never replaced"
            if passed
            else "FAILED (see above)"
        )
    )
    if args.json is not None:
        report = {
            "environment": machine_facts(SERVERS[name].distributions),
            "settings": {"mode": "abrupt", "server": name, "runs": args.runs, "duration": duration},
            "runs": checks,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if passed else 1


# --- command line ----------------------------------------------------------------------


def _server_names(text: str) -> list[str]:
    return names_arg("server", list(SERVERS))(text)


def _one_server(text: str) -> str:
    names = _server_names(text)
    if len(names) != 1:
        raise argparse.ArgumentTypeError(f"expected one server, got {text!r}")
    return names[0]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/h2.py",
        description="HTTP/2 (h2c) req/s of trioserve and its peers under h2load, one CPU each.",
    )
    parser.add_argument(
        "--duration",
        type=positive_int,
        default=5,
        help=f"Seconds of each h2load run after its {WARMUP_SECONDS}s warm-up (default: 5).",
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=2, help="Runs per server (default: 2)."
    )
    parser.add_argument(
        "--servers",
        type=_server_names,
        default=list(DEFAULT_SERVERS),
        help="Comma-separated servers, run in this order each round (default: "
        + ",".join(DEFAULT_SERVERS)
        + "; those whose module is missing are skipped).",
    )
    parser.add_argument(
        "--abrupt",
        type=_one_server,
        metavar="SERVER",
        help="Instead: run h2load --runs times against one server, each run ending "
        "abruptly, and check it served all, logged no error and kept its worker.",
    )
    parser.add_argument(
        "--runs", type=positive_int, default=5, help="Runs for --abrupt (default: 5)."
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="Write the raw results here.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if shutil.which("h2load") is None:
        print(H2LOAD_MISSING, file=sys.stderr)
        return 2
    if shutil.which("taskset") is None:
        print(
            "taskset not found: it is in util-linux ('apt-get install util-linux')", file=sys.stderr
        )
        return 2
    cpus = os.sched_getaffinity(0)
    if not {int(SERVER_CPU), int(CLIENT_CPU)} <= cpus:
        print(
            f"need CPUs {SERVER_CPU} and {CLIENT_CPU} (server and h2load), this process may "
            f"use {sorted(cpus)}",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="trioserve-h2bench-") as tmp:
        if args.abrupt is not None:
            if not importable_servers([args.abrupt], SERVERS):
                return 2
            return abrupt(args, args.abrupt, Path(tmp))
        servers = importable_servers(args.servers, SERVERS)
        if not servers:
            return 2
        return throughput(args, servers, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
