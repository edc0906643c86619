"""Tests for trioserve._importer: parsing targets, importing, recognising and building apps."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trioserve._errors import AppLoadError
from trioserve._importer import LoadedApp, load_app, parse_target

TARGETS = str(Path(__file__).parent / "importer_targets")
GOOD = "imptgt_good_apps"


@pytest.fixture(autouse=True)
def _isolated_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Restore sys.path and forget the target modules after each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [name for name in sys.modules if name.startswith("imptgt_")]:
        del sys.modules[name]


async def load(app: str | object, **kwargs: Any) -> LoadedApp:
    return await load_app(app, app_dir=TARGETS, **kwargs)


async def load_error(app: str | object, **kwargs: Any) -> AppLoadError:
    with pytest.raises(AppLoadError) as info:
        await load(app, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return info.value


def write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(source)
    # The path finder caches directory listings; a module written during the run
    # may not be seen without this.
    importlib.invalidate_caches()


async def call_asgi(app: LoadedApp, scope: dict[str, Any]) -> list[dict[str, Any]]:
    """Drive an ASGI 3 app with one fake request message; return what it sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"ping"}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    assert app.asgi is not None
    await app.asgi(scope, receive, send)
    return sent


# --- parse_target ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("pkg.mod:attr.sub", ("pkg.mod", "attr.sub", None)),
        ("mod:app", ("mod", "app", None)),
        ("pkg.mod", ("pkg.mod", "", None)),
        ("mod:make()", ("mod", "make", ((), {}))),
        ("pkg.mod:make(1, debug=True)", ("pkg.mod", "make", ((1,), {"debug": True}))),
        ("mod:ns.make('x')", ("mod", "ns.make", (("x",), {}))),
        (" mod : app ", ("mod", "app", None)),
        ("mod:make('http://host:80')", ("mod", "make", (("http://host:80",), {}))),
    ],
)
def test_parse_target_splits_valid_targets(target: str, expected: object) -> None:
    """Valid targets split into module, attribute chain and optional factory arguments."""
    assert parse_target(target) == expected


def test_parse_target_reads_literal_arguments() -> None:
    """Factory arguments may be any literal: numbers, strings, lists, dicts, None, booleans."""
    target = "mod:make(1, -2.5, 'two', [3, (4,)], {'k': {5}}, None, True, b'x', flag=False)"
    assert parse_target(target) == (
        "mod",
        "make",
        ((1, -2.5, "two", [3, (4,)], {"k": {5}}, None, True, b"x"), {"flag": False}),
    )


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (":app", "the module part is empty"),
        ("", "the module part is empty"),
        ("my-app:app", "'my-app' is not a dotted module name"),
        ("pkg..mod:app", "not a dotted module name"),
        (".mod:app", "not a dotted module name"),
        ("mod:", "nothing follows ':'"),
        ("mod:app(", "is not valid syntax"),
        ("mod:1app", "is not valid syntax"),
        ("mod:apps[0]", "neither a dotted name nor a call of one"),
        ("mod:a + b", "neither a dotted name nor a call of one"),
        ("mod:None", "neither a dotted name nor a call of one"),
        ("mod:make().app", "only the last part may be a call"),
        ("mod:make()()", "only a dotted name may be called"),
        ("mod:make(*args)", "*args is not allowed"),
        ("mod:make(**kw)", "**kwargs is not allowed"),
        ("mod:make(a=1, a=2)", "keyword argument 'a' is repeated"),
        ("mod:make(debug)", "argument 'debug' is not a literal"),
        ("mod:make(x=1 + os.getpid())", "is not a literal"),
        ("mod:f(__import__('os'))", "argument \"__import__('os')\" is not a literal"),
        ("mod:make(lambda: 1)", "is not a literal"),
    ],
)
def test_parse_target_rejects_invalid_targets(target: str, reason: str) -> None:
    """Malformed targets and non-literal arguments are refused with the expected shape and why."""
    with pytest.raises(AppLoadError) as info:
        parse_target(target)
    message = str(info.value)
    assert message.startswith(
        f"app target {target!r}: expected 'module:attribute' or 'module:factory(...)'"
        " with literal arguments; "
    )
    assert reason in message


