"""Turn an app target ("pkg.mod:attr", "pkg.mod:factory(...)" or an object) into a loaded app.

Loading happens in three steps, each with its own error message:

1. ``parse_target`` splits the target string and reads literal factory arguments
   without evaluating any code;
2. the module is imported (from ``app_dir``, which goes first on ``sys.path``) and
   the attribute chain is resolved;
3. the object is recognised as an ASGI 3 app, an ASGI 2 app, a WSGI app or a raw
   stream handler, calling it first when it is an app factory.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import logging
import os
import sys
import types
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeAlias, cast

import attrs

from ._errors import AppLoadError
from ._types import ASGIApp, Receive, Scope, Send, StreamHandler
from ._wsgi import WSGIApp, wsgi_to_asgi

__all__ = ["INTERFACE_CHOICES", "Interface", "LoadedApp", "load_app", "parse_target"]

LOGGER = logging.getLogger("trioserve.app")

Interface: TypeAlias = Literal["asgi3", "asgi2", "wsgi", "stream", "websocket"]
INTERFACE_CHOICES = ("auto", "asgi3", "asgi2", "wsgi", "stream", "websocket")

FactoryCall: TypeAlias = tuple[tuple[object, ...], dict[str, object]]

# Tried in order when the target names only a module.
DEFAULT_ATTRIBUTES = ("app", "application")

# How many of a module's callables an "it has: ..." hint lists.
_MAX_LISTED = 10

_NOT_AN_APP = "not an ASGI or WSGI app, a stream handler or an app factory"


@attrs.frozen
class LoadedApp:
    """An application ready to be served.

    Attributes:
        target: The target as given ("examples.hello:app"), or a readable
            description such as ``"<function examples.hello.app>"`` when an
            object was given.
        app: What the target named, or what its factory built, before any wrapping.
        interface: How the app is called: ``"asgi3"``, ``"asgi2"``, ``"wsgi"`` or
            ``"stream"``.
        asgi: An ASGI 3 callable (ASGI 2 and WSGI apps are wrapped), or None for a
            stream handler.
        handler: The handler for interface ``"stream"`` (it gets each connection's stream)
            or ``"websocket"`` (a native trio-websocket handler: it gets each
            connection's WebSocketRequest), otherwise None.
        from_factory: True if a factory was called to build the app.
    """

    target: str
    app: object
    interface: Interface
    asgi: ASGIApp | None
    handler: StreamHandler | None
    from_factory: bool


def _target_error(target: str, reason: str) -> AppLoadError:
    return AppLoadError(
        f"app target {target!r}: expected 'module:attribute' or 'module:factory(...)'"
        f" with literal arguments; {reason}"
    )


def _dotted_name(node: ast.expr) -> str | None:
    """Return "a.b.c" for a Name/Attribute chain, None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _contains_call(node: ast.expr) -> bool:
    return any(isinstance(child, ast.Call) for child in ast.walk(node))


def parse_target(target: str) -> tuple[str, str, FactoryCall | None]:
    """Split an app target into module, attribute chain and factory arguments.

    ``"pkg.mod:attr.sub"`` gives ``("pkg.mod", "attr.sub", None)``;
    ``"pkg.mod:make(1, debug=True)"`` gives ``("pkg.mod", "make", ((1,), {"debug": True}))``;
    ``"pkg.mod"`` gives ``("pkg.mod", "", None)``, meaning: look for ``app``, then
    ``application``. Factory arguments must be Python literals; they are read with
    :func:`ast.literal_eval` and never evaluated.

    Raises:
        AppLoadError: The target has another shape, or an argument is not a literal.
    """
    module, colon, expression = target.partition(":")
    module = module.strip()
    if not module:
        raise _target_error(target, "the module part is empty")
    if not all(part.isidentifier() for part in module.split(".")):
        raise _target_error(target, f"{module!r} is not a dotted module name")
    if not colon:
        return module, "", None

    expression = expression.strip()
    if not expression:
        raise _target_error(target, "nothing follows ':'")
    try:
        node = ast.parse(expression, mode="eval").body
    except SyntaxError as exc:
        raise _target_error(target, f"{expression!r} is not valid syntax") from exc

    name = _dotted_name(node)
    if name is not None:
        return module, name, None
    if not isinstance(node, ast.Call):
        reason = (
            "only the last part may be a call"
            if _contains_call(node)
            else f"{expression!r} is neither a dotted name nor a call of one"
        )
        raise _target_error(target, reason)

    name = _dotted_name(node.func)
    if name is None:
        raise _target_error(target, "only a dotted name may be called, once")
    args: list[object] = []
    kwargs: dict[str, object] = {}
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            raise _target_error(target, "*args is not allowed")
        args.append(_literal(target, arg))
    for keyword in node.keywords:
        if keyword.arg is None:
            raise _target_error(target, "**kwargs is not allowed")
        if keyword.arg in kwargs:
            raise _target_error(target, f"keyword argument {keyword.arg!r} is repeated")
        kwargs[keyword.arg] = _literal(target, keyword.value)
    return module, name, (tuple(args), kwargs)


def _literal(target: str, node: ast.expr) -> object:
    try:
        return cast(object, ast.literal_eval(node))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise _target_error(target, f"argument {ast.unparse(node)!r} is not a literal") from exc


# --- describing objects in messages -------------------------------------------


def _one_line(exc: BaseException) -> str:
    """``"Type: message"`` on a single line (or just ``"Type"`` when there is no message)."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _kind_of(obj: object) -> str:
    """A short noun phrase for an object: "a dict", "an App", "a class", "None"."""
    if obj is None:
        return "None"
    if inspect.isclass(obj):
        return "a class"
    name = type(obj).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{article} {name}"


def _describe_object(obj: object) -> str:
    """Readable stand-in for a target when an object was given instead of a string."""
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(qualname, str):
        return f"<{type(obj).__name__} object>"
    module = getattr(obj, "__module__", None)
    if isinstance(module, str):
        qualname = f"{module}.{qualname}"
    return f"<{type(obj).__name__} {qualname}>"


def _public_callables(namespace: object) -> str:
    """The "it has: ..." hint: the app objects first (what can be served), then the
    functions and classes the module defines itself, not those it imported."""
    own_name = getattr(namespace, "__name__", None)
    apps: list[str] = []
    own: list[str] = []
    imported: list[str] = []
    for name, value in vars(namespace).items():
        if name.startswith("_") or not callable(value):
            continue
        is_definition = inspect.isclass(value) or inspect.isroutine(value)
        if not is_definition and _detect(value, _shape(value)) is not None:
            # An instance such as Starlette() or Flask(__name__): its __module__ is its
            # class's, so it would pass for an import, yet it is what gets served.
            apps.append(name)
        elif getattr(value, "__module__", own_name) == own_name:
            own.append(name)
        else:
            imported.append(name)
    names = sorted(apps) + sorted(own) or sorted(imported)
    if not names:
        return "it has no public callables"
    listed = ", ".join(names[:_MAX_LISTED])
    return f"it has: {listed}, ..." if len(names) > _MAX_LISTED else f"it has: {listed}"


# --- importing and resolving --------------------------------------------------


def _insert_app_dir(app_dir: str) -> str:
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    return path


def _import(module: str, app_dir: str | None) -> types.ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        parts = module.split(".")
        prefixes = {".".join(parts[: i + 1]) for i in range(len(parts))}
        if exc.name not in prefixes:
            # The module exists but something it imports does not: show that cause.
            raise AppLoadError(f"importing {module!r} failed: {_one_line(exc)}") from exc
        if module.endswith(".py"):
            hint = f"a target names a module, not a file: try {module[:-3]!r}"
        else:
            hint = "is the name right?"
        where = f"looked in app dir {app_dir!r}; {hint}" if app_dir is not None else hint
        raise AppLoadError(
            f"cannot import {module!r}: no module named {exc.name!r} ({where})"
        ) from exc
    except Exception as exc:
        raise AppLoadError(f"importing {module!r} failed: {_one_line(exc)}") from exc


def _resolve(module: types.ModuleType, chain: str) -> object:
    obj: object = module
    parts = chain.split(".")
    for index, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            if index == 0:
                message = (
                    f"module {module.__name__!r} has no attribute {part!r};"
                    f" {_public_callables(module)}"
                )
            else:
                owner = ".".join(parts[:index])
                message = (
                    f"module {module.__name__!r} has no attribute {chain!r}:"
                    f" {owner!r} is {_kind_of(obj)} with no attribute {part!r}"
                )
            raise AppLoadError(message) from exc
        except Exception as exc:
            raise AppLoadError(
                f"getting {chain!r} from module {module.__name__!r} raised {_one_line(exc)}"
            ) from exc
    return obj


def _resolve_default(module: types.ModuleType) -> tuple[str, object]:
    for name in DEFAULT_ATTRIBUTES:
        if hasattr(module, name):
            return name, getattr(module, name)
    raise AppLoadError(
        f"module {module.__name__!r} has neither 'app' nor 'application';"
        f" name the app in the target like '{module.__name__}:NAME'; {_public_callables(module)}"
    )


# --- recognising apps ---------------------------------------------------------


@attrs.frozen
class _Shape:
    """What inspection tells about a callable."""

    signature: inspect.Signature | None  # None when it cannot be inspected (some builtins)
    is_async: bool

    def accepts(self, count: int) -> bool:
        """Whether it can be called with ``count`` positional arguments and nothing else."""
        if self.signature is None:
            return False
        try:
            self.signature.bind(*range(count))
        except TypeError:
            return False
        return True

    @property
    def required(self) -> list[str]:
        if self.signature is None:
            return []
        return [
            param.name
            for param in self.signature.parameters.values()
            if param.default is inspect.Parameter.empty
            and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
        ]

    @property
    def has_var_positional(self) -> bool:
        if self.signature is None:
            return False
        return any(
            param.kind is param.VAR_POSITIONAL for param in self.signature.parameters.values()
        )

    @property
    def looks_like_factory(self) -> bool:
        # Every kind of app takes at least one positional argument, so a callable that
        # takes none (and does not swallow them with *args) can only be a factory.
        return self.signature is not None and not self.required and not self.has_var_positional


def _is_async_callable(obj: object) -> bool:
    while isinstance(obj, functools.partial):
        obj = obj.func
    if not callable(obj) or inspect.isclass(obj):
        # A class's own __call__ is what its instances run, not what calling the class does.
        return False
    if not inspect.isroutine(obj):
        obj = cast(Any, type(obj)).__call__
    if inspect.iscoroutinefunction(obj):
        return True
    try:
        # A sync decorator (with functools.wraps) around an async function still
        # returns a coroutine when called.
        return inspect.iscoroutinefunction(inspect.unwrap(cast(Callable[..., object], obj)))
    except (ValueError, TypeError):
        return False


def _shape(obj: object) -> _Shape:
    try:
        signature: inspect.Signature | None = inspect.signature(
            cast(Callable[..., object], obj), follow_wrapped=True
        )
    except (ValueError, TypeError):
        signature = None
    return _Shape(signature=signature, is_async=_is_async_callable(obj))


def _detect(obj: object, shape: _Shape) -> Interface | None:
    """The interface an object looks like it implements, or None."""
    if not callable(obj) or shape.looks_like_factory:
        return None
    if shape.accepts(3):
        return "asgi3"
    if not shape.accepts(1):
        # environ, start_response; a class taking them is a WSGI app too (PEP 3333).
        return "wsgi" if shape.accepts(2) and not shape.is_async else None
    if inspect.isclass(obj):
        return "asgi2"
    if not shape.is_async:
        return "asgi2"
    # async def handler(x) is a raw stream handler, unless x is annotated as a
    # trio-websocket request: then it is a native WebSocket handler.
    return "websocket" if _annotated_websocket_request(shape) else "stream"


def _annotated_websocket_request(shape: _Shape) -> bool:
    if shape.signature is None:
        return False
    for param in shape.signature.parameters.values():
        annotation = param.annotation
        # (Under "from __future__ import annotations" a quoted annotation keeps its quotes.)
        name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        return isinstance(name, str) and name.strip("'\"").rsplit(".", 1)[-1] == "WebSocketRequest"
    return False


def _wrong_kind(target: str, obj: object, shape: _Shape, *, built: bool) -> AppLoadError:
    verb = "returned" if built else "is"
    message = f"{target!r} {verb} {_kind_of(obj)}, {_NOT_AN_APP}"
    if inspect.iscoroutine(obj):
        message += "; it is a coroutine: name the async factory itself, not a call of it"
    elif not callable(obj):
        return AppLoadError(message)
    elif built and shape.looks_like_factory:
        message += "; it looks like a factory itself, and a factory's result is not called again"
    elif shape.required and not built:
        names = ", ".join(shape.required)
        example = target if target.startswith("<") else f"'{target}(...)'"
        message += f"; it takes required arguments {names}; call it in the target like {example}"
    return AppLoadError(message)


def _wrap_asgi2(app: object) -> ASGIApp:
    asgi2 = cast(Callable[[Scope], Callable[[Receive, Send], Awaitable[None]]], app)

    async def asgi3(scope: Scope, receive: Receive, send: Send) -> None:
        instance = asgi2(scope)
        await instance(receive, send)

    return asgi3


async def _call_factory(target: str, factory: object, call: FactoryCall) -> object:
    args, kwargs = call
    try:
        result = cast(Callable[..., object], factory)(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:
        raise AppLoadError(f"factory {target!r} raised {_one_line(exc)}") from exc
    return result


def _finish(
    target: str,
    obj: object,
    interface: str,
    *,
    from_factory: bool,
    threads: int,
    multiprocess: bool,
) -> LoadedApp:
    if interface == "auto":
        shape = _shape(obj)
        detected = _detect(obj, shape)
        if detected is None:
            raise _wrong_kind(target, obj, shape, built=from_factory)
        kind: Interface = detected
    else:
        if not callable(obj):
            verb = "returned" if from_factory else "is"
            raise AppLoadError(
                f"--interface {interface}: {target!r} {verb} {_kind_of(obj)}, which is not callable"
            )
        kind = cast(Interface, interface)
    LOGGER.debug("loaded %s as %s", target, kind)
    if kind in ("stream", "websocket"):
        return LoadedApp(
            target=target,
            app=obj,
            interface=kind,
            asgi=None,
            handler=cast(StreamHandler, obj),
            from_factory=from_factory,
        )
    if kind == "asgi2":
        asgi = _wrap_asgi2(obj)
    elif kind == "wsgi":
        asgi = wsgi_to_asgi(cast(WSGIApp, obj), threads=threads, multiprocess=multiprocess)
    else:
        asgi = cast(ASGIApp, obj)
    return LoadedApp(
        target=target, app=obj, interface=kind, asgi=asgi, handler=None, from_factory=from_factory
    )


async def load_app(
    app: str | object,
    *,
    factory: bool | None = None,
    interface: str = "auto",
    app_dir: str | None = ".",
    threads: int = 10,
    multiprocess: bool = False,
) -> LoadedApp:
    """Import, build and recognise the application to serve.

    Args:
        app: A target string ("pkg.mod:attr", "pkg.mod:factory(1, debug=True)" or
            "pkg.mod", which looks for ``app`` then ``application``), or the app
            object itself.
        factory: None calls the object when it is a callable that is not an app and
            takes no required arguments; True always calls it; False never does.
        interface: ``"auto"`` to recognise the app from its signature, or one of
            ``"asgi3"``, ``"asgi2"``, ``"wsgi"``, ``"stream"``, ``"websocket"`` to skip
            recognition.
            A sync callable taking exactly two positional arguments (environ,
            start_response) is recognised as WSGI.
        app_dir: A directory put first on ``sys.path`` (made absolute) before
            importing; None leaves ``sys.path`` alone.
        threads: For a WSGI app, how many requests may run it at once, each in a
            worker thread.
        multiprocess: For a WSGI app, ``wsgi.multiprocess``: whether other worker
            processes serve it too.

    Returns:
        The loaded app, with an ASGI 3 callable (WSGI apps wrapped to run in
        threads) or a stream handler to serve.

    Raises:
        AppLoadError: The target cannot be parsed, imported, found, built or
            recognised; the message says which, on one line.
    """
    if interface not in INTERFACE_CHOICES:
        raise AppLoadError(
            f"--interface: expected one of {', '.join(INTERFACE_CHOICES)}, got {interface!r}"
        )
    searched = _insert_app_dir(app_dir) if app_dir is not None else None

    call: FactoryCall | None = None
    if isinstance(app, str):
        module_name, chain, call = parse_target(app)
        module = _import(module_name, searched)
        if chain:
            target = app.strip()
            obj = _resolve(module, chain)
        else:
            found, obj = _resolve_default(module)
            target = f"{module_name}:{found}"
    else:
        target = _describe_object(app)
        obj = app

    def finish(loaded: object, *, from_factory: bool) -> LoadedApp:
        return _finish(
            target,
            loaded,
            interface,
            from_factory=from_factory,
            threads=threads,
            multiprocess=multiprocess,
        )

    if call is not None:
        if factory is False:
            raise AppLoadError(
                f"--no-factory: {target!r} calls a factory; drop the '(...)' or --no-factory"
            )
        if not callable(obj):
            raise AppLoadError(f"{target!r} calls {_kind_of(obj)}, which is not callable")
        built = await _call_factory(target, obj, call)
        LOGGER.info("called factory %s to build the app", target)
        return finish(built, from_factory=True)

    shape = _shape(obj)
    # No interface takes zero arguments, so a callable that takes none is a factory.
    is_factory = callable(obj) and shape.looks_like_factory
    if factory is None and not is_factory:
        return finish(obj, from_factory=False)
    if factory is False:
        if is_factory and interface == "auto":
            raise AppLoadError(
                f"{target!r} is {_kind_of(obj)} that takes no arguments, so it looks like"
                " an app factory rather than an app; drop --no-factory to call it"
            )
        return finish(obj, from_factory=False)
    if factory is True:
        if not callable(obj):
            raise AppLoadError(
                f"--factory: {target!r} is {_kind_of(obj)}, which is not callable;"
                " name a function or class that builds the app"
            )
        if shape.required:
            raise AppLoadError(
                f"--factory: {target!r} takes required arguments {', '.join(shape.required)};"
                " pass them in the target like 'module:factory(...)'"
            )

    built = await _call_factory(target, obj, ((), {}))
    described = target if target.startswith("<") else f"{target}()"
    LOGGER.info("called factory %s to build the app", described)
    return finish(built, from_factory=True)


def peek_target(app: object, app_dir: str | None = ".") -> object:
    """The object a target names, imported but never called (no factory is run).

    The command line uses it to see whether the target is an :class:`~trioserve.Application`
    or a :class:`~trioserve.MultiApp` before it parses their prefixed settings. A target
    with a factory call ``module:factory(...)`` is returned as the string itself.

    Raises:
        AppLoadError: the module cannot be imported or has no such attribute.
    """
    if not isinstance(app, str):
        return app
    searched = _insert_app_dir(app_dir) if app_dir is not None else None
    module_name, chain, call = parse_target(app)
    if call is not None:
        return app
    module = _import(module_name, searched)
    if chain:
        return _resolve(module, chain)
    return _resolve_default(module)[1]
