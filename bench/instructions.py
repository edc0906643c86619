"""Instructions per HTTP/1.1 request of trioserve, counted by valgrind's callgrind.

Run from the root of the checkout to measure, with that checkout's Python (see
bench/README.md)::

    .venv/bin/python bench/instructions.py [--requests 3072] [--connections 64]
        [--http h11-compiled|h11|httptools] [--close]
        [--tree DIR [--python PATH] | --metrics] [--repeat 1] [--json FILE]

A wrk figure on a shared machine swings with whatever else runs on it; an instruction
count does not. For each tree the server runs twice under ``valgrind --tool=callgrind``,
which counts every instruction of the whole run, start-up included: once stopped with
SIGTERM as soon as it is ready, once after serving exactly N keep-alive requests from
a client in this script. Instructions per request = (Ir(N) - Ir(0)) / N. With
``--tree``, a second checkout (its own interpreter, its own directory as the working
directory) is measured the same way and the ratio of the two is printed. All traffic
goes to 127.0.0.1 and every wait is bounded. With ``--metrics``, this checkout is
measured without and with ``--metrics-bind`` (the baseline is the run without), which
gives what Prometheus metrics cost per request. With ``--close``, every request comes
on a connection of its own with ``Connection: close`` (accept, first read, response,
close: the whole life of a connection per request); ``--connections`` is then how many
such connections are open at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if not __package__:
    # Run as a script (python bench/X.py): make the "bench" package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import HOST, free_port, machine_facts, positive_int

APP = "bench.app:app"
EXPECTED_BODY = b"Hello, world!"
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
CLOSE_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"

READY_TIMEOUT = 300.0  # seconds for the server to start under valgrind (~50x slower)
RESPONSE_TIMEOUT = 60.0  # seconds for one response, or for one connection's EOF
LOAD_TIMEOUT = 900.0  # seconds for all N requests together
STOP_TIMEOUT = 120.0  # seconds between SIGTERM and SIGKILL (callgrind writes its file)

# Fixed, so that dict and set iteration order is the same in every run.
SERVER_ENV = {"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}


class BenchError(Exception):
    """A run that did not give a count; the message says why."""


@dataclass(frozen=True)
class Tree:
    """A trioserve checkout and the interpreter that runs it."""

    label: str
    directory: Path
    python: Path
    # Added to the server's command line (--metrics: the --metrics-bind run).
    server_args: tuple[str, ...] = ()


@dataclass
class Count:
    """One run under callgrind."""

    tree: str
    requests: int
    instructions: int
    seconds: float
    h11_mypyc_loaded: bool | None
    command: list[str]


# --- the client ----------------------------------------------------------------------


async def _one_response(reader: asyncio.StreamReader) -> None:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RESPONSE_TIMEOUT)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    length = None
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if length is None:
        raise BenchError(f"response without content-length: {head!r}")
    body = await asyncio.wait_for(reader.readexactly(length), RESPONSE_TIMEOUT)
    if not status_line.startswith("HTTP/1.1 200 ") or body != EXPECTED_BODY:
        raise BenchError(f"expected 200 {EXPECTED_BODY!r}, got {status_line!r} {body!r}")


async def _connection(port: int, requests: int) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), RESPONSE_TIMEOUT)
    try:
        for _ in range(requests):
            writer.write(REQUEST)
            await _one_response(reader)
        # Close our half and wait for the server to close its own, so the server
        # has finished with the connection before it is told to stop.
        writer.write_eof()
        rest = await asyncio.wait_for(reader.read(), RESPONSE_TIMEOUT)
        if rest:
            raise BenchError(f"unexpected bytes after the last response: {rest[:80]!r}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await asyncio.wait_for(writer.wait_closed(), RESPONSE_TIMEOUT)


async def _closing_connections(port: int, requests: int) -> None:
    """``requests`` connections one after the other, each with one request that asks
    the server to close (Connection: close), its answer checked, then the server's EOF."""
    for _ in range(requests):
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port), RESPONSE_TIMEOUT
        )
        try:
            writer.write(CLOSE_REQUEST)
            await _one_response(reader)
            rest = await asyncio.wait_for(reader.read(), RESPONSE_TIMEOUT)
            if rest:
                raise BenchError(f"unexpected bytes after the response: {rest[:80]!r}")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await asyncio.wait_for(writer.wait_closed(), RESPONSE_TIMEOUT)


async def _load(port: int, connections: int, per_connection: int, close: bool) -> None:
    lane = _closing_connections if close else _connection
    await asyncio.wait_for(
        asyncio.gather(*(lane(port, per_connection) for _ in range(connections))),
        LOAD_TIMEOUT,
    )


