"""What request hooks receive: RequestInfo (the scope as a mapping, with gunicorn's
request attributes), ResponseInfo, and gunicorn's forms of post_request."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from tests.helpers import serve_http_connection
from trioserve import Config, RequestInfo, ResponseInfo, ServerInfo, WorkerInfo
from trioserve._hooks import run_hook
from trioserve._state import ServerState
from trioserve._types import Receive, Scope, Send

CLIENT = ("127.0.0.1", 5000)
SERVER = ("127.0.0.1", 8000)

REQUESTS = {
    "plain": b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    "encoded": (
        b"GET /a%20b/c%2Fd?x=1&y=%2F HTTP/1.1\r\nHost: example.com\r\n"
        b"X-Custom: v1\r\nx-custom: v2\r\nUser-Agent: t/1\r\n\r\n"
    ),
    "http10": b"DELETE /things/7?force HTTP/1.0\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
}


async def scope_for(raw: bytes, **settings: Any) -> Scope:
    """The ASGI scope trioserve's HTTP edge gives an app for the request ``raw``."""
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client, server = trio.testing.memory_stream_pair()
    state = ServerState(Config(**settings))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: serve_http_connection(server, app, state, client=CLIENT, server=SERVER)
            )
            await client.send_all(raw)
            while not seen:
                await trio.testing.wait_all_tasks_blocked()
            await client.aclose()
    return seen[0]


def gunicorn_request(raw: bytes) -> Any:
    """The request gunicorn's own parser makes of ``raw``."""
    gunicorn_config = pytest.importorskip("gunicorn.config")
    parser = pytest.importorskip("gunicorn.http.parser")
    return next(parser.RequestParser(gunicorn_config.Config(), iter([raw]), CLIENT))


@pytest.mark.parametrize("name", sorted(REQUESTS))
async def test_request_attributes_are_gunicorns_for_the_same_request(name: str) -> None:
    """method, uri, path, query, version, headers, scheme and remote_addr are what
    gunicorn's Request holds for the same bytes."""
    raw = REQUESTS[name]
    req = RequestInfo(await scope_for(raw))
    theirs = gunicorn_request(raw)
    attributes = ("method", "uri", "path", "query", "version", "headers", "scheme", "remote_addr")
    assert {a: getattr(req, a) for a in attributes} == {a: getattr(theirs, a) for a in attributes}


async def test_sample_request_attributes() -> None:
    """The attributes of a sample request, spelt out."""
    req = RequestInfo(await scope_for(REQUESTS["encoded"]))
    assert (req.method, req.uri, req.path, req.query, req.version) == (
        "GET",
        "/a%20b/c%2Fd?x=1&y=%2F",
        "/a%20b/c%2Fd",
        "x=1&y=%2F",
        (1, 1),
    )
    assert req.headers == [
        ("HOST", "example.com"),
        ("X-CUSTOM", "v1"),
        ("X-CUSTOM", "v2"),
        ("USER-AGENT", "t/1"),
    ]
    assert (req.scheme, req.remote_addr) == ("http", CLIENT)


async def test_request_is_a_mapping_over_the_scope_the_app_gets() -> None:
    """req["key"], get, len, iteration and == read the scope; what a hook stores in req
    is in the app's scope; the ASGI path stays decoded."""
    scope = await scope_for(REQUESTS["encoded"])
    req = RequestInfo(scope)
    assert (req["method"], req["path"], req.get("query_string"), req.get("nope")) == (
        "GET",
        "/a b/c/d",
        b"x=1&y=%2F",
        None,
    )
    assert (len(req), list(req), dict(req)) == (len(scope), list(scope), dict(scope))
    assert req == scope
    req["user"] = "ann"
    del req["query_string"]
    assert (scope["user"], "query_string" in scope) == ("ann", False)


async def test_path_under_root_path_is_what_the_client_sent() -> None:
    """With --root-path, req.path and req.uri are the target as sent (as in gunicorn);
    req["path"] is the ASGI path, root_path first."""
    req = RequestInfo(await scope_for(b"GET /x?q=1 HTTP/1.1\r\nHost: h\r\n\r\n", root_path="/api"))
    assert (req.path, req.uri, req["path"]) == ("/x", "/x?q=1", "/api/x")


def test_a_websocket_scope_reads_as_a_get() -> None:
    """A websocket scope (no method) reads as gunicorn's GET handshake, its scheme ws."""
    scope: Scope = {
        "type": "websocket",
        "http_version": "1.1",
        "scheme": "ws",
        "path": "/chat",
        "raw_path": b"/chat",
        "query_string": b"",
        "headers": [(b"upgrade", b"websocket")],
        "client": None,
    }
    req = RequestInfo(scope)
    assert (req.method, req.uri, req.scheme, req.remote_addr, req.headers) == (
        "GET",
        "/chat",
        "ws",
        None,
        [("UPGRADE", "websocket")],
    )


