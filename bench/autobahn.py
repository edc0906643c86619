"""The Autobahn WebSocket test suite (fuzzingclient) against trioserve's echo examples.

Run from the repository root::

    python bench/autobahn.py [--targets asgi,native] [--cases '*'] [--exclude 12.*,13.*]
        [--wstest 'jython -m autobahntestsuite.wstest'] [--reports DIR] [--server-arg ARG]...

For each target it starts ``trioserve examples.ws_echo:app`` (asgi) or
``trioserve examples.ws_echo:handler --interface websocket`` (native) with
``--workers 0 --bind 127.0.0.1:0`` and the default settings (permessage-deflate on),
reads the port from its ``listening on`` line, runs the suite's fuzzing client against
it and prints, per case group (the number before the first dot), how many cases ended
OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED or FAILED (a case counts by the worse of
its behaviour and its close behaviour). Exit status 1 when a case FAILED.

autobahntestsuite is Python 2 only; it runs under Jython (Debian's ``jython``
package), see docs/performance.md for how it was installed. ``--wstest`` is the
command that starts it. Every process started here is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGETS = {
    "asgi": ["examples.ws_echo:app"],
    "native": ["examples.ws_echo:handler", "--interface", "websocket"],
}
# Worst first: a case counts under the worse of its behaviour and its close behaviour.
VERDICTS = ["FAILED", "UNIMPLEMENTED", "INFORMATIONAL", "NON-STRICT", "OK"]
READY_TIMEOUT = 20.0
SUITE_TIMEOUT = 4 * 3600.0
_LISTENING = re.compile(rb"listening on (?:http|ws)://127\.0\.0\.1:(\d+)")


def start_server(target: str, log: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """trioserve serving ``target`` on 127.0.0.1 (its output in ``log``), and its port."""
    command = [
        *(sys.executable, "-m", "trioserve", *TARGETS[target]),
        *("--bind", "127.0.0.1:0", "--workers", "0"),
        *extra,
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        match = _LISTENING.search(log.read_bytes())
        if match:
            return process, int(match[1])
        time.sleep(0.1)
    stop(process)
    raise SystemExit(f"trioserve {target} did not start:\n{log.read_text(errors='replace')}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def run_suite(
    wstest: list[str], target: str, port: int, cases: list[str], exclude: list[str], out: Path
) -> dict[str, dict[str, object]]:
    """Run the fuzzing client against 127.0.0.1:port; the report's cases for ``target``."""
    spec = {
        "outdir": str(out),
        "servers": [{"agent": target, "url": f"ws://127.0.0.1:{port}"}],
        "cases": cases,
        "exclude-cases": exclude,
        "exclude-agent-cases": {},
    }
    spec_path = out / "spec.json"
    out.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    with (out / "wstest.log").open("wb") as log:
        subprocess.run(
            [*wstest, "-m", "fuzzingclient", "-s", str(spec_path)],
            cwd=out,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=SUITE_TIMEOUT,
            check=True,
        )
    index = json.loads((out / "index.json").read_text())
    return dict(index[target])


def _case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


def summarise(results: dict[str, dict[str, object]]) -> dict[str, Counter[str]]:
    """Per case group, how many cases ended with each verdict."""
    groups: dict[str, Counter[str]] = {}
    for case in sorted(results, key=_case_key):
        result = results[case]
        verdict = min(
            (str(result["behavior"]), str(result["behaviorClose"])),
            key=lambda v: VERDICTS.index(v) if v in VERDICTS else 0,
        )
        groups.setdefault(case.split(".")[0], Counter())[verdict] += 1
    return groups


def render(target: str, groups: dict[str, Counter[str]]) -> str:
    lines = [
        f"{target}:",
        "| group | cases | " + " | ".join(reversed(VERDICTS)) + " |",
        "|---|---:|" + "---:|" * len(VERDICTS),
    ]
    for group, counts in groups.items():
        cells = " | ".join(str(counts.get(v, 0)) for v in reversed(VERDICTS))
        lines.append(f"| {group}.* | {sum(counts.values())} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/autobahn.py", description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="asgi,native")
    parser.add_argument("--cases", default="*", help="comma-separated case patterns")
    parser.add_argument("--exclude", default="", help="comma-separated case patterns")
    parser.add_argument("--wstest", default="jython -m autobahntestsuite.wstest")
    parser.add_argument("--reports", type=Path, help="keep the reports here")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="an argument more for trioserve (repeat), e.g. --server-arg=--ws-ping-interval=0",
    )
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    for target in targets:
        if target not in TARGETS:
            parser.error(f"--targets: unknown target {target!r} (choose from asgi, native)")
    cases = [c for c in args.cases.split(",") if c]
    exclude = [c for c in args.exclude.split(",") if c]
    failed = False
    with tempfile.TemporaryDirectory(prefix="trioserve-autobahn-") as tmp:
        reports = args.reports or Path(tmp)
        reports.mkdir(parents=True, exist_ok=True)
        for target in targets:
            process, port = start_server(
                target, reports / f"trioserve-{target}.log", args.server_arg
            )
            try:
                started = time.monotonic()
                results = run_suite(
                    shlex.split(args.wstest), target, port, cases, exclude, reports / target
                )
            finally:
                stop(process)
            groups = summarise(results)
            failed = failed or any(counts["FAILED"] for counts in groups.values())
            print(render(target, groups))
            print(f"({len(results)} cases in {time.monotonic() - started:.0f}s)\n", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