async def test_load_app_never_evaluates_arguments(tmp_path: Path) -> None:
    """A target whose argument would have a side effect is refused without running it."""
    marker = tmp_path / "evaluated"
    error = await load_error(f"{GOOD}:make_app(open({str(marker)!r}, 'w'))")
    assert "is not a literal" in str(error)
    assert not marker.exists()


# --- recognising apps -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("attribute", "interface"),
    [
        ("asgi3_app", "asgi3"),
        ("asgi3_instance", "asgi3"),
        ("decorated_asgi3", "asgi3"),
        ("varargs_asgi3", "asgi3"),
        ("partial_asgi3", "asgi3"),
        ("ASGI2App", "asgi2"),
        ("asgi2_function", "asgi2"),
        ("stream_handler", "stream"),
        ("stream_instance", "stream"),
        ("partial_stream", "stream"),
        ("wsgi_app", "wsgi"),
    ],
)
async def test_interface_is_detected_from_the_signature(attribute: str, interface: str) -> None:
    """Each kind of callable is recognised as the interface its signature implies."""
    loaded = await load(f"{GOOD}:{attribute}")
    assert loaded.interface == interface
    assert loaded.target == f"{GOOD}:{attribute}"
    assert loaded.from_factory is False
    if interface == "stream":
        assert loaded.handler is loaded.app
        assert loaded.asgi is None
    else:
        assert loaded.handler is None
        assert loaded.asgi is not None


async def test_asgi3_app_is_served_unwrapped() -> None:
    """An ASGI 3 app is used as is."""
    loaded = await load(f"{GOOD}:asgi3_app")
    assert loaded.asgi is loaded.app
    assert await call_asgi(loaded, {"path": "/x"}) == [{"type": "test.asgi3", "path": "/x"}]


async def test_asgi2_app_is_wrapped_into_asgi3() -> None:
    """An ASGI 2 class is wrapped: built with the scope, then awaited with receive and send."""
    loaded = await load(f"{GOOD}:ASGI2App")
    assert loaded.asgi is not loaded.app
    assert await call_asgi(loaded, {"path": "/two"}) == [
        {"type": "test.asgi2", "path": "/two", "echo": {"type": "http.request", "body": b"ping"}}
    ]


async def test_stream_handler_is_returned_as_handler() -> None:
    """A raw stream handler comes back as the handler and talks to the stream it is given."""
    loaded = await load(f"{GOOD}:stream_handler")
    assert loaded.handler is not None
    client, server = trio.testing.memory_stream_pair()
    await loaded.handler(server)
    assert await client.receive_some() == b"hello\n"


@pytest.mark.parametrize(
    ("attribute", "interface"),
    [
        ("asgi3_app", "asgi2"),
        ("ASGI2App", "asgi3"),
        ("asgi3_app", "stream"),
        ("wsgi_app", "asgi3"),
    ],
)
async def test_explicit_interface_skips_detection(attribute: str, interface: str) -> None:
    """An explicit interface is taken at its word for any callable."""
    loaded = await load(f"{GOOD}:{attribute}", interface=interface)
    assert loaded.interface == interface
    assert loaded.from_factory is False


async def test_explicit_interface_requires_a_callable() -> None:
    """An explicit interface still refuses an object that cannot be called."""
    error = await load_error(f"{GOOD}:settings", interface="asgi3")
    assert str(error) == (f"--interface asgi3: '{GOOD}:settings' is a dict, which is not callable")


async def test_explicit_interface_still_calls_zero_argument_factories() -> None:
    """A callable that takes no arguments is a factory whatever the interface."""
    loaded = await load(f"{GOOD}:create_app_async", interface="asgi3")
    assert loaded.from_factory is True
    assert loaded.interface == "asgi3"


async def test_unknown_interface_is_refused() -> None:
    """An interface outside the choices is an error naming the choices."""
    error = await load_error(f"{GOOD}:asgi3_app", interface="asgi4")
    assert str(error) == (
        "--interface: expected one of auto, asgi3, asgi2, wsgi, stream, websocket, got 'asgi4'"
    )


# --- WSGI apps ------------------------------------------------------------------------


def wsgi_scope(path: str = "/") -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": None,
        "server": ("testserver", 80),
    }