def send_requests(port: int, connections: int, per_connection: int, close: bool = False) -> None:
    """Exactly ``connections * per_connection`` GETs, each answer checked: keep-alive, or
    with ``close`` each on a connection of its own (``connections`` of them at a time)."""
    try:
        asyncio.run(_load(port, connections, per_connection, close))
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise BenchError(f"the client failed: {exc!r}") from exc
    except TimeoutError as exc:
        raise BenchError("the client timed out waiting for the server") from exc


# --- the server under callgrind ------------------------------------------------------


def read_total(path: Path) -> int:
    """The total instruction count (Ir) from a callgrind output file."""
    text = path.read_text(errors="replace")
    for key in ("totals", "summary"):
        match = re.search(rf"^{key}:\s+(\d+)", text, re.MULTILINE)
        if match is not None:
            return int(match.group(1))
    raise BenchError(f"no 'totals:' or 'summary:' line in {path}")


def _loads_h11_mypyc(pid: int) -> bool | None:
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None
    return f"{os.sep}h11_mypyc{os.sep}" in maps


def count(
    tree: Tree,
    http: str,
    connections: int,
    per_connection: int,
    work: Path,
    run_id: str,
    close: bool = False,
) -> Count:
    """Start the server under callgrind, send the requests, stop it, read the count."""
    port = free_port()
    out = work / f"callgrind.{run_id}.out"
    log_path = work / f"server.{run_id}.log"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        f"--log-file={work / f'valgrind.{run_id}.log'}",
        str(tree.python),
        *("-m", "trioserve", APP, "--workers", "0", "--http", http),
        *("--bind", f"{HOST}:{port}"),
        *tree.server_args,
    ]
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=tree.directory,
            env={**os.environ, **SERVER_ENV},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = started + READY_TIMEOUT
            while "listening on" not in log_path.read_text(errors="replace"):
                if process.poll() is not None:
                    raise BenchError(
                        f"the server exited with status {process.returncode} before it was "
                        f"ready:\n{_tail(log_path)}"
                    )
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"the server was not ready within {READY_TIMEOUT:g}s:\n{_tail(log_path)}"
                    )
                time.sleep(0.2)
            if per_connection:
                send_requests(port, connections, per_connection, close)
            compiled = _loads_h11_mypyc(process.pid)
            process.send_signal(signal.SIGTERM)
            try:
                status = process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired as exc:
                raise BenchError(
                    f"the server did not exit within {STOP_TIMEOUT:g}s of SIGTERM"
                ) from exc
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
    if status != 0:
        raise BenchError(f"the server exited with status {status}:\n{_tail(log_path)}")
    if http == "h11-compiled" and compiled is False:
        raise BenchError(f"{tree.label}: --http h11-compiled did not load h11_mypyc")
    if http == "h11" and compiled:
        raise BenchError(f"{tree.label}: --http h11 loaded h11_mypyc all the same")
    return Count(
        tree=tree.label,
        requests=connections * per_connection,
        instructions=read_total(out),
        seconds=time.monotonic() - started,
        h11_mypyc_loaded=compiled,
        command=command,
    )


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- command line --------------------------------------------------------------------


def _checkout(text: str) -> Path:
    # A checkout, or a directory with only bench/ whose interpreter has trioserve installed
    # (the compiled build of bench/mypyc_setup.sh: .bench-mypyc/run).
    directory = Path(text).resolve()
    if not (directory / "bench" / "app.py").is_file():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a trioserve checkout (no bench/app.py in it)"
        )
    return directory


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/instructions.py",
        description=(
            "Instructions per keep-alive HTTP/1.1 request, counted with valgrind's callgrind: "
            "repeatable on a busy machine, unlike requests/sec."
        ),
    )
    parser.add_argument(
        "--requests",
        type=positive_int,
        default=3072,
        help="Requests in the measured run, rounded down to a multiple of --connections "
        "(default: 3072).",
    )
    parser.add_argument(
        "--connections",
        type=positive_int,
        default=64,
        help="Keep-alive connections the requests are spread over; with --close, the "
        "connections open at once (default: 64).",
    )
    parser.add_argument(
        "--close",
        action="store_true",
        help="A connection per request (Connection: close): measures accept, the first "
        "read, the response and the close, instead of a keep-alive request.",
    )
    parser.add_argument(
        "--http",
        choices=("h11-compiled", "h11", "httptools"),
        default="h11-compiled",
        help="The server's --http (default: h11-compiled).",
    )
    parser.add_argument(
        "--tree",
        type=_checkout,
        metavar="DIR",
        help="Another checkout to compare with (the baseline of the ratio); it runs with "
        "DIR as its working directory.",
    )
    parser.add_argument(
        "--python",
        type=Path,
        metavar="PATH",
        help="The interpreter for --tree (default: DIR/.venv/bin/python).",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="Compare this checkout without and with --metrics-bind (instead of --tree).",
    )
    parser.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        help="Measure each tree this many times, to see how repeatable the count is (default: 1).",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="Write the raw counts here.")
    return parser


