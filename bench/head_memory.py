"""Memory one trioserve worker holds for connections sending incomplete request heads.

Run from the repository root, with trioserve installed in the interpreter's environment::

    python bench/head_memory.py [--connections 300] [--head-bytes N] [--seconds 20]
        [-- EXTRA CLI ARGS]

Starts the real CLI (``examples.hello:app``, one worker, --header-timeout 120 so no
head times out meanwhile), serves one request so imports and first-use caches are
paid for, reads the worker's RSS (``VmRSS`` from /proc/PID/status), then opens N
connections that each send the first ``--head-bytes`` of a head of 98 fields of 8 KiB
(every field within the field-size limit, about 800 KB in all) and never its end. It
sends them for ``--seconds`` while sampling the worker's RSS, then counts the
connections the server answered (a head over --limit-request-head gets 431 while it
arrives) and prints the RSS before, its peak, and the answers.

Everything listens on and connects to 127.0.0.1; every wait is bounded, and the
server is stopped by its pid (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAD = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(
    b"X-%02d: %s\r\n" % (i, b"v" * 8184) for i in range(98)
)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def worker_pid(master: int) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise RuntimeError("no worker process")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--head-bytes", type=int, default=len(HEAD))
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to send")
    parser.add_argument("extra", nargs="*", help="more trioserve arguments")
    args = parser.parse_args()
    command = [sys.executable, "-m", "trioserve", "examples.hello:app", "-b", "127.0.0.1:0"]
    command += ["-w", "1", "--header-timeout", "120", *args.extra]
    server = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        port = 0
        deadline = time.monotonic() + 30
        while not port and time.monotonic() < deadline:
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", server.stderr.readline())
            port = int(found.group(1)) if found else 0
        if not port:
            raise RuntimeError("the server did not start")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as warm:
            warm.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            while warm.recv(65536):
                pass
        worker = worker_pid(server.pid)
        time.sleep(1)
        before = rss_kib(worker)
        head = HEAD[: args.head_bytes]
        clients = []
        unsent: dict[socket.socket, int] = {}
        for _ in range(args.connections):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            client.setblocking(False)
            clients.append(client)
            unsent[client] = 0
        # Send every head whole (or until the server answers or closes), sampling the RSS.
        peak = before
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            if unsent:
                _, writable, _ = select.select([], list(unsent), [], 0.5)
                for client in writable:
                    try:
                        unsent[client] += client.send(head[unsent[client] :])
                    except (BlockingIOError, ConnectionError):
                        pass
                    else:
                        if unsent[client] < len(head):
                            continue
                    del unsent[client]
            else:
                time.sleep(0.5)
            peak = max(peak, rss_kib(worker))
        answers: collections.Counter[bytes] = collections.Counter()
        for client in clients:
            with contextlib.suppress(BlockingIOError, ConnectionError):
                answer = client.recv(100)
                answers[answer[9:12] or b"closed"] += 1
            client.close()
        print(
            f"{args.connections} connections, {len(head)} bytes of head each"
            f" ({len(unsent)} not sent whole):"
            f" worker RSS {before / 1024:.1f} MiB before, {peak / 1024:.1f} MiB peak;"
            f" answered: {dict(answers) or 'none'}"
        )
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