def response_of(sent: list[dict[str, Any]]) -> tuple[int, bytes]:
    """The status and the body of the ASGI messages a wrapped WSGI app sent."""
    assert sent[0]["type"] == "http.response.start"
    return sent[0]["status"], b"".join(message["body"] for message in sent[1:])


class FlaskLike:
    """A framework app object: a plain class whose sync __call__ takes environ, start_response."""

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"flask-like {environ['PATH_INFO']}".encode()]


class WSGIClassApp:
    """PEP 3333's class app: calling the class with environ, start_response makes the body."""

    def __init__(self, environ: dict[str, Any], start_response: Any) -> None:
        start_response("200 OK", [])
        self.path = environ["PATH_INFO"]

    def __iter__(self) -> Iterator[bytes]:
        yield f"class {self.path}".encode()


async def test_wsgi_function_is_detected_and_wrapped() -> None:
    """A sync function taking (environ, start_response) loads as WSGI, wrapped into ASGI."""
    loaded = await load(f"{GOOD}:wsgi_app")
    assert loaded.interface == "wsgi"
    assert loaded.handler is None
    assert loaded.asgi is not None
    assert loaded.asgi is not loaded.app
    with trio.fail_after(5):
        assert response_of(await call_asgi(loaded, wsgi_scope())) == (200, b"hello")


@pytest.mark.parametrize(
    ("app", "body"),
    [(FlaskLike(), b"flask-like /p"), (WSGIClassApp, b"class /p")],
    ids=["instance-with-sync-call", "pep-3333-class"],
)
async def test_wsgi_objects_are_detected(app: object, body: bytes) -> None:
    """An instance with a sync two-argument __call__, or a two-argument class, is WSGI."""
    loaded = await load_app(app, app_dir=None)
    assert loaded.interface == "wsgi"
    assert loaded.app is app
    assert loaded.from_factory is False
    with trio.fail_after(5):
        assert response_of(await call_asgi(loaded, wsgi_scope("/p"))) == (200, body)


async def test_wsgi_app_built_by_a_factory_is_detected() -> None:
    """A factory returning a WSGI app object (create_app() style) loads it as WSGI."""

    def create_app() -> FlaskLike:
        return FlaskLike()

    loaded = await load_app(create_app, app_dir=None)
    assert loaded.interface == "wsgi"
    assert loaded.from_factory is True
    assert isinstance(loaded.app, FlaskLike)


async def test_async_two_argument_call_is_not_wsgi() -> None:
    """An instance whose two-argument __call__ is async is not taken for WSGI."""

    class AsyncPair:
        async def __call__(self, first: object, second: object) -> None:
            pass

    with pytest.raises(AppLoadError) as info:
        await load_app(AsyncPair(), app_dir=None)
    assert "not an ASGI or WSGI app" in str(info.value)


async def test_explicit_wsgi_interface_wraps_any_callable() -> None:
    """interface='wsgi' wraps a callable that detection would take for ASGI 2."""

    def lenient(environ: dict[str, Any], start_response: Any = None) -> list[bytes]:
        assert start_response is not None
        start_response("202 Accepted", [])
        return [b"explicit"]

    assert (await load_app(lenient, app_dir=None)).interface == "asgi2"
    loaded = await load_app(lenient, app_dir=None, interface="wsgi")
    assert loaded.interface == "wsgi"
    with trio.fail_after(5):
        assert response_of(await call_asgi(loaded, wsgi_scope())) == (202, b"explicit")


async def test_threads_reach_the_wsgi_adapter() -> None:
    """load_app passes threads to the WSGI adapter, which checks it; other apps ignore it."""
    with pytest.raises(ValueError, match="threads: expected an integer of at least 1, got 0"):
        await load(f"{GOOD}:wsgi_app", threads=0)
    assert (await load(f"{GOOD}:asgi3_app", threads=0)).interface == "asgi3"


# --- modules and attributes -----------------------------------------------------------


async def test_dotted_module_and_default_app_attribute() -> None:
    """A target naming only a module loads its ``app``, and says so in the target."""
    loaded = await load("imptgt_pkg.sub")
    assert loaded.target == "imptgt_pkg.sub:app"
    assert loaded.app is sys.modules["imptgt_pkg.sub"].app


