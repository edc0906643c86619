"""The Autobahn WebSocket test suite (fuzzingclient) against trioserve's echo examples.

Run from the repository root, after ``sh bench/autobahn_setup.sh DIR``::

    nice -n 19 python bench/autobahn.py [--suite DIR] [--targets asgi,native]
        [--cases '*'] [--exclude 12.*,13.*] [--reports DIR] [--server-arg ARG]...

For each target it starts ``trioserve examples.ws_echo:app`` (asgi) or
``trioserve examples.ws_echo:handler --interface websocket`` (native) with
``--workers 0 --bind 127.0.0.1:0`` and the default settings (permessage-deflate on),
reads the port from its ``listening on`` line, runs the suite's fuzzing client against
it and prints, per case group (the number before the first dot), how many cases ended
OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED or FAILED (and WRONG CODE, UNCLEAN or
FAILED BY CLIENT, the close behaviours' failures, when a case had one; a case counts by
the worse of its behaviour and its close behaviour), then the slowest cases and every
case that did not pass, with the report's reason. A case passes when it is OK,
NON-STRICT or INFORMATIONAL; exit status 1 when one did not.

The peers serve the same ASGI echo, with their defaults, on a port picked just before
they start (their command lines cannot report one they chose): ``uvicorn-websockets``
and ``uvicorn-wsproto`` (``uvicorn --ws websockets|wsproto``) and ``hypercorn``
(``--worker-class asyncio``) and ``hypercorn-trio``; they are only run when named.

autobahntestsuite is Python 2 only. ``bench/autobahn_setup.sh DIR`` installs it into a
CPython 2.7 virtualenv at DIR when a CPython 2.7 is found, or else for Jython into
DIR/site (far slower: about two hours per target for the whole suite, against about
half an hour); ``--suite DIR`` (default ``$AUTOBAHN_SUITE`` or /tmp/autobahn) picks
whichever is there, and ``--wstest`` overrides the command. See docs/performance.md.
Every process started here is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

if not __package__:
    # Run as a script (python bench/X.py): make the "bench" package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import HOST, accepts, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGETS = {
    "asgi": ["examples.ws_echo:app"],
    "native": ["examples.ws_echo:handler", "--interface", "websocket"],
}
# The peers, started on a port picked here: ``{port}`` is replaced.
PEERS = {
    "uvicorn-websockets": ["uvicorn", "--ws", "websockets", "--port", "{port}"],
    "uvicorn-wsproto": ["uvicorn", "--ws", "wsproto", "--port", "{port}"],
    "hypercorn": ["hypercorn", "--worker-class", "asyncio", "--bind", HOST + ":{port}"],
    "hypercorn-trio": ["hypercorn", "--worker-class", "trio", "--bind", HOST + ":{port}"],
}
# Worst first: a case counts under the worse of its behaviour and its close behaviour.
VERDICTS = [
    "FAILED",
    "FAILED BY CLIENT",
    "WRONG CODE",
    "UNCLEAN",
    "UNIMPLEMENTED",
    "INFORMATIONAL",
    "NON-STRICT",
    "OK",
]
# Always shown; the others only when a case had one.
COLUMNS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
PASSED = {"OK", "NON-STRICT", "INFORMATIONAL"}
READY_TIMEOUT = 20.0
SUITE_TIMEOUT = 4 * 3600.0
_LISTENING = re.compile(rb"listening on (?:http|ws)://127\.0\.0\.1:(\d+)")


def start_server(target: str, log: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """The server of ``target`` on 127.0.0.1 (its output in ``log``), and its port."""
    if target in PEERS:
        port = free_port()
        command = [sys.executable, "-m", *(a.format(port=port) for a in PEERS[target])]
        if target.startswith("uvicorn"):
            command += ["--host", HOST]
        command += [*extra, "examples.ws_echo:app"]
    else:
        port = 0
        command = [
            *(sys.executable, "-m", "trioserve", *TARGETS[target]),
            *("--bind", f"{HOST}:0", "--workers", "0"),
            *extra,
        ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        if port:
            if accepts(port):
                return process, port
        else:
            match = _LISTENING.search(log.read_bytes())
            if match:
                return process, int(match[1])
        time.sleep(0.1)
    stop(process)
    raise SystemExit(f"{target} did not start:\n{log.read_text(errors='replace')}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wstest_command(suite: Path, wstest: str | None) -> tuple[list[str], dict[str, str]]:
    """The command that starts the suite's wstest, and the environment it needs."""
    if wstest:
        return shlex.split(wstest), dict(os.environ)
    python = suite / "bin" / "python"
    if python.exists():
        return [str(python), "-m", "autobahntestsuite.wstest"], dict(os.environ)
    if (suite / "site").is_dir():
        return ["jython", "-m", "autobahntestsuite.wstest"], {
            **os.environ,
            "JYTHONPATH": str(suite / "site"),
        }
    raise SystemExit(
        f"no Autobahn test suite in {suite}: run sh bench/autobahn_setup.sh {suite} first "
        "(or give --suite DIR or --wstest COMMAND)"
    )


