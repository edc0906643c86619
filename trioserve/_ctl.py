"""``trioserve ctl ACTION --pid FILE``: control a running master through its pid file.

The pid file's lock says whether the master lives (a file left by a dead process is
not a running server). Exit statuses follow init scripts: ``status`` exits 0 when the
server runs and 3 when it does not; ``stop`` when nothing runs is not a failure.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from ._certs import RELOAD_SIGNAL
from ._daemon import holder
from ._errors import TrioserveError

EXIT_NOT_RUNNING = 3
EXIT_STATUS_UNKNOWN = 4

ACTIONS: dict[str, tuple[signal.Signals | None, str]] = {
    "stop": (signal.SIGTERM, "graceful stop (TERM), then wait until the server has exited"),
    "quit": (signal.SIGQUIT, "fast stop (QUIT), then wait until the server has exited"),
    "reload": (signal.SIGHUP, "re-read the configuration and replace the workers (HUP)"),
    "reopen-logs": (signal.SIGUSR1, "reopen the log files, after logrotate (USR1)"),
    "reload-certs": (
        RELOAD_SIGNAL,
        "load the TLS certificate and key again for new connections, without replacing "
        "the workers (URG)",
    ),
    "add-worker": (signal.SIGTTIN, "one worker more (TTIN)"),
    "remove-worker": (signal.SIGTTOU, "one worker fewer (TTOU)"),
    "status": (None, "say whether the server runs: exit 0 if it does, 3 if not"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"trioserve: error: ctl: {message} (see 'trioserve ctl --help')", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="trioserve ctl",
        description="Control a running trioserve master through its pid file.",
        epilog="Actions: " + "; ".join(f"{name}: {text}" for name, (_, text) in ACTIONS.items()),
    )
    parser.add_argument("action", choices=list(ACTIONS), metavar="ACTION")
    parser.add_argument("-p", "--pid", required=True, metavar="FILE", help="The pid file.")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="How long stop and quit wait for the server to exit (default: 60).",
    )
    return parser


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return False  # no /proc (not Linux): kill(0) said it is there


def main(argv: Sequence[str]) -> int:
    """Run ``trioserve ctl``; returns the exit status."""
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    action: str = args.action
    try:
        pid = holder(args.pid)
    except TrioserveError as exc:
        print(f"trioserve: error: {exc}", file=sys.stderr)
        # As init scripts: status 4 means "unknown", any other action failed.
        return EXIT_STATUS_UNKNOWN if action == "status" else 1
    signum, _ = ACTIONS[action]
    if pid is None:
        print(f"trioserve: not running (no live master holds {args.pid!r})")
        if action == "status":
            return EXIT_NOT_RUNNING
        if action in ("stop", "quit"):
            return 0
        return 1
    if pid < 0:
        print(f"trioserve: error: {args.pid!r} is locked but holds no pid", file=sys.stderr)
        return 1
    if signum is None:
        print(f"trioserve: running as pid {pid}")
        return 0
    try:
        os.kill(pid, signum)
        if action in ("stop", "quit"):
            os.kill(pid, signal.SIGCONT)  # a stopped (SIGSTOP) master must run to exit
    except ProcessLookupError:
        print(f"trioserve: not running (pid {pid} is gone)")
        return 0 if action in ("stop", "quit") else 1
    except PermissionError:
        print(f"trioserve: error: not allowed to signal pid {pid}", file=sys.stderr)
        return 1
    if action not in ("stop", "quit"):
        print(f"trioserve: sent {signal.Signals(signum).name} to pid {pid}")
        return 0
    deadline = time.monotonic() + args.timeout
    # The lock goes a moment before the process does (the master releases its pid file,
    # then the interpreter winds down): wait for both.
    while holder(args.pid) == pid or not _gone(pid):
        if time.monotonic() > deadline:
            print(
                f"trioserve: error: pid {pid} still runs after {args.timeout:g}s",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.05)
    print(f"trioserve: stopped (pid {pid})")
    return 0