async def test_application_is_the_second_default_attribute() -> None:
    """Without ``app``, a module-only target loads ``application``."""
    loaded = await load("imptgt_application_only")
    assert loaded.target == "imptgt_application_only:application"


async def test_attribute_chain_is_resolved() -> None:
    """A dotted attribute chain after ':' is followed one attribute at a time."""
    loaded = await load(f"{GOOD}:routes.api")
    assert loaded.app is sys.modules[GOOD].asgi3_app


async def test_object_app_is_used_directly() -> None:
    """A non-string app is recognised without importing anything."""

    async def app(scope: object, receive: object, send: object) -> None:
        pass

    loaded = await load_app(app, app_dir=None)
    assert loaded.app is app
    assert loaded.interface == "asgi3"
    assert loaded.target.startswith("<function ")
    assert loaded.target.endswith(".app>")


async def test_object_factory_is_called() -> None:
    """A non-string zero-argument factory is called like a named one."""

    async def handler(stream: trio.abc.Stream) -> None:
        pass

    def create() -> object:
        return handler

    loaded = await load_app(create, app_dir=None)
    assert loaded.app is handler
    assert loaded.interface == "stream"
    assert loaded.from_factory is True


async def test_object_that_is_not_an_app_is_described_readably() -> None:
    """A non-app object's error names its type in place of a target."""
    with pytest.raises(AppLoadError) as info:
        await load_app(42, app_dir=None)
    assert str(info.value) == (
        "'<int object>' is an int, not an ASGI or WSGI app, a stream handler or an app factory"
    )


# --- factories ------------------------------------------------------------------------


async def test_zero_argument_factory_is_called() -> None:
    """A sync callable taking no arguments is called, and its result is the app."""
    loaded = await load(f"{GOOD}:create_app")
    assert type(loaded.app).__name__ == "ASGI3App"
    assert loaded.interface == "asgi3"
    assert loaded.from_factory is True


async def test_async_factory_is_awaited() -> None:
    """An async factory is awaited inside Trio and its result recognised."""
    loaded = await load(f"{GOOD}:create_stream_handler_async")
    assert loaded.app is sys.modules[GOOD].stream_handler
    assert loaded.interface == "stream"
    assert loaded.from_factory is True


async def test_factory_with_only_defaulted_arguments_is_called() -> None:
    """A factory whose parameters all have defaults counts as taking no arguments."""
    loaded = await load(f"{GOOD}:create_app_with_defaults")
    assert loaded.from_factory is True
    assert loaded.app.args == ("hello",)  # type: ignore[attr-defined]


async def test_class_taking_no_arguments_is_built() -> None:
    """A class named in the target whose constructor takes nothing is instantiated."""
    loaded = await load(f"{GOOD}:ZeroArgApp")
    assert type(loaded.app).__name__ == "ZeroArgApp"
    assert loaded.interface == "asgi3"


async def test_factory_call_syntax_passes_literal_arguments() -> None:
    """'mod:factory(...)' calls the factory with the literal arguments written there."""
    loaded = await load(f"{GOOD}:make_app(1, 'two', tags=['a'], options={{'x': None}})")
    assert loaded.app.args == (1, "two")  # type: ignore[attr-defined]
    assert loaded.app.kwargs == {"tags": ["a"], "options": {"x": None}}  # type: ignore[attr-defined]
    assert loaded.from_factory is True
    assert loaded.target == f"{GOOD}:make_app(1, 'two', tags=['a'], options={{'x': None}})"


async def test_factory_call_syntax_awaits_async_factories() -> None:
    """An async factory called in the target is awaited."""
    loaded = await load(f"{GOOD}:create_app_async()")
    assert loaded.app is sys.modules[GOOD].asgi3_app


async def test_factory_call_syntax_calls_only_once() -> None:
    """A result of explicit call syntax is not called again, even if it takes no arguments."""
    error = await load_error(f"{GOOD}:factory_of_factory()")
    assert str(error).startswith(
        f"'{GOOD}:factory_of_factory()' returned a function, not an ASGI or WSGI app,"
        " a stream handler or an app factory; it looks like a factory itself"
    )


