"""Files through Starlette's FileResponse, with and without http.response.pathsend.

Run from the root of the checkout, with its Python (see bench/README.md)::

    .venv/bin/python bench/pathsend.py [--rounds 3] [--small-count 200]
        [--large-count 5] [--json FILE]

For each mode (``pathsend``: FileResponse sends the path and trioserve writes the file
with os.sendfile; ``body``: ``--no-pathsend``, so the app reads the file and sends it in
http.response.body messages), the script starts
``trioserve bench.pathsend_app:app --workers 0`` on 127.0.0.1 and downloads a 1 MB file
``--small-count`` times and a 100 MB file ``--large-count`` times, one after another
on one keep-alive connection, with a plain socket client that checks every length and
the first download's bytes. It reports MB/s and the server's CPU time per download
(user + system, from /proc/PID/stat): the figure pathsend changes most. Modes alternate
within each round; the table gives the medians. All traffic goes to 127.0.0.1 and every
wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:
    # Run as a script (python bench/X.py): make the "bench" package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import HOST, REPO_ROOT, free_port, machine_facts, positive_int

MB = 1024 * 1024
SIZES = {"1MB": MB, "100MB": 100 * MB}
MODES = ("pathsend", "body")
READY_TIMEOUT = 30.0
IO_TIMEOUT = 60.0  # seconds for any one socket operation
STOP_TIMEOUT = 10.0


class BenchError(Exception):
    """A run that gave no figure; the message says why."""


def make_files(directory: Path) -> None:
    """The 1 MB file, and the 100 MB one made of it (random bytes: nothing sparse)."""
    block = os.urandom(MB)
    (directory / "1MB").write_bytes(block)
    with (directory / "100MB").open("wb") as file:
        for _ in range(100):
            file.write(block)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def start_server(mode: str, files: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "TRIOSERVE_BENCH_FILES": str(files)}
    command = [sys.executable, "-m", "trioserve", "bench.pathsend_app:app"]
    command += ["--workers", "0", "--bind", f"{HOST}:{port}", "--lifespan", "off"]
    command += ["--pathsend" if mode == "pathsend" else "--no-pathsend"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + READY_TIMEOUT
    while "listening on" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise BenchError(f"the server did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    return process, port


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


def download(sock: socket.socket, name: str, buffer: bytearray) -> tuple[int, bytes]:
    """GET /NAME on ``sock``: (the body's length, its first 1 MB)."""
    sock.sendall(f"GET /{name} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(65536)
        if not data:
            raise BenchError("the server closed the connection mid-response")
        head += data
    head, _, rest = head.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise BenchError(f"unexpected response: {head[:200]!r}")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    first = bytearray(rest[:MB])
    got = len(rest)
    view = memoryview(buffer)
    while got < length:
        n = sock.recv_into(view, min(len(buffer), length - got))
        if not n:
            raise BenchError("the server closed the connection mid-body")
        if len(first) < MB:
            first += view[: min(n, MB - len(first))]
        got += n
    return got, bytes(first)


def measure(mode: str, files: Path, counts: dict[str, int], work: Path) -> dict[str, Any]:
    process, port = start_server(mode, files, work / f"server-{mode}.log")
    results: dict[str, Any] = {}
    buffer = bytearray(4 * MB)
    try:
        with socket.create_connection((HOST, port), timeout=IO_TIMEOUT) as sock:
            for name, count in counts.items():
                size = SIZES[name]
                expected = (files / name).read_bytes()[:MB]
                download(sock, name, buffer)  # warm-up
                cpu0, wall0 = cpu_seconds(process.pid), time.perf_counter()
                for i in range(count):
                    length, first = download(sock, name, buffer)
                    if length != size or (i == 0 and first != expected):
                        raise BenchError(f"{mode} {name}: wrong body ({length} bytes)")
                wall = time.perf_counter() - wall0
                cpu = cpu_seconds(process.pid) - cpu0
                results[name] = {
                    "downloads": count,
                    "mb_per_s": size * count / MB / wall,
                    "server_cpu_ms_per_download": cpu * 1000 / count,
                }
    finally:
        stop(process)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/pathsend.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--small-count", type=positive_int, default=200)
    parser.add_argument("--large-count", type=positive_int, default=5)
    parser.add_argument("--json", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    counts = {"1MB": args.small_count, "100MB": args.large_count}
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trioserve-pathsend-") as tmp:
        files = Path(tmp)
        make_files(files)
        for round_ in range(args.rounds):
            for mode in MODES if round_ % 2 == 0 else reversed(MODES):
                print(f"round {round_ + 1}: {mode}", file=sys.stderr)
                try:
                    runs.append({"mode": mode, **measure(mode, files, counts, files)})
                except BenchError as exc:
                    print(f"bench/pathsend.py: {exc}", file=sys.stderr)
                    return 1
    print("| file | mode | MB/s (median) | server CPU ms per download (median) |")
    print("|---|---|---:|---:|")
    for name in counts:
        for mode in MODES:
            mine = [run[name] for run in runs if run["mode"] == mode]
            speed = statistics.median(r["mb_per_s"] for r in mine)
            cpu = statistics.median(r["server_cpu_ms_per_download"] for r in mine)
            print(f"| {name} | {mode} | {speed:,.0f} | {cpu:,.2f} |")
    if args.json:
        facts = machine_facts(("trio", "starlette"))
        args.json.write_text(json.dumps({"machine": facts, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