def run_suite(
    wstest: tuple[list[str], dict[str, str]],
    target: str,
    port: int,
    cases: list[str],
    exclude: list[str],
    out: Path,
) -> dict[str, dict[str, object]]:
    """Run the fuzzing client against 127.0.0.1:port; the report's cases for ``target``."""
    spec = {
        "outdir": str(out),
        "servers": [{"agent": target, "url": f"ws://{HOST}:{port}"}],
        "cases": cases,
        "exclude-cases": exclude,
        "exclude-agent-cases": {},
    }
    spec_path = out / "spec.json"
    out.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    with (out / "wstest.log").open("wb") as log:
        subprocess.run(
            [*wstest[0], "-m", "fuzzingclient", "-s", str(spec_path)],
            cwd=out,
            env=wstest[1],
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=SUITE_TIMEOUT,
            check=True,
        )
    index = json.loads((out / "index.json").read_text())
    return dict(index[target])


def _case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


def verdict(result: dict[str, object]) -> str:
    """The worse of a case's behaviour and its close behaviour."""
    return min(
        (str(result["behavior"]), str(result["behaviorClose"])),
        key=lambda v: VERDICTS.index(v) if v in VERDICTS else 0,
    )


def summarise(results: dict[str, dict[str, object]]) -> dict[str, Counter[str]]:
    """Per case group, how many cases ended with each verdict."""
    groups: dict[str, Counter[str]] = {}
    for case in sorted(results, key=_case_key):
        groups.setdefault(case.split(".")[0], Counter())[verdict(results[case])] += 1
    return groups


def details(results: dict[str, dict[str, object]], out: Path) -> str:
    """The five slowest cases, and what each failed case's report says went wrong."""

    def duration(case: str) -> int:
        value = results[case].get("duration")
        return value if isinstance(value, int) else 0

    slowest = sorted(results, key=duration, reverse=True)[:5]
    lines = ["slowest: " + ", ".join(f"{c} {duration(c) / 1000:.1f}s" for c in slowest)]
    for case in sorted(results, key=_case_key):
        if verdict(results[case]) in PASSED:
            continue
        report = out / str(results[case].get("reportfile", ""))
        try:
            result = json.loads(report.read_text())
            why = f"{result.get('result')} / {result.get('resultClose')}"
        except (OSError, ValueError):
            why = "(no report)"
        lines.append(f"{verdict(results[case])} {case}: {why}")
    return "\n".join(lines)


def render(target: str, groups: dict[str, Counter[str]]) -> str:
    seen = {v for counts in groups.values() for v in counts}
    columns = [v for v in VERDICTS[::-1] if v in COLUMNS or v in seen]
    lines = [
        f"{target}:",
        "| group | cases | " + " | ".join(columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for group, counts in groups.items():
        cells = " | ".join(str(counts.get(v, 0)) for v in columns)
        lines.append(f"| {group}.* | {sum(counts.values())} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/autobahn.py", description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="asgi,native")
    parser.add_argument("--cases", default="*", help="comma-separated case patterns")
    parser.add_argument("--exclude", default="", help="comma-separated case patterns")
    parser.add_argument(
        "--suite",
        type=Path,
        default=Path(os.environ.get("AUTOBAHN_SUITE", "/tmp/autobahn")),
        help="where bench/autobahn_setup.sh installed the suite (default: $AUTOBAHN_SUITE "
        "or /tmp/autobahn)",
    )
    parser.add_argument("--wstest", help="the command that starts wstest (instead of --suite)")
    parser.add_argument("--reports", type=Path, help="keep the reports here")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="an argument more for the server (repeat), e.g. --server-arg=--ws-ping-interval=0",
    )
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    known = [*TARGETS, *PEERS]
    for target in targets:
        if target not in known:
            parser.error(f"--targets: unknown target {target!r} (choose from {', '.join(known)})")
    cases = [c for c in args.cases.split(",") if c]
    exclude = [c for c in args.exclude.split(",") if c]
    wstest = wstest_command(args.suite, args.wstest)
    print(f"wstest: {' '.join(wstest[0])}", flush=True)
    failed = False
    with tempfile.TemporaryDirectory(prefix="trioserve-autobahn-") as tmp:
        reports = args.reports or Path(tmp)
        reports.mkdir(parents=True, exist_ok=True)
        for target in targets:
            process, port = start_server(target, reports / f"server-{target}.log", args.server_arg)
            try:
                started = time.monotonic()
                results = run_suite(wstest, target, port, cases, exclude, reports / target)
            finally:
                stop(process)
            groups = summarise(results)
            failed = failed or any(set(c) - PASSED for c in groups.values())
            print(render(target, groups))
            print(f"({len(results)} cases in {time.monotonic() - started:.0f}s)")
            print(details(results, reports / target) + "\n", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