async def test_forced_factory_is_called_even_when_it_looks_like_an_app() -> None:
    """factory=True calls a callable that detection would take for an ASGI 3 app."""
    assert (await load(f"{GOOD}:plugin_factory")).from_factory is False
    loaded = await load(f"{GOOD}:plugin_factory", factory=True)
    assert loaded.from_factory is True
    assert type(loaded.app).__name__ == "ConfiguredApp"


async def test_forced_factory_must_not_need_arguments() -> None:
    """factory=True on a callable with required parameters says how to pass them."""
    error = await load_error(f"{GOOD}:asgi3_app", factory=True)
    assert str(error) == (
        f"--factory: '{GOOD}:asgi3_app' takes required arguments scope, receive, send;"
        " pass them in the target like 'module:factory(...)'"
    )


async def test_forbidden_factory_leaves_apps_alone() -> None:
    """factory=False loads an app as usual."""
    loaded = await load(f"{GOOD}:asgi3_app", factory=False)
    assert loaded.from_factory is False


async def test_forbidden_factory_refuses_what_looks_like_a_factory() -> None:
    """factory=False on a zero-argument callable says it looks like a factory."""
    error = await load_error(f"{GOOD}:create_app", factory=False)
    assert str(error) == (
        f"'{GOOD}:create_app' is a function that takes no arguments, so it looks like"
        " an app factory rather than an app; drop --no-factory to call it"
    )


async def test_forbidden_factory_conflicts_with_call_syntax() -> None:
    """factory=False with 'mod:factory()' in the target is a contradiction, reported as such."""
    error = await load_error(f"{GOOD}:create_app()", factory=False)
    assert "--no-factory" in str(error)
    assert "calls a factory" in str(error)


async def test_factory_call_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Calling a factory is logged at INFO on trioserve.app; loading an app is not."""
    caplog.set_level(logging.INFO, logger="trioserve.app")
    await load(f"{GOOD}:asgi3_app")
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []
    await load(f"{GOOD}:create_app")
    await load(f"{GOOD}:make_app(1)")
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert [(r.name, r.getMessage()) for r in infos] == [
        ("trioserve.app", f"called factory {GOOD}:create_app() to build the app"),
        ("trioserve.app", f"called factory {GOOD}:make_app(1) to build the app"),
    ]


# --- app_dir --------------------------------------------------------------------------


async def test_app_dir_goes_first_on_sys_path_once(tmp_path: Path) -> None:
    """app_dir is inserted at sys.path[0] before importing, and not inserted twice."""
    write_module(tmp_path, "imptgt_in_tmp_dir", "async def app(scope, receive, send): pass\n")
    loaded = await load_app("imptgt_in_tmp_dir:app", app_dir=str(tmp_path))
    assert loaded.interface == "asgi3"
    assert sys.path[0] == str(tmp_path)
    await load_app("imptgt_in_tmp_dir:app", app_dir=str(tmp_path))
    assert sys.path.count(str(tmp_path)) == 1


async def test_app_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default app_dir '.' goes on sys.path as an absolute path."""
    write_module(tmp_path, "imptgt_in_cwd", "async def app(scope, receive, send): pass\n")
    monkeypatch.chdir(tmp_path)
    await load_app("imptgt_in_cwd:app")
    assert sys.path[0] == os.getcwd()


async def test_app_dir_none_leaves_sys_path_alone() -> None:
    """app_dir=None does not change sys.path."""
    sys.path.append(TARGETS)
    before = list(sys.path)
    loaded = await load_app(f"{GOOD}:asgi3_app", app_dir=None)
    assert loaded.interface == "asgi3"
    assert sys.path == before


# --- the seven kinds of error ---------------------------------------------------------


async def test_missing_module_is_reported_with_the_app_dir() -> None:
    """1. A module that does not exist is named, with the app dir that was searched."""
    error = await load_error("imptgt_no_such_module:app")
    assert str(error) == (
        "cannot import 'imptgt_no_such_module': no module named 'imptgt_no_such_module'"
        f" (looked in app dir {TARGETS!r}; is the name right?)"
    )
    assert isinstance(error.__cause__, ModuleNotFoundError)


