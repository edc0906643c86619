"""A gunicorn user's gunicorn.conf.py under the real ``trioserve`` command: first try."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from tests.process.test_cli import (
    READY,
    ROOT,
    TRIOSERVE,
    Server,
    assert_clean_log,
    environment,
    run_cli,
    serving,
)
from trioserve._docs import HOOKS_EXAMPLE

# What a gunicorn user has: gunicorn's names, its hook signatures (one of them async),
# and the file's own code (a helper function and constants), which gunicorn ignores.
GUNICORN_CONF = """\
import multiprocessing
import os

BASE_DIR = os.path.dirname(os.path.abspath(__file__))
LOG_DIR = BASE_DIR


def workers_for(cpus):
    return min(cpus, 1)


bind = "127.0.0.1:0"
pythonpath = BASE_DIR
workers = workers_for(multiprocessing.cpu_count())
worker_connections = 100
timeout = 30
graceful_timeout = 10
keepalive = 2
max_requests = 1000
max_requests_jitter = 50
accesslog = os.path.join(LOG_DIR, "access.log")
errorlog = "-"
loglevel = "info"
access_log_format = '%(h)s "%(r)s" %(s)s'
proc_name = "gunicorn-compat"
pidfile = os.path.join(BASE_DIR, "app.pid")
preload_app = False


def on_starting(server):
    server.log.info("hook on_starting: master %d", server.pid)


async def post_fork(server, worker):
    server.log.info("hook post_fork: worker %d", worker.pid)


def when_ready(server):
    server.log.info("hook when_ready: %d worker(s)", server.num_workers)


def worker_exit(server, worker):
    worker.log.info("hook worker_exit: worker %d", worker.pid)


def on_exit(server):
    server.log.info("hook on_exit")


def pre_request(worker, req):
    worker.log.info("hook pre_request: %s %s %s", req.method, req.path, req.query)


def post_request(worker, req, environ, resp):
    worker.log.info(
        "hook post_request: %s %s -> %s [%s]",
        environ["REQUEST_METHOD"],
        environ["PATH_INFO"],
        resp.status_code,
        resp.status,
    )