def test_response_status_code_is_the_status() -> None:
    """resp.status_code (gunicorn's int) is resp.status; None before anything was sent."""
    assert (ResponseInfo(201).status_code, ResponseInfo().status_code) == (201, None)


def test_cfg_is_the_config_by_gunicorns_name() -> None:
    """server.cfg and worker.cfg are their config (server.cfg.workers, .bind)."""
    config = Config(workers=3, bind=["127.0.0.1:0"])
    server, worker = ServerInfo(config), WorkerInfo(0, config)
    assert (server.cfg, worker.cfg) == (config, config)
    assert (server.cfg.workers, list(server.cfg.bind)) == (3, ["127.0.0.1:0"])


# -- gunicorn's forms of post_request ---------------------------------------------------------


async def post_request_with(hook: Any, scope: Scope) -> tuple[Any, ...]:
    """Run ``hook`` as post_request on ``scope``: the arguments it was called with."""
    calls: list[tuple[Any, ...]] = []
    config = Config(post_request=hook)
    worker = WorkerInfo(0, config)
    response = ResponseInfo(200, [(b"content-type", b"text/plain")])
    hook.calls = calls
    await run_hook(config, "post_request", worker, RequestInfo(scope), response)
    return calls[0]


def four(worker: Any, req: Any, environ: Any, resp: Any) -> None:
    four.calls.append((worker, req, environ, resp))  # type: ignore[attr-defined]


async def four_async(worker: Any, req: Any, environ: Any, resp: Any) -> None:
    await trio.lowlevel.checkpoint()
    four_async.calls.append((worker, req, environ, resp))  # type: ignore[attr-defined]


def three_environ(worker: Any, req: Any, environ: Any) -> None:
    three_environ.calls.append((worker, req, environ))  # type: ignore[attr-defined]


def two(worker: Any, req: Any) -> None:
    two.calls.append((worker, req))  # type: ignore[attr-defined]


def ours(worker: Any, req: Any, resp: Any, *, exc: Any = None) -> None:
    ours.calls.append((worker, req, resp, exc))  # type: ignore[attr-defined]


@pytest.mark.parametrize("hook", [four, four_async], ids=["sync", "async"])
async def test_gunicorns_four_argument_post_request_gets_an_environ(hook: Any) -> None:
    """post_request(worker, req, environ, resp) gets a WSGI environ of the request and the
    ResponseInfo, sync or async."""
    scope = await scope_for(REQUESTS["encoded"])
    worker, req, environ, resp = await post_request_with(hook, scope)
    assert isinstance(worker, WorkerInfo)
    assert req.scope is scope
    assert {
        key: environ[key]
        for key in ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "RAW_URI", "HTTP_HOST")
    } == {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/a b/c/d",
        "QUERY_STRING": "x=1&y=%2F",
        "RAW_URI": "/a%20b/c%2Fd?x=1&y=%2F",
        "HTTP_HOST": "example.com",
    }
    assert (environ["REMOTE_ADDR"], environ["wsgi.input"].read()) == ("127.0.0.1", b"")
    assert (resp.status, resp.status_code) == (200, 200)


async def test_gunicorns_three_argument_post_request_gets_the_environ_third() -> None:
    """post_request(worker, req, environ): a third parameter named environ gets it."""
    _, _, environ = await post_request_with(three_environ, await scope_for(REQUESTS["plain"]))
    assert (environ["REQUEST_METHOD"], environ["PATH_INFO"]) == ("GET", "/")


async def test_gunicorns_two_argument_post_request_gets_worker_and_req() -> None:
    """post_request(worker, req) is called with the worker and the request only."""
    worker, req = await post_request_with(two, await scope_for(REQUESTS["plain"]))
    assert (isinstance(worker, WorkerInfo), req.path) == (True, "/")


async def test_trioserves_post_request_gets_resp_and_no_environ_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """post_request(worker, req, resp, *, exc=None) gets the ResponseInfo third and
    exc; no environ is built for it."""

    def no_environ(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an environ was built")

    monkeypatch.setattr("trioserve._hooks.build_environ", no_environ)
    _, _, resp, exc = await post_request_with(ours, await scope_for(REQUESTS["plain"]))
    assert (isinstance(resp, ResponseInfo), exc) == (True, None)


async def test_a_websocket_request_gets_a_get_environ() -> None:
    """gunicorn's four-argument post_request on a websocket request gets a GET environ."""
    scope: Scope = {"type": "websocket", "path": "/chat", "headers": [], "query_string": b""}
    _, _, environ, _ = await post_request_with(four, scope)
    assert (environ["REQUEST_METHOD"], environ["PATH_INFO"]) == ("GET", "/chat")