async def test_missing_submodule_of_existing_package_is_a_missing_module() -> None:
    """1. A missing module inside an existing package is still 'cannot import'."""
    error = await load_error("imptgt_pkg.nope:app")
    assert str(error).startswith(
        "cannot import 'imptgt_pkg.nope': no module named 'imptgt_pkg.nope'"
    )


async def test_missing_module_without_app_dir() -> None:
    """1. Without an app dir, the message does not mention one."""
    with pytest.raises(AppLoadError) as info:
        await load_app("imptgt_no_such_module:app", app_dir=None)
    assert str(info.value) == (
        "cannot import 'imptgt_no_such_module': no module named 'imptgt_no_such_module'"
        " (is the name right?)"
    )


async def test_file_name_as_module_gets_a_hint() -> None:
    """1. A target naming a .py file suggests the module name instead."""
    error = await load_error(f"{GOOD}.py:asgi3_app")
    assert f"try '{GOOD}'" in str(error)


async def test_import_error_inside_the_module_shows_its_cause() -> None:
    """2. A dependency missing inside the user's module is shown as that module's failure."""
    error = await load_error("imptgt_broken_import:app")
    assert str(error) == (
        "importing 'imptgt_broken_import' failed:"
        " ModuleNotFoundError: No module named 'imptgt_missing_dependency'"
    )
    assert isinstance(error.__cause__, ModuleNotFoundError)


async def test_syntax_error_in_the_module(tmp_path: Path) -> None:
    """3. A module that does not compile reports the SyntaxError."""
    write_module(tmp_path, "imptgt_broken_syntax", "async def app(scope, receive, send)\n")
    with pytest.raises(AppLoadError) as info:
        await load_app("imptgt_broken_syntax:app", app_dir=str(tmp_path))
    assert str(info.value).startswith("importing 'imptgt_broken_syntax' failed: SyntaxError: ")
    assert isinstance(info.value.__cause__, SyntaxError)


async def test_exception_while_importing_the_module() -> None:
    """3. An exception raised by the module body is reported with its type and message."""
    error = await load_error("imptgt_raises_on_import")
    assert str(error) == (
        "importing 'imptgt_raises_on_import' failed: ZeroDivisionError: division by zero"
    )
    assert isinstance(error.__cause__, ZeroDivisionError)


async def test_missing_attribute_lists_what_the_module_has() -> None:
    """4. A missing attribute lists the module's public callables, sorted."""
    error = await load_error("imptgt_pkg.sub:ap")
    assert str(error) == (
        "module 'imptgt_pkg.sub' has no attribute 'ap'; it has: app, application, create_app"
    )
    assert isinstance(error.__cause__, AttributeError)


async def test_missing_attribute_list_is_truncated() -> None:
    """4. The list of callables stops after ten names."""
    error = await load_error(f"{GOOD}:nope")
    listed = str(error).split("; it has: ")[1]
    assert listed.endswith(", ...")
    assert len(listed.split(", ")) == 11
    assert "_log_calls" not in listed
    assert "settings" not in listed


async def test_missing_sub_attribute_names_the_chain() -> None:
    """4. A missing attribute further down a chain names the chain and where it broke."""
    error = await load_error(f"{GOOD}:routes.admin")
    assert str(error) == (
        f"module '{GOOD}' has no attribute 'routes.admin':"
        " 'routes' is a SimpleNamespace with no attribute 'admin'"
    )


async def test_module_without_default_attributes() -> None:
    """4. A module-only target whose module has neither app nor application says so."""
    error = await load_error(GOOD)
    assert str(error).startswith(
        f"module '{GOOD}' has neither 'app' nor 'application';"
        f" name the app in the target like '{GOOD}:NAME'; it has: "
    )


@pytest.mark.parametrize(
    "target",
    [f"{GOOD}:failing_factory", f"{GOOD}:failing_factory()"],
)
async def test_factory_that_raises(target: str) -> None:
    """5. An exception from a factory is reported with the target, its type and message."""
    error = await load_error(target)
    assert str(error) == f"factory {target!r} raised RuntimeError: database is down"
    assert isinstance(error.__cause__, RuntimeError)


async def test_factory_called_with_wrong_arguments() -> None:
    """5. Arguments the factory does not accept surface as the factory's TypeError."""
    error = await load_error(f"{GOOD}:create_app(1, 2)")
    assert str(error).startswith(f"factory '{GOOD}:create_app(1, 2)' raised TypeError: ")


