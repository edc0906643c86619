"""The same framework apps, served by trioserve and by a peer server, must look the same.

Our own tests encode what we expect; this one encodes what frameworks and clients expect,
by asking another server. Each framework app of tests/frameworks/apps/ is served twice,
by the real ``trioserve`` CLI and by the real CLI of a peer:

- uvicorn for the ASGI apps written for asyncio or anyio (Starlette, FastAPI, Django's
  ASGI handler);
- gunicorn (``-k gthread``) for the WSGI apps (Flask, Django): uvicorn's ``--interface
  wsgi`` is deprecated and not good enough to be the reference (no
  ``wsgi.input_terminated``, so a chunked upload reaches Werkzeug as 0 bytes there too;
  ``SERVER_PORT`` an int);
- hypercorn ``-k trio`` for Quart-Trio.

The same requests go to both (raw sockets through an h11 client for exact bytes, the
``websockets`` client for WebSocket), and what a client and the app can observe is
compared: status, informational responses, headers less those in ``UNCOMPARED_HEADERS``,
body, whether the connection can be reused, WebSocket frames and close codes, whether
the app saw the client leave, exit codes. A difference is either a bug (the test fails)
or an entry of ``KNOWN`` below, with the reason trioserve differs on purpose; an entry
that no longer differs fails too, so the table stays true.

One server process per framework and side serves all of that framework's cases, and
each case runs on both sides at once, so that waits (a background task, an app noticing
that a client left) overlap.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import attrs
import h11
import pytest
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.sync.client import connect

from tests.frameworks.apps import STARTUP_ERROR
from tests.process.test_cli import READY, ROOT, TRIOSERVE, environment

BIN = Path(sys.executable).parent
APPS = "tests.frameworks.apps"
TIMEOUT = 15.0
# How long the app gets to notice that a client left (issue 12 asks for 1 s; slack for CI).
NOTICE = 3.0
HOST = "example.test"

# Headers that differ between any two servers, or two requests a second apart, and say
# nothing about the server's handling: the time, who answered, and the clock time the app
# computes an expiry from (Quart's static files).
UNCOMPARED_HEADERS = frozenset({"date", "server", "expires"})
# Headers that repeat what HTTP/1.1 says without them: gunicorn sends
# "Connection: keep-alive" on every keep-alive response, trioserve and uvicorn do not.
REDUNDANT_HEADERS = frozenset({("connection", "keep-alive")})


# -- servers ------------------------------------------------------------------------------


class Process:
    """A server started from its real CLI; a thread collects its stderr lines."""

    def __init__(self, name: str, argv: Sequence[str], ready: re.Pattern[str], **env: str) -> None:
        self.name = name
        self.marks = Path(tempfile.mkdtemp(prefix=f"diff-{name}-"))
        self.lines: list[str] = []
        self.port = 0
        self._ready = ready
        self._changed = threading.Condition()
        self._eof = False
        self.process = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=environment(DIFF_MARKS=str(self.marks), PYTHONUNBUFFERED="1", **env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own process group: kill() ends its workers too, not only the master.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_line(self, needle: str, start: int = 0, timeout: float = TIMEOUT) -> str | None:
        """The first stderr line from index ``start`` on containing ``needle``, or None if
        none came within ``timeout`` seconds (or the process ended)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    if needle in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    return None
                self._changed.wait(left)

    def wait_ready_or_exit(self) -> int | None:
        """Wait for the ready line (then return None and set ``port``) or for the process
        to end (then return its exit status)."""
        deadline = time.monotonic() + TIMEOUT
        with self._changed:
            while True:
                for line in self.lines:
                    if match := self._ready.search(line):
                        self.port = int(match["port"])
                        return None
                if self._eof:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: neither ready nor ended: {self.lines}")
                self._changed.wait(left)
        return self.process.wait(timeout=TIMEOUT)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` and wait for the exit status; kill after the timeout."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        status: int | None
        try:
            status = self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            status = None
        self.kill()
        return -signal.SIGKILL if status is None else status

    def kill(self) -> None:
        """Kill the server's whole process group (workers left behind by a master that
        was killed would keep the app running) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=TIMEOUT)
        self._reader.join(timeout=TIMEOUT)
        shutil.rmtree(self.marks, ignore_errors=True)


TRIOSERVE_READY = READY
UVICORN_READY = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(?P<port>\d+)")
GUNICORN_READY = re.compile(r"Listening at: http://127\.0\.0\.1:(?P<port>\d+)")
HYPERCORN_READY = re.compile(r"Running on http://127\.0\.0\.1:(?P<port>\d+)")


def trioserve(target: str, *flags: str) -> Process:
    return Process("trioserve", [str(TRIOSERVE), target, "-b", "127.0.0.1:0", *flags], READY)


def uvicorn(target: str, *flags: str) -> Process:
    # h11 whatever else is installed: with httptools present, uvicorn's default ("auto")
    # would pick it, and the KNOWN differences are those of uvicorn on h11.
    argv = [str(BIN / "uvicorn"), target, "--host", "127.0.0.1", "--port", "0", "--http", "h11"]
    argv += flags
    return Process("uvicorn", argv, UVICORN_READY)


def gunicorn(target: str, *flags: str, **env: str) -> Process:
    argv = [str(BIN / "gunicorn"), target, "-b", "127.0.0.1:0", "--no-control-socket"]
    # gthread: keep-alive and threads, as trioserve serves WSGI (the sync worker closes
    # every connection after one response).
    argv += ["-k", "gthread", "--threads", "4", *flags]
    return Process("gunicorn", argv, GUNICORN_READY, **env)


def hypercorn(target: str, *flags: str) -> Process:
    argv = [str(BIN / "hypercorn"), "-k", "trio", "-b", "127.0.0.1:0", *flags, target]
    return Process("hypercorn", argv, HYPERCORN_READY)


@attrs.frozen
class Pair:
    """How to serve one framework app with trioserve and with its peer."""

    needs: tuple[str, ...]  # the framework and the peer server, as modules
    ours: Callable[[], Process]
    peer: Callable[[], Process]


DJANGO_WSGI = f"{APPS}.diff_django:wsgi_app"
DJANGO_ASGI = f"{APPS}.diff_django:asgi_app"

PAIRS = {
    "starlette": Pair(
        ("starlette", "uvicorn"),
        lambda: trioserve(f"{APPS}.diff_starlette:app"),
        lambda: uvicorn(f"{APPS}.diff_starlette:app"),
    ),
    # The app mounted under /prefix (--root-path on both sides).
    "starlette-root-path": Pair(
        ("starlette", "uvicorn"),
        lambda: trioserve(f"{APPS}.diff_starlette:app", "--root-path", "/prefix"),
        lambda: uvicorn(f"{APPS}.diff_starlette:app", "--root-path", "/prefix"),
    ),
    "fastapi": Pair(
        ("fastapi", "uvicorn"),
        lambda: trioserve(f"{APPS}.diff_fastapi:app"),
        lambda: uvicorn(f"{APPS}.diff_fastapi:app"),
    ),
    "flask": Pair(
        ("flask", "gunicorn"),
        lambda: trioserve(f"{APPS}.diff_flask:app"),
        lambda: gunicorn(f"{APPS}.diff_flask:app"),
    ),
    # gunicorn takes the prefix from $SCRIPT_NAME (it has no flag for it).
    "flask-root-path": Pair(
        ("flask", "gunicorn"),
        lambda: trioserve(f"{APPS}.diff_flask:app", "--root-path", "/prefix"),
        lambda: gunicorn(f"{APPS}.diff_flask:app", SCRIPT_NAME="/prefix"),
    ),
    "django-wsgi": Pair(
        ("django", "gunicorn"), lambda: trioserve(DJANGO_WSGI), lambda: gunicorn(DJANGO_WSGI)
    ),
    "django-asgi": Pair(
        ("django", "uvicorn"),
        lambda: trioserve(DJANGO_ASGI, "--app-loop", "asyncio"),
        lambda: uvicorn(DJANGO_ASGI),
    ),
    # Issue 12, bug 5: the preloaded app skipped the asyncio wrapper (500 for everything).
    "django-asgi-preload": Pair(
        ("django", "uvicorn"),
        lambda: trioserve(DJANGO_ASGI, "--app-loop", "asyncio", "--preload"),
        lambda: uvicorn(DJANGO_ASGI),
    ),
    "quart-trio": Pair(
        ("quart_trio", "hypercorn"),
        lambda: trioserve(f"{APPS}.diff_quart_trio:app"),
        lambda: hypercorn(f"{APPS}.diff_quart_trio:app"),
    ),
}


@attrs.define
class Sides:
    ours: Process
    peer: Process

    def kill(self) -> None:
        self.ours.kill()
        self.peer.kill()


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def needs_pair(framework: str) -> pytest.MarkDecorator:
    """Skip unless the framework and its peer server are installed (both come with the
    test extra, ``pip install '.[test]'``; a checkout without one of them cannot compare)."""
    missing = [module for module in PAIRS[framework].needs if not installed(module)]
    return pytest.mark.skipif(
        bool(missing),
        reason=f"optional dependency not installed: {', '.join(missing)} "
        "(the framework or the peer server; pip install '.[test]')",
    )


@attrs.define
class Servers:
    """The servers of one framework at a time, started when its first case runs and
    killed when a case of another framework comes (the cases come grouped by framework).

    Not a module-scoped parametrized fixture: pytest would start a pair per case, as each
    case is a different parameter set.
    """

    framework: str = ""
    sides: Sides | None = None

    def get(self, framework: str) -> Sides:
        if framework != self.framework:
            self.close()
            pair = PAIRS[framework]
            ours, peer = pair.ours(), pair.peer()
            self.framework, self.sides = framework, Sides(ours, peer)
            for process in (ours, peer):
                status = process.wait_ready_or_exit()
                assert status is None, f"{process.name} exited {status}: {process.lines}"
        assert self.sides is not None
        return self.sides

    def close(self) -> None:
        if self.sides is not None:
            self.sides.kill()
        self.framework, self.sides = "", None


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """The framework servers of this module; whatever still runs is killed at the end."""
    servers = Servers()
    try:
        yield servers
    finally:
        servers.close()


# -- observations -------------------------------------------------------------------------


@attrs.frozen
class Seen:
    """What a client (and, through its marks and lines, the app) observed of one case."""

    status: int | None = None
    informational: tuple[int, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    # The body ended as its framing said (False: the connection dropped mid-body).
    complete: bool = True
    # Anything else a case records: keep-alive reuse, what the app saw, close codes.
    facts: tuple[tuple[str, object], ...] = ()

    def differences(self, other: Seen) -> dict[str, tuple[object, object]]:
        mine, theirs = attrs.asdict(self, recurse=False), attrs.asdict(other, recurse=False)
        out: dict[str, tuple[object, object]] = {}
        for field in mine:
            if field == "facts":
                continue
            if mine[field] != theirs[field]:
                out[field] = (mine[field], theirs[field])
        my_facts, their_facts = dict(self.facts), dict(other.facts)
        for key in my_facts.keys() | their_facts.keys():
            if my_facts.get(key) != their_facts.get(key):
                out[key] = (my_facts.get(key), their_facts.get(key))
        return out


def normalise_headers(headers: Sequence[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    """Lower-case names, ``UNCOMPARED_HEADERS`` left out, sorted by name (values of one name
    keep their order: the order of Set-Cookie lines is the app's)."""
    kept = [
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, value in headers
        if name.decode("latin-1").lower() not in UNCOMPARED_HEADERS
    ]
    kept = [item for item in kept if item not in REDUNDANT_HEADERS]
    return tuple(sorted(kept, key=lambda item: item[0]))


class Client:
    """One HTTP/1.1 connection: requests written through h11 (or as raw bytes), responses
    parsed by h11, every socket operation bounded."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.conn = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.sock.close()

    def send_head(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        raw_target: bytes = b"",
    ) -> None:
        """Send the request line and headers; ``raw_target`` replaces the target on the
        wire (bytes h11 would refuse to write) while h11 tracks the exchange."""
        request = h11.Request(method=method, target=target, headers=[("Host", HOST), *headers])
        data = self.conn.send(request)
        assert data is not None
        if raw_target:
            _, rest = data.split(b"\r\n", 1)
            data = f"{method} ".encode() + raw_target + b" HTTP/1.1\r\n" + rest
        self.sock.sendall(data)

    def send_raw(self, data: bytes, method: str = "GET") -> None:
        """Send ``data`` as it is (a request h11 would refuse to write); h11 is told of a
        bodiless ``method`` request, so that it reads the answer."""
        self.conn.send(h11.Request(method=method, target="/", headers=[("Host", HOST)]))
        self.conn.send(h11.EndOfMessage())
        self.sock.sendall(data)

    def send_body(self, *chunks: bytes) -> None:
        out = b"".join(self.conn.send(h11.Data(data=chunk)) or b"" for chunk in chunks)
        self.sock.sendall(out + (self.conn.send(h11.EndOfMessage()) or b""))

    def next_event(self, timeout: float = TIMEOUT) -> object:
        self.sock.settimeout(timeout)
        try:
            while True:
                event = self.conn.next_event()
                if event is not h11.NEED_DATA:
                    return event
                self.conn.receive_data(self.sock.recv(65536))
        finally:
            self.sock.settimeout(TIMEOUT)

    def response(self, first: object = None) -> Seen:
        """Read one response to its end (``first``: an event already read)."""
        status: int | None = None
        informational: list[int] = []
        headers: tuple[tuple[str, str], ...] = ()
        body = b""
        complete = False
        encoding = ""
        try:
            event = first if first is not None else self.next_event()
            while True:
                if isinstance(event, h11.InformationalResponse):
                    informational.append(event.status_code)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = normalise_headers(event.headers)
                    encoding = dict(headers).get("content-encoding", "")
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    complete = True
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    break
                event = self.next_event()
        except (h11.RemoteProtocolError, ConnectionError):
            pass
        if encoding == "gzip" and complete:
            # A gzip stream carries a timestamp: compare what it holds.
            body = b"gunzipped: " + gzip.decompress(body)
        return Seen(status, tuple(informational), headers, body, complete)

    def reusable(self) -> str:
        """After a response: 'closed' if the server ended the connection, else the status
        of a second request (GET /) on the same connection."""
        if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
            return "closed"
        self.conn.start_next_cycle()
        try:
            self.send_head("GET", "/")
            self.send_body()
            second = self.response()
        except OSError:
            return "closed"
        return "closed" if second.status is None else str(second.status)


def request(
    port: int,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    raw_target: bytes = b"",
    reuse: bool = False,
) -> Seen:
    """One request on a new connection; with ``reuse``, whether the connection serves a
    second request is recorded too."""
    client = Client(port)
    try:
        if body and not any(name.lower() == "transfer-encoding" for name, _ in headers):
            headers = [*headers, ("Content-Length", str(len(body)))]
        client.send_head(method, target, headers, raw_target)
        client.send_body(body) if body else client.send_body()
        seen = client.response()
        if reuse:
            seen = attrs.evolve(seen, facts=(("reused", client.reusable()),))
        return seen
    finally:
        client.close()


# -- cases --------------------------------------------------------------------------------

Case = Callable[[Process], Seen]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(function: Case) -> Case:
        CASES[name] = function
        return function

    return register


def get(path: str, *headers: tuple[str, str], reuse: bool = False) -> Case:
    return lambda side: request(side.port, "GET", path, headers, reuse=reuse)


UPLOAD = bytes(range(256)) * 280  # 70 KB, as in issue 12

CASES.update(
    {
        "get": get("/", reuse=True),
        "head": lambda side: request(side.port, "HEAD", "/", reuse=True),
        "not-found": get("/no/such/page", reuse=True),
        "error-500": get("/error", reuse=True),
        "stream": get("/stream", reuse=True),
        "head-stream": lambda side: request(side.port, "HEAD", "/stream", reuse=True),
        "fail-mid-stream": get("/fail-mid-stream"),
        "cookies": get("/cookies"),
        "redirect": get("/redirect"),
        "trailing-slash": get("/slash?q=1"),
        "big-response-header": get("/big-header"),
        "big-request-header": get("/", ("X-Big", "b" * 12000), reuse=True),
        "file": get("/file"),
        "file-head": lambda side: request(side.port, "HEAD", "/file"),
        "file-range": get("/file", ("Range", "bytes=10-29")),
        "file-bad-range": get("/file", ("Range", "bytes=9000-9001")),
        "file-gzip": get("/file", ("Accept-Encoding", "gzip")),
        "echo-length": lambda side: request(
            side.port, "POST", "/echo", [("Content-Type", "application/octet-stream")], UPLOAD
        ),
        "echo-chunked": lambda side: chunked_upload(side.port),
        "echo-expect-100": lambda side: expect_continue(side.port),
        "scope-percent": get("/scope/caf%C3%A9/a%2Fb%20c?x=a+b&y=%2F&z=%E2%9C%93&x=2"),
        "scope-prefixed": get("/prefix/scope/x%2Fy?q=1"),
        "scope-unprefixed": get("/scope/x"),
        "redirect-prefixed": get("/prefix/redirect"),
        "trailing-slash-prefixed": get("/prefix/slash?q=1"),
        "raw-uri": get("/raw-uri/a%2Fb?x=%2F"),
        "scope-raw-utf8": lambda side: request(
            side.port, "GET", "/scope/x", raw_target="/scope/café?q=ü".encode()
        ),
        "scope-dot-segments": get("/scope/a/../b/./c"),
        "scope-forwarded": get(
            "/scope/fwd", ("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https")
        ),
        "http10": lambda side: http10(side.port),
    }
)


def raw(data: bytes) -> Case:
    """A request sent byte for byte; the answer parsed."""

    def run(side: Process) -> Seen:
        client = Client(side.port)
        try:
            client.send_raw(data)
            return client.response()
        finally:
            client.close()

    return run


CLOSE = b"Connection: close\r\n\r\n"
CASES.update(
    {
        # RFC 9112 3.2.2: a server must accept the absolute form; the path is its path.
        "absolute-form": raw(
            b"GET http://example.test/scope/abs?q=1 HTTP/1.1\r\nHost: example.test\r\n" + CLOSE
        ),
        "long-url": raw(b"GET /scope/" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n" + CLOSE),
        "many-headers": raw(
            b"GET / HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: v\r\n" % n for n in range(120))
            + CLOSE
        ),
        # Request smuggling's classic: both framings at once.
        "te-and-cl": raw(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n" + CLOSE + b"5\r\nhello\r\n0\r\n\r\n"
        ),
        # RFC 9112 3.2: an HTTP/1.1 request without Host is a 400.
        "no-host": raw(b"GET / HTTP/1.1\r\n" + CLOSE),
    }
)


def multi_range(side: Process) -> Seen:
    """Two ranges: a multipart/byteranges body; its random boundary is replaced."""
    seen = request(side.port, "GET", "/file", [("Range", "bytes=0-4,-5")])
    match = re.search(r"boundary=([^;, ]+)", dict(seen.headers).get("content-type", ""))
    if match is None:
        return seen
    boundary = match[1]
    headers = tuple((n, v.replace(boundary, "BOUNDARY")) for n, v in seen.headers)
    return attrs.evolve(
        seen, headers=headers, body=seen.body.replace(boundary.encode(), b"BOUNDARY")
    )


CASES["file-multi-range"] = multi_range


def chunked_upload(port: int) -> Seen:
    """A POST whose body comes in chunks (no Content-Length), as curl -T- sends it."""
    client = Client(port)
    try:
        headers = [("Transfer-Encoding", "chunked"), ("Content-Type", "application/octet-stream")]
        client.send_head("POST", "/echo", headers)
        client.send_body(*(UPLOAD[i : i + 8192] for i in range(0, len(UPLOAD), 8192)))
        return client.response()
    finally:
        client.close()


def expect_continue(port: int) -> Seen:
    """Expect: 100-continue: the body is sent once the server says 100 (or after 5 s
    without an answer; curl waits 1 s); records which happened."""
    client = Client(port)
    try:
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(len(UPLOAD))),
            ("Expect", "100-continue"),
        ]
        client.send_head("POST", "/echo", headers)
        try:
            first: object = client.next_event(timeout=5)
        except TimeoutError:
            first = None
        client.send_body(UPLOAD)
        return client.response(first)
    finally:
        client.close()


def http10(port: int) -> Seen:
    """An HTTP/1.0 request without Host or keep-alive: the answer, then does the server
    close the connection (the end of a body without Content-Length)?"""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /stream HTTP/1.0\r\n\r\n")
        data = b""
        closed = True
        sock.settimeout(NOTICE)
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            closed = False
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [line.split(": ", 1) for line in lines]
    return Seen(
        int(status_line.split()[1]),
        headers=normalise_headers([(n.encode(), v.encode("latin-1")) for n, v in headers]),
        body=body,
        facts=(("version", status_line.split()[0]), ("server closed", closed)),
    )


@case("disconnect-mid-stream")
def disconnect_mid_stream(side: Process) -> Seen:
    """The client reads the first event of an endless stream and leaves: does the app's
    generator end within NOTICE seconds?"""
    start = len(side.lines)
    client = Client(side.port)
    try:
        client.send_head("GET", "/endless")
        client.send_body()
        event = client.next_event()
        assert isinstance(event, h11.Response), event
        status = event.status_code
        while not isinstance(client.next_event(), h11.Data):
            pass
    finally:
        client.close()
    started = side.wait_line("app: endless started", start) is not None
    closed = side.wait_line("app: endless closed", start, timeout=NOTICE) is not None
    return Seen(status, facts=(("app started", started), ("app saw the client leave", closed)))


@case("upload-aborted")
def upload_aborted(side: Process) -> Seen:
    """The client sends 1 KB of a 70 KB body and leaves: the app's body read ends with the
    framework's ClientDisconnect (http.disconnect) within NOTICE seconds."""
    start = len(side.lines)
    client = Client(side.port)
    try:
        client.send_head("POST", "/upload", [("Content-Length", str(len(UPLOAD)))])
        client.sock.sendall(UPLOAD[:1024])
    finally:
        client.close()
    line = side.wait_line("app: upload", start, timeout=NOTICE)
    return Seen(facts=(("app saw", line.split("app: ", 1)[1] if line else None),))


@case("background")
def background(side: Process) -> Seen:
    """A response with a background task: the client gets it at once, and a second request
    on the same connection is answered before the 1 s task is done (peers do not hold a
    keep-alive connection for the app's task)."""
    start = len(side.lines)
    client = Client(side.port)
    try:
        client.send_head("GET", "/background")
        client.send_body()
        seen = client.response()
        reused = client.reusable()
        done_before_second = (side.marks / "background-done").exists()
    finally:
        client.close()
    ran = side.wait_line("app: background done", start) is not None
    facts = (
        ("reused", reused),
        ("task done before the second answer", done_before_second),
        ("task ran", ran),
    )
    return attrs.evolve(seen, facts=facts)


def conditional(side: Process, path: str) -> Seen:
    """GET, then GET again with the validators it gave: 304 with no body, and which
    headers the 304 repeats."""
    first = request(side.port, "GET", path)
    validators = dict(first.headers)
    headers = []
    if "etag" in validators:
        headers.append(("If-None-Match", validators["etag"]))
    if "last-modified" in validators:
        headers.append(("If-Modified-Since", validators["last-modified"]))
    second = request(side.port, "GET", path, headers, reuse=True)
    only_date = request(side.port, "GET", path, headers[1:] if len(headers) == 2 else [])
    return attrs.evolve(
        second,
        facts=(
            *second.facts,
            ("validators", tuple(sorted(name for name, _ in headers))),
            ("if-modified-since alone", only_date.status),
        ),
    )


CASES["not-modified"] = lambda side: conditional(side, "/static/hello.txt")
CASES["not-modified-file"] = lambda side: conditional(side, "/file")


def websocket(
    side: Process, path: str, *, subprotocols: Sequence[str] = (), echo: bool = True
) -> Seen:
    """Open a WebSocket; with ``echo`` send a text and a bytes message, read the answers
    and close with 1000, else read until the server closes. Records the frames, the close
    code and reason received, what the app saw and, if refused, the handshake response."""
    start = len(side.lines)
    received: list[object] = []
    facts: list[tuple[str, object]] = []
    try:
        with connect(
            f"ws://127.0.0.1:{side.port}{path}",
            subprotocols=list(subprotocols) or None,  # type: ignore[arg-type]
            open_timeout=TIMEOUT,
            close_timeout=TIMEOUT,
        ) as ws:
            facts.append(("subprotocol", ws.subprotocol))
            try:
                if echo:
                    for message in ("hello", b"\x00bytes\xff"):
                        ws.send(message)
                        received.append(ws.recv(timeout=TIMEOUT))
                    ws.close(1000, "client done")
                else:
                    while True:
                        received.append(ws.recv(timeout=TIMEOUT))
            except ConnectionClosed:
                pass
            facts.append(("close", (ws.close_code, ws.close_reason)))
    except InvalidStatus as exc:
        response = exc.response
        headers = normalise_headers(
            [(k.encode(), v.encode("latin-1")) for k, v in response.headers.raw_items()]
        )
        return Seen(response.status_code, headers=headers, body=bytes(response.body or b""))
    facts.append(("frames", tuple(received)))
    if echo:
        line = side.wait_line("app: ws disconnect", start, timeout=NOTICE)
        facts.append(("app saw", line.split("app: ", 1)[1] if line else None))
    return Seen(101, facts=tuple(facts))


CASES["websocket-echo"] = lambda side: websocket(side, "/ws")
CASES["websocket-subprotocol"] = lambda side: websocket(
    side, "/ws-subprotocol", subprotocols=["chat.v1", "chat.v2"], echo=False
)
REJECTS = 8


@case("websocket-reject")
def websocket_reject(side: Process) -> Seen:
    """The app closes before accepting: a 403, each of REJECTS times (a race once lost
    the answer in some of them)."""
    answers: list[Seen | str] = []
    for _ in range(REJECTS):
        try:
            answers.append(websocket(side, "/ws-reject", echo=False))
        except InvalidMessage as exc:
            answers.append(f"no HTTP answer: {exc}")
    first = next((answer for answer in answers if isinstance(answer, Seen)), Seen())
    failures = tuple(answer for answer in answers if not isinstance(answer, Seen))
    return attrs.evolve(first, facts=(("handshakes without an answer", len(failures)),))


@case("sigterm")
def sigterm(side: Process) -> Seen:
    """Last: SIGTERM stops the server and it exits 0; shutdown ran if the app has one."""
    start = len(side.lines)
    status = side.stop(signal.SIGTERM)
    shutdown = any("app: shutdown" in line for line in side.lines[start:])
    return Seen(facts=(("exit", status), ("app shutdown ran", shutdown)))


# Which cases each framework's app supports (in order; "sigterm" stops the servers).
ASGI_HTTP = [
    "get", "head", "not-found", "error-500", "stream", "head-stream", "fail-mid-stream",
    "cookies", "redirect", "trailing-slash", "big-response-header", "big-request-header",
    "file", "file-head", "file-range", "file-multi-range", "file-bad-range", "file-gzip",
    "echo-length", "echo-chunked", "echo-expect-100",
    "scope-percent", "scope-raw-utf8", "scope-dot-segments", "scope-forwarded", "http10",
    "absolute-form", "long-url", "many-headers", "te-and-cl", "no-host",
    "disconnect-mid-stream", "background", "not-modified", "not-modified-file",
]  # fmt: skip
DJANGO_HTTP = [name for name in ASGI_HTTP if name != "background"]
ROOT_PATH = ["scope-prefixed", "scope-unprefixed", "redirect-prefixed", "trailing-slash-prefixed"]
WEBSOCKET = ["websocket-echo", "websocket-subprotocol", "websocket-reject"]
PLAN = {
    "starlette": [*ASGI_HTTP, "upload-aborted", *WEBSOCKET, "sigterm"],
    "starlette-root-path": [*ROOT_PATH, "sigterm"],
    "fastapi": [*ASGI_HTTP, "upload-aborted", *WEBSOCKET, "sigterm"],
    "flask": [*ASGI_HTTP, "raw-uri", "sigterm"],
    "flask-root-path": [*ROOT_PATH, "sigterm"],
    # Django has no background tasks and no WebSocket of its own.
    "django-wsgi": [*DJANGO_HTTP, "sigterm"],
    "django-asgi": [*DJANGO_HTTP, "sigterm"],
    "django-asgi-preload": ["get", "stream", "echo-length", "sigterm"],
    "quart-trio": [*ASGI_HTTP, *WEBSOCKET, "sigterm"],
}


# -- known differences --------------------------------------------------------------------


@attrs.frozen
class Known:
    """A difference trioserve keeps on purpose, a peer's bug, or a trioserve bug found by
    this check and not fixed yet (the reason says which, and how to see it)."""

    field: str  # a Seen field or a fact's name
    reason: str
    # A race: some runs do not show it, so its absence does not make the entry stale.
    sometimes: bool = False


LIMIT = (
    "on purpose: trioserve has gunicorn's default limits: a request line over 4094 bytes "
    "is a 414, a header field over 8190 bytes or more than 100 fields a 431 "
    "(--limit-request-line, --limit-request-field-size, --limit-request-fields); uvicorn "
    "and hypercorn only bound the whole head"
)
SMUGGLING = (
    "on purpose: a request with both Content-Length and Transfer-Encoding is refused with "
    "400 (RFC 9112 6.3 allows it; it is how request smuggling starts), as gunicorn does; "
    "uvicorn and hypercorn (h11) serve it by the Transfer-Encoding"
)
ABSOLUTE_FORM = (
    "peer bug: uvicorn and hypercorn put an absolute-form target (GET http://host/x) in "
    "scope path as it is, so the app routes 'http://host/x' (uvicorn: 404); RFC 9112 3.2.2 "
    "says a server must accept it, and trioserve and gunicorn take its path"
)
NO_HOST = (
    "peer bug: gunicorn serves an HTTP/1.1 request without Host; RFC 9112 3.2 says 400, "
    "which trioserve, uvicorn and hypercorn answer"
)
ERROR_PAGE = (
    "on purpose: a request the server refuses gets the server's own error page; the "
    "status and Connection: close agree, the text and its framing do not"
)
PROXY = (
    "on purpose: trioserve applies X-Forwarded-* only with --proxy-headers (off by "
    "default, as in hypercorn); uvicorn applies X-Forwarded-For/-Proto from 127.0.0.1 by "
    "default, gunicorn X-Forwarded-Proto"
)
SIGNAL_EXIT = (
    "on purpose: after a graceful stop on SIGTERM trioserve exits 0, as gunicorn and "
    "hypercorn do; uvicorn re-raises the signal once stopped (status -15)"
)
HTTP10 = (
    "on purpose: h11 answers an HTTP/1.0 request with an HTTP/1.1 status line (RFC 9110 "
    "2.5: a server sends its own version), as uvicorn and hypercorn do; gunicorn says 1.0"
)
HYPERCORN_HTTP10 = (
    "peer bug: hypercorn 0.18 (-k trio) says Connection: close to an HTTP/1.0 request and "
    "leaves the connection open, so a body delimited by the close never ends"
)
HYPERCORN_LIFESPAN = (
    "peer bug: hypercorn 0.18 (-k trio) serves a Quart-Trio app whose before_serving "
    "raised (lifespan.startup.failed); trioserve exits 3, as uvicorn does for Starlette"
)
EMPTY_403 = (
    "acceptable: uvicorn puts a Content-Type on the empty body of a refused WebSocket "
    "handshake; trioserve sends none"
)
HEAD_CHUNKED = (
    "acceptable: to HEAD of a streamed response trioserve sends the Transfer-Encoding a "
    "GET would get (RFC 9110 9.3.2), as uvicorn and hypercorn do; gunicorn leaves it out"
)
EMPTY_BODY = (
    "acceptable: a body complete in the app's first message (here empty) gets "
    "Content-Length from trioserve; uvicorn and gunicorn send it chunked"
)
SCRIPT_NAME = (
    "on purpose: trioserve's --root-path, like uvicorn's, is a prefix the proxy stripped; "
    "gunicorn's $SCRIPT_NAME is a prefix the proxy keeps in the path (and a path outside "
    "it is an error)"
)
WSGI_CLOSE = (
    "on purpose: work a WSGI app does in its iterable's close() (after the response is "
    "sent) no longer holds up the connection: trioserve answers the client's next request "
    "meanwhile, as it and uvicorn do for an ASGI BackgroundTask; gunicorn's gthread worker "
    "reads the next request only once close() returned"
)


def known(reason: str, *fields: str) -> tuple[Known, ...]:
    return tuple(Known(field, reason) for field in fields)


PAGE = ("headers", "body")
ANSWER = ("status", "headers", "body")
UVICORN_SIDE = ["starlette", "fastapi", "django-asgi"]
GUNICORN_SIDE = ["flask", "django-wsgi"]
UVICORN_SIDE_ALL = [*UVICORN_SIDE, "starlette-root-path", "django-asgi-preload"]

KNOWN: dict[tuple[str, str], tuple[Known, ...]] = {
    **{(f, "big-request-header"): known(LIMIT, *ANSWER, "reused") for f in UVICORN_SIDE},
    ("quart-trio", "big-request-header"): known(LIMIT, *ANSWER, "reused"),
    **{(f, "big-request-header"): known(ERROR_PAGE, *PAGE) for f in GUNICORN_SIDE},
    **{
        (f, name): known(LIMIT, *ANSWER)
        for f in [*UVICORN_SIDE, "quart-trio"]
        for name in ["long-url", "many-headers"]
    },
    **{(f, "te-and-cl"): known(SMUGGLING, *ANSWER) for f in [*UVICORN_SIDE, "quart-trio"]},
    **{
        (f, name): known(ERROR_PAGE, *PAGE)
        for f in GUNICORN_SIDE
        for name in ["long-url", "many-headers", "te-and-cl"]
    },
    **{(f, "no-host"): known(ERROR_PAGE, *PAGE) for f in [*UVICORN_SIDE, "quart-trio"]},
    **{(f, "no-host"): known(NO_HOST, *ANSWER) for f in GUNICORN_SIDE},
    **{(f, "absolute-form"): known(ABSOLUTE_FORM, *ANSWER) for f in UVICORN_SIDE},
    ("quart-trio", "absolute-form"): known(ABSOLUTE_FORM, *PAGE),
    **{
        (f, "scope-raw-utf8"): known(ERROR_PAGE, *PAGE) for f in PLAN if "scope-raw-utf8" in PLAN[f]
    },
    **{(f, "scope-forwarded"): known(PROXY, *PAGE) for f in [*UVICORN_SIDE, *GUNICORN_SIDE]},
    **{(f, "sigterm"): known(SIGNAL_EXIT, "exit") for f in UVICORN_SIDE_ALL},
    **{(f, "http10"): known(HTTP10, "version") for f in GUNICORN_SIDE},
    ("quart-trio", "http10"): known(HYPERCORN_HTTP10, "server closed"),
    ("quart-trio", "failed-lifespan"): known(HYPERCORN_LIFESPAN, "served", "exit"),
    **{(f, "websocket-reject"): known(EMPTY_403, "headers") for f in ["starlette", "fastapi"]},
    **{(f, "head-stream"): known(HEAD_CHUNKED, "headers") for f in GUNICORN_SIDE},
    **{(f, "trailing-slash"): known(EMPTY_BODY, "headers") for f in ["django-wsgi", "django-asgi"]},
    **{
        ("flask-root-path", name): known(SCRIPT_NAME, *ANSWER)
        for name in [
            "scope-prefixed",
            "scope-unprefixed",
            "redirect-prefixed",
            "trailing-slash-prefixed",
        ]
    },
    ("flask", "background"): known(WSGI_CLOSE, "task done before the second answer"),
}


def assert_same(framework: str, name: str, ours: Seen, theirs: Seen, peer: Process) -> None:
    """Every difference between the two observations is in KNOWN, and every KNOWN entry for
    this case still differs."""
    differences = ours.differences(theirs)
    entries = KNOWN.get((framework, name), ())
    listed = {entry.field for entry in entries}
    stale = sorted({entry.field for entry in entries if not entry.sometimes} - differences.keys())
    assert not stale, f"KNOWN lists differences that are gone: {stale}"
    unexplained = {field: pair for field, pair in differences.items() if field not in listed}
    assert not unexplained, "\n".join(
        f"{field}:\n  trioserve: {mine!r}\n  {peer.name}: {other!r}"
        for field, (mine, other) in unexplained.items()
    )


def both(run: Callable[[Process], Seen], ours: Process, peer: Process) -> tuple[Seen, Seen]:
    """``run`` on both sides at once (the waits of a case overlap): (ours, the peer's)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        mine, theirs = pool.submit(run, ours), pool.submit(run, peer)
        return mine.result(timeout=4 * TIMEOUT), theirs.result(timeout=4 * TIMEOUT)


def params() -> Iterator[object]:
    for framework, names in PLAN.items():
        mark = needs_pair(framework)
        for name in names:
            yield pytest.param(framework, name, id=f"{framework}-{name}", marks=mark)


@pytest.mark.parametrize(("framework", "name"), list(params()))
def test_trioserve_and_the_peer_look_the_same(servers: Servers, framework: str, name: str) -> None:
    """A client and the app observe the same thing from trioserve as from the peer."""
    sides = servers.get(framework)
    ours, theirs = both(CASES[name], sides.ours, sides.peer)
    assert_same(framework, name, ours, theirs, sides.peer)


# -- a lifespan startup that fails --------------------------------------------------------

FAILING = {
    "starlette": (f"{APPS}.diff_starlette:app_failing", uvicorn),
    "fastapi": (f"{APPS}.diff_fastapi:app_failing", uvicorn),
    "quart-trio": (f"{APPS}.diff_quart_trio:app_failing", hypercorn),
}


def startup(process: Process) -> Seen:
    """Whether the server served the app or exited, with which status, saying why."""
    status = process.wait_ready_or_exit()
    if status is None:
        process.kill()
    says_why = any(STARTUP_ERROR in line for line in process.lines)
    return Seen(facts=(("served", status is None), ("exit", status), ("says why", says_why)))


@pytest.mark.parametrize(
    "framework", [pytest.param(name, marks=needs_pair(name)) for name in FAILING]
)
def test_a_failed_lifespan_startup_is_not_served(framework: str) -> None:
    """An app whose lifespan startup fails is not served (with workers, -w 0 and the peer)."""
    target, peer_cli = FAILING[framework]
    processes = [trioserve(target), trioserve(target, "-w", "0"), peer_cli(target)]
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            workers, in_process, theirs = pool.map(startup, processes, timeout=4 * TIMEOUT)
    finally:
        for process in processes:
            process.kill()
    for mine in (workers, in_process):
        assert_same(framework, "failed-lifespan", mine, theirs, processes[-1])