def _trees(args: argparse.Namespace) -> list[Tree]:
    this = Tree("this", Path.cwd().resolve(), Path(sys.executable))
    try:
        _checkout(str(this.directory))
    except argparse.ArgumentTypeError as exc:
        raise BenchError(f"run it from the root of a trioserve checkout: {exc}") from exc
    if args.metrics:
        if args.tree is not None:
            raise BenchError("--metrics compares this checkout with itself: drop --tree")
        with_metrics = ("--metrics-bind", f"{HOST}:0")
        metrics = Tree("metrics", this.directory, this.python, with_metrics)
        return [Tree("plain", this.directory, this.python), metrics]
    if args.tree is None:
        if args.python is not None:
            raise BenchError("--python needs --tree: the checkout that interpreter runs")
        return [this]
    python = args.python if args.python is not None else args.tree / ".venv" / "bin" / "python"
    if not python.exists():
        raise BenchError(f"--python: no interpreter at {str(python)!r}")
    return [Tree("baseline", args.tree, python), this]


def _describe(tree: Tree) -> str:
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=tree.directory,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return f"{tree.directory} at {git.stdout.strip() or '?'} with {tree.python}"


def _per_request(idle: Count, loaded: Count) -> float:
    return (loaded.instructions - idle.instructions) / loaded.requests


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind not found: install it with 'apt-get install valgrind'", file=sys.stderr)
        return 2
    try:
        trees = _trees(args)
    except BenchError as exc:
        print(f"bench/instructions.py: error: {exc}", file=sys.stderr)
        return 2
    connections: int = min(args.connections, args.requests)
    per_connection = args.requests // connections
    requests = connections * per_connection
    described = {tree.label: _describe(tree) for tree in trees}
    for label, description in described.items():
        print(f"{label}: {description}", file=sys.stderr)
    shape = "connections at once x requests each, a connection per request (close)"
    if not args.close:
        shape = "connections x requests each (keep-alive)"
    print(
        f"--http {args.http}, {requests} requests = {connections} x {per_connection} "
        f"({shape}), {args.repeat} repeat(s)",
        file=sys.stderr,
    )

    counts: list[Count] = []
    figures: dict[str, list[float]] = {tree.label: [] for tree in trees}
    with tempfile.TemporaryDirectory(prefix="trioserve-instructions-") as tmp:
        try:
            # Trees interleave, so a repeat of one never runs right after itself.
            for repeat in range(1, args.repeat + 1):
                for tree in trees:
                    pair = []
                    for n in (0, per_connection):
                        run_id = f"{tree.label}-{repeat}-{n * connections}"
                        c = count(tree, args.http, connections, n, Path(tmp), run_id, args.close)
                        counts.append(c)
                        pair.append(c)
                        print(
                            f"  {tree.label:<8} repeat {repeat}  N={c.requests:<6} "
                            f"Ir {c.instructions:>15,}  ({c.seconds:.0f} s)",
                            file=sys.stderr,
                        )
                    figures[tree.label].append(_per_request(*pair))
        except BenchError as exc:
            print(f"bench/instructions.py: error: {exc}", file=sys.stderr)
            return 1

    mode = ", a connection per request" if args.close else ""
    print(f"\ninstructions per request (callgrind Ir; --http {args.http}{mode}, N={requests}):")
    for tree in trees:
        values = figures[tree.label]
        text = ", ".join(f"{v:,.0f}" for v in values)
        if len(values) > 1:
            spread = (max(values) - min(values)) / min(values)
            text += f"  (spread {spread:.2%})"
        print(f"- {tree.label}: {text}  [{tree.directory}]")
    if len(trees) == 2:
        base, this = (sum(figures[t.label]) / len(figures[t.label]) for t in trees)
        print(f"- this / baseline = {this / base:.3f}")
    moved = [t.label for t in trees if _describe(t) != described[t.label]]
    if moved:
        print(
            f"\nwarning: {', '.join(moved)} changed commit during the run, so its figures may "
            "mix two builds; run it again."
        )
    if args.json is not None:
        report: dict[str, Any] = {
            "environment": machine_facts(("trio", "h11", "h11-mypyc")),
            "trees": described,
            "settings": {
                "http": args.http,
                "connections": connections,
                "per_connection": per_connection,
                "close": args.close,
                "repeat": args.repeat,
                "server_env": SERVER_ENV,
            },
            "counts": [asdict(c) for c in counts],
            "instructions_per_request": figures,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