async def test_non_callable_is_the_wrong_kind() -> None:
    """6. A non-callable object is neither app nor factory."""
    error = await load_error(f"{GOOD}:settings")
    assert str(error) == (
        f"'{GOOD}:settings' is a dict, not an ASGI or WSGI app, a stream handler or an app factory"
    )


async def test_two_argument_coroutine_function_is_the_wrong_kind() -> None:
    """6. A two-argument async function is no known interface, and not WSGI either."""
    error = await load_error(f"{GOOD}:two_arg_coroutine")
    assert str(error) == (
        f"'{GOOD}:two_arg_coroutine' is a function, not an ASGI or WSGI app, a stream handler"
        " or an app factory; it takes required arguments first, second;"
        f" call it in the target like '{GOOD}:two_arg_coroutine(...)'"
    )


async def test_factory_with_required_arguments_is_the_wrong_kind() -> None:
    """6. A factory with required parameters is told to be called in the target."""
    error = await load_error(f"{GOOD}:needs_settings")
    assert str(error) == (
        f"'{GOOD}:needs_settings' is a function, not an ASGI or WSGI app, a stream handler"
        " or an app factory; it takes required arguments settings, environment;"
        f" call it in the target like '{GOOD}:needs_settings(...)'"
    )


async def test_factory_result_that_is_a_factory_is_the_wrong_kind() -> None:
    """6. A factory returning another zero-argument factory is not called twice."""
    error = await load_error(f"{GOOD}:factory_of_factory")
    assert str(error) == (
        f"'{GOOD}:factory_of_factory' returned a function, not an ASGI or WSGI app,"
        " a stream handler or an app factory; it looks like a factory itself,"
        " and a factory's result is not called again"
    )


async def test_factory_result_that_is_none_is_the_wrong_kind() -> None:
    """6. A factory that returns None says so."""
    error = await load_error(f"{GOOD}:factory_of_nothing")
    assert str(error).startswith(
        f"'{GOOD}:factory_of_nothing' returned None, not an ASGI or WSGI app"
    )


async def test_coroutine_object_gets_a_hint() -> None:
    """6. A coroutine (an async factory called but not awaited) says to name the factory."""

    async def create() -> None:
        pass

    pending = create()
    try:
        with pytest.raises(AppLoadError) as info:
            await load_app(pending, app_dir=None)
    finally:
        pending.close()
    assert "name the async factory itself" in str(info.value)


async def test_forced_factory_on_non_callable() -> None:
    """7. factory=True on something that cannot be called is a clear error."""
    error = await load_error(f"{GOOD}:settings", factory=True)
    assert str(error) == (
        f"--factory: '{GOOD}:settings' is a dict, which is not callable;"
        " name a function or class that builds the app"
    )


async def test_missing_attribute_hint_names_what_the_module_defines_not_imports():
    """The 'it has:' hint lists the module's own callables, not names it imported."""
    with pytest.raises(AppLoadError) as info:
        await load_app("examples.hello:nope", app_dir=None)
    assert str(info.value).endswith("; it has: app")


async def test_annotated_websocket_request_handler_is_native_websocket():
    """async def handler(request: WebSocketRequest) is detected as a native WebSocket handler."""
    import trio_websocket

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        pass

    async def string_annotated(request: "trio_websocket.WebSocketRequest") -> None:  # noqa: UP037 (the quoting is the case under test)
        pass

    async def plain(stream: trio.abc.Stream) -> None:
        pass

    assert (await load_app(handler, app_dir=None)).interface == "websocket"
    assert (await load_app(string_annotated, app_dir=None)).interface == "websocket"
    assert (await load_app(plain, app_dir=None)).interface == "stream"
    forced = await load_app(plain, interface="websocket", app_dir=None)
    assert (forced.interface, forced.handler) == ("websocket", plain)


async def test_missing_attribute_hint_lists_app_instances_first():
    """The hint names an app instance (Starlette(), Flask()) first, though its class is imported."""
    error = await load_error("imptgt_instance_app:nosuchapp")
    assert str(error).endswith("; it has: web, add_routes")