"""

WSGI_APP = """\
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from wsgi"]
"""

LOG_LINE = re.compile(
    r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[(?P<pid>\d+)\] \[(?P<level>[A-Z]+)\] "
    r"trioserve: (?P<message>.*)$"
)


def logged(lines: list[str], message: str) -> re.Match[str]:
    """The error-log line whose message is ``message``, parsed."""
    for line in lines:
        match = LOG_LINE.match(line)
        if match is not None and match["message"] == message:
            return match
    raise AssertionError(f"no log line {message!r} in {lines}")


def write_gunicorn_project(directory: Path) -> Path:
    """GUNICORN_CONF and the WSGI app it serves (app:app) in ``directory``."""
    (directory / "app.py").write_text(WSGI_APP, encoding="utf-8")
    conf = directory / "gunicorn.conf.py"
    conf.write_text(GUNICORN_CONF, encoding="utf-8")
    return conf


async def test_gunicorn_conf_starts_on_the_first_try(tmp_path: Path) -> None:
    """A gunicorn.conf.py with gunicorn's names, sync and async gunicorn-signature hooks, a
    helper and constants starts, serves, stops, and its server.log lines are in the log."""
    conf = write_gunicorn_project(tmp_path)
    async with serving("-c", str(conf), "app:app") as server:
        await server.wait_for_line("hook when_ready: 1 worker(s)")
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(server.url + "/things?x=y")
        assert (response.status_code, response.text) == (200, "hello from wsgi")
        assert (tmp_path / "app.pid").is_file()  # pidfile
        assert await server.stop(signal.SIGTERM) == 0
    lines = server.lines
    logged(lines, "[worker 0] hook pre_request: GET /things x=y")
    logged(lines, "[worker 0] hook post_request: GET /things -> 200 [200]")
    master = logged(lines, "hook on_starting: master " + logged(lines, "hook on_exit")["pid"])
    assert master["level"] == "INFO"
    assert logged(lines, "hook when_ready: 1 worker(s)")["pid"] == master["pid"]
    worker_pid = next(
        match["pid"]
        for match in map(LOG_LINE.match, lines)
        if match is not None and match["message"].startswith("[worker 0] hook post_fork")
    )
    assert worker_pid != master["pid"]
    logged(lines, f"[worker 0] hook post_fork: worker {worker_pid}")
    assert logged(lines, f"[worker 0] hook worker_exit: worker {worker_pid}")["pid"] == worker_pid
    warning = logged(
        lines, f"{conf}: names that are not settings are ignored: BASE_DIR, LOG_DIR, workers_for"
    )
    assert warning["level"] == "WARNING"
    assert_clean_log(lines)
    access = (tmp_path / "access.log").read_text(encoding="utf-8")
    assert access == '127.0.0.1 "GET /things?x=y HTTP/1.1" 200\n'  # accesslog, its format
    assert not (tmp_path / "app.pid").exists()


async def test_worker_class_flag_is_refused_without_taking_its_value_for_the_app(
    tmp_path: Path,
) -> None:
    """-k X APP exits 2 with one line saying trioserve has one worker kind; X is not
    taken for the app."""
    status, _, err = await run_cli(
        "-k", "uvicorn.workers.UvicornWorker", "examples.hello:app", "-b", "127.0.0.1:0"
    )
    assert (status, err) == (
        2,
        "trioserve: error: -k/--worker-class: trioserve has one worker kind (trio); "
        "remove worker_class\n",
    )


async def test_check_config_reports_every_problem_of_the_file_at_once(tmp_path: Path) -> None:
    """--check-config on a file with several problems names all of them in one run."""
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "worker_class = 'gevent'\n"
        "workers = 'four'\n"
        "raw_env = ['A=1']\n"
        "def on_starting(server, worker):\n    pass\n",
        encoding="utf-8",
    )
    status, _, err = await run_cli("--check-config", "-c", str(conf), "examples.hello:app")
    assert status == 2
    assert err.splitlines() == [
        f"trioserve: error: worker_class (in {conf}): trioserve has one worker kind (trio); "
        "remove worker_class",
        f"trioserve: error: raw_env (in {conf}): trioserve does not set environment variables: "
        "set them before starting it (or with os.environ in the config file); remove raw_env",
        f"trioserve: error: workers (in {conf}): expected an integer >= 0, got 'four'",
        f"trioserve: error: on_starting (in {conf}): on_starting(server, worker) cannot be "
        "called as on_starting(server) nor as on_starting(server, *, exc=None): missing a "
        "required argument: 'worker'",
    ]


async def test_hooks_md_example_logs_its_lines(tmp_path: Path) -> None:
    """The example config file of docs/hooks.md, run as it is, logs the lines it writes."""
    conf = tmp_path / "hooks.py"
    conf.write_text(HOOKS_EXAMPLE, encoding="utf-8")
    args = ("-c", str(conf), "-b", "127.0.0.1:0", "-w", "1", "examples.hello:app")
    async with serving(*args) as server:
        # post_worker_init runs before the worker is ready, so before the ready line.
        assert await server.stop(signal.SIGTERM) == 0
    matches = [LOG_LINE.match(line) for line in server.lines]
    parsed = [match for match in matches if match is not None]
    master = next(match for match in parsed if match["message"].startswith("master "))
    assert master["message"] == f"master {master['pid']} starting"
    worker = logged(server.lines, "[worker 0] worker 0 serving")
    logged(server.lines, f"[worker 0] worker 0 started (pid {worker['pid']})")
    assert_clean_log(server.lines)


async def test_trioserve_conf_py_is_read_from_the_working_directory(tmp_path: Path) -> None:
    """trioserve run where a trioserve.conf.py is reads it, as gunicorn reads
    ./gunicorn.conf.py; its hooks reach the worker processes too."""
    (tmp_path / "app.py").write_text(
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    await send({'type': 'http.response.start', 'status': 204, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b''})\n",
        encoding="utf-8",
    )
    (tmp_path / "trioserve.conf.py").write_text(
        "workers = 1\n"
        "def post_fork(server, worker):\n"
        "    server.log.info('post_fork from trioserve.conf.py')\n",
        encoding="utf-8",
    )
    process = await trio.lowlevel.open_process(
        [str(TRIOSERVE), "-b", "127.0.0.1:0", "app:app"],
        cwd=tmp_path,
        env=environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = Server(process)
    try:
        line = await server.wait_for_line("listening on ")
        match = READY.search(line)
        assert match is not None, line
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(match["url"] + "/")
        assert response.status_code == 204
        assert await server.stop(signal.SIGTERM) == 0
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(5):
                await process.wait()
            if process.stderr is not None:
                await process.stderr.aclose()
    logged(server.lines, "[worker 0] post_fork from trioserve.conf.py")
    assert_clean_log(server.lines)


@asynccontextmanager
async def gunicorn_serving(conf: Path) -> AsyncIterator[tuple[Server, str]]:
    """Real gunicorn (the test extra's) serving ``conf`` on app:app from the file's
    directory, once its ready: the server and its URL. Always reaped."""
    pytest.importorskip("gunicorn")
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-c", str(conf)]
    process = await trio.lowlevel.open_process(
        [*command, "app:app"],
        cwd=ROOT,
        env=environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = Server(process)
    try:
        line = await server.wait_for_line("Listening at: ")
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url is not None, line
        await server.wait_for_line("hook when_ready: 1 worker(s)")
        yield server, url[0]
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(5):
                await process.wait()
            if process.stderr is not None:
                await process.stderr.aclose()


def hook_messages(lines: list[str]) -> list[str]:
    """The messages of the hooks' lines (from "hook " on), in order, pids left out."""
    found = (re.search(r"[:\]] (hook .*)$", line) for line in lines)
    return [re.sub(r"\d+$", "", match[1]) for match in found if match is not None]


async def test_gunicorn_itself_runs_the_same_file_alike(tmp_path: Path) -> None:
    """The file of test_gunicorn_conf_starts_on_the_first_try is a real gunicorn file:
    gunicorn serves it too, logs the same server.log lines (except the async post_fork,
    which gunicorn never awaits, and resp.status, which is the status line there) and
    writes the same access log line."""
    conf = write_gunicorn_project(tmp_path)
    async with gunicorn_serving(conf) as (server, url):
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(url + "/things?x=y")
        assert (response.status_code, response.text) == (200, "hello from wsgi")
        assert await server.stop(signal.SIGTERM) == 0
    gunicorn_lines = hook_messages(server.lines)
    assert gunicorn_lines == [
        "hook on_starting: master ",
        "hook when_ready: 1 worker(s)",
        "hook pre_request: GET /things x=y",
        "hook post_request: GET /things -> 200 [200 OK]",
        "hook worker_exit: worker ",
        "hook on_exit",
    ]
    assert any("coroutine 'post_fork' was never awaited" in line for line in server.lines)
    access = (tmp_path / "access.log").read_text(encoding="utf-8")
    assert access == '127.0.0.1 "GET /things?x=y HTTP/1.1" 200\n'

    # The same file under trioserve: the same lines, post_fork's (awaited) besides, and
    # resp.status the int code (gunicorn's resp.status_code), as documented.
    (tmp_path / "access.log").unlink()
    async with serving("-c", str(conf), "app:app") as trioserve:
        await trioserve.wait_for_line("hook when_ready: 1 worker(s)")
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(trioserve.url + "/things?x=y")
        assert (response.status_code, response.text) == (200, "hello from wsgi")
        assert await trioserve.stop(signal.SIGTERM) == 0
    trioserve_lines = [line for line in hook_messages(trioserve.lines) if "post_fork" not in line]
    differs_on_purpose = {
        "hook post_request: GET /things -> 200 [200 OK]": (
            "hook post_request: GET /things -> 200 [200]"
        )
    }
    assert trioserve_lines == [differs_on_purpose.get(line, line) for line in gunicorn_lines]
    assert (tmp_path / "access.log").read_text(encoding="utf-8") == access


async def test_sighup_warns_again_and_logs_a_failed_reload_one_problem_a_line(
    tmp_path: Path,
) -> None:
    """SIGHUP re-reads the file: its names that are not settings are warned about again;
    a file that no longer loads is logged one problem per line, and the old workers keep
    serving."""
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("workers = 1\nBASE_DIR = '.'\ndef helper():\n    pass\n", encoding="utf-8")
    warning = f"{conf}: names that are not settings are ignored: BASE_DIR, helper"
    async with serving("-c", str(conf), "-b", "127.0.0.1:0", "examples.hello:app") as server:
        assert [line for line in server.lines if warning in line] != []
        server.send_signal(signal.SIGHUP)
        await server.wait_for_line("reloaded: 1 new workers ready")
        assert len([line for line in server.lines if warning in line]) == 2
        conf.write_text("workers = 'four'\nworker_class = 'gevent'\n", encoding="utf-8")
        server.send_signal(signal.SIGHUP)
        first = await server.wait_for_line("SIGHUP: the configuration could not be reloaded")
        second = await server.wait_for_line("SIGHUP: the configuration could not be reloaded")
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(server.url + "/")
        assert response.status_code == 200
        assert await server.stop(signal.SIGTERM) == 0
    prefix = "trioserve: SIGHUP: the configuration could not be reloaded: "
    assert [line[line.index("trioserve: ") :] for line in (first, second)] == [
        f"{prefix}worker_class (in {conf}): trioserve has one worker kind (trio); "
        "remove worker_class",
        f"{prefix}workers (in {conf}): expected an integer >= 0, got 'four'",
    ]
    assert ("[ERROR]" in first, "[ERROR]" in second) == (True, True)
