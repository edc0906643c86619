"""The hook table: every server hook's name, arguments, where it runs and what its
raising does, and the checks of a hook's signature against it.

Plain data and ``inspect``, no trio: the settings registry checks hook settings with
it. :func:`~trioserve._hooks.run_hook` calls the hooks; docs/hooks.md is generated
from :data:`HOOKS` (``python -m trioserve._docs --write``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import attrs


@attrs.frozen
class Hook:
    """One row of the hook table.

    Attributes:
        name: The setting that holds it.
        args: The positional arguments, by name; ``exc`` is always passed as a keyword.
        where: "master", "worker", or "both" (the in-process server runs it as well).
        when: When it is called.
        raising: What happens when it raises.
        exc: What ``exc`` holds when it is not None.
        in_process: Whether the in-process server (``workers=0``) calls it: every "both"
            hook, and the master hooks that have a meaning without workers.
        gunicorn: How gunicorn's hook of the same name differs, said when a hook's
            signature does not fit.
        forms: gunicorn's other positional forms of the hook, which a function may take
            instead of ``args`` (``post_request(worker, req, environ, resp)``); the names
            not in ``args`` are made by :func:`~trioserve._hooks.run_hook` when needed.
    """

    name: str
    args: tuple[str, ...]
    where: str
    when: str
    raising: str
    exc: str = "always None"
    in_process: bool = attrs.field(
        kw_only=True, default=attrs.Factory(lambda self: self.where == "both", takes_self=True)
    )
    gunicorn: str = attrs.field(kw_only=True, default="")
    forms: tuple[tuple[str, ...], ...] = attrs.field(kw_only=True, default=())


_STARTUP = "Startup is aborted: the server exits 1 with the hook's name and error."
_BOOT = (
    "The worker fails to boot: the master stops every worker and exits 3 with the "
    "hook's name and error, instead of restarting it in a loop."
)
# How the hooks that run once per connection or request log their failures.
_RATE_LIMITED = " (on ``trioserve.connection``, at most ten lines a second of each kind per worker)"
_LOGGED = "The error is logged with its traceback; the event goes on."

HOOKS: tuple[Hook, ...] = (
    Hook(
        "on_starting",
        ("server",),
        "master",
        "Once, before the master binds its sockets (in-process: before the app loads).",
        _STARTUP,
        in_process=True,
    ),
    Hook(
        "on_reload",
        ("server",),
        "master",
        "On SIGHUP (or a --reload file change), after the configuration is re-read and "
        "before new workers are started.",
        "The reload is abandoned and logged; the old workers keep serving.",
    ),
    Hook(
        "when_ready",
        ("server",),
        "master",
        "Once every worker of the application reported ready the first time "
        "(in-process: once the sockets listen).",
        "The server stops: every worker is stopped and the master exits 1.",
        in_process=True,
    ),
    Hook(
        "pre_fork",
        ("server", "worker"),
        "master",
        "Just before a worker process is started; ``worker.pid`` is still None.",
        "That worker is not started: the master treats it as a failed boot and exits 3.",
    ),
    Hook(
        "post_fork",
        ("server", "worker"),
        "worker",
        "First thing in a new worker process, before the app is imported.",
        _BOOT,
    ),
    Hook(
        "post_worker_init",
        ("worker",),
        "both",
        "In the worker once the app is loaded and lifespan startup finished, just "
        "before it reports ready and accepts connections.",
        _BOOT,
    ),
    Hook(
        "worker_int",
        ("worker",),
        "worker",
        "When the worker receives SIGINT or SIGQUIT (a fast stop).",
        _LOGGED,
    ),
    Hook(
        "worker_abort",
        ("worker",),
        "worker",
        "When the worker receives SIGABRT, which the master sends to a worker silent "
        "for longer than --timeout, right after its stack was dumped to the error log. "
        "The worker's event loop may be stuck, so this hook runs in a fresh trio loop "
        "after the stuck one was abandoned.",
        _LOGGED,
    ),
    Hook(
        "pre_request",
        ("worker", "req"),
        "both",
        "Before the app is called for a request; ``req`` is a RequestInfo: the ASGI "
        "scope as a mapping, with gunicorn's request attributes (``req.method``, "
        "``req.path``; for WSGI apps too, before the environ is built).",
        "The request fails with a 500 response (if nothing was sent yet), and "
        "``post_request`` is called with the error as ``exc``.",
    ),
    Hook(
        "post_request",
        ("worker", "req", "resp"),
        "both",
        "After the app returned for a request; ``resp`` is a ResponseInfo (status, "
        "headers; status None when nothing was sent). gunicorn's forms work too: "
        "``post_request(worker, req, environ, resp)``, ``post_request(worker, req, "
        "environ)`` (the third parameter named ``environ``) and ``post_request(worker, "
        "req)``; ``environ`` is a WSGI environ built from the request for that hook.",
        "The error is logged" + _RATE_LIMITED + "; the response already went out.",
        exc="the exception the app (or pre_request) raised for this request",
        gunicorn="gunicorn's forms post_request(worker, req, environ, resp), "
        "post_request(worker, req, environ) and post_request(worker, req) are accepted too",
        forms=(
            ("worker", "req", "environ", "resp"),
            ("worker", "req", "environ"),
            ("worker", "req"),
        ),
    ),
    Hook(
        "child_exit",
        ("server", "worker"),
        "master",
        "When a worker process has exited, for any reason; ``worker.exit_code`` holds "
        "its exit status (negative: the signal that ended it), ``worker.exit_reason`` "
        'why it exited (an ``ExitReason``: ``"memory"``, ``"lifetime"``, '
        '``"max_requests"``, ``"crash"`` ...).',
        _LOGGED,
        exc="a WorkerExited error when the worker exited unexpectedly",
    ),
    Hook(
        "worker_exit",
        ("server", "worker"),
        "both",
        "In the worker, after it stopped serving and ran lifespan shutdown, just "
        "before the process exits; ``worker.exit_reason`` is why the master stopped it "
        '(``"memory"``, ``"reload"`` ...), ``"shutdown"`` after a signal, '
        "None when an error ended it.",
        _LOGGED,
        exc="the exception that ended the worker, if one did",
    ),
    Hook(
        "nworkers_changed",
        ("server", "new_value", "old_value"),
        "master",
        "When the number of workers changes (SIGTTIN, SIGTTOU, or a reload with a new "
        "--workers); ``old_value`` is None the first time.",
        _LOGGED,
    ),
    Hook(
        "pre_exec",
        ("server",),
        "master",
        "On SIGUSR2, just before the new master is started.",
        "The upgrade is abandoned and logged; this master keeps serving.",
    ),
    Hook(
        "on_exit",
        ("server",),
        "master",
        "Last, when the server stops (also after a failed start).",
        "The error is logged with its traceback; the exit status is not changed.",
        exc="the error that stopped the server, if one did",
        in_process=True,
    ),
    Hook(
        "connection_made",
        ("conn",),
        "both",
        "When a connection is accepted (after the PROXY header and TLS handshake).",
        "The connection is closed; the error is logged" + _RATE_LIMITED + ".",
    ),
    Hook(
        "connection_lost",
        ("conn",),
        "both",
        "When a connection is closed, for any reason.",
        "The error is logged with its traceback" + _RATE_LIMITED + "; the event goes on.",
        exc="the exception that broke the connection, if one did",
    ),
)

HOOK_NAMES: tuple[str, ...] = tuple(hook.name for hook in HOOKS)
_BY_NAME: Mapping[str, Hook] = {hook.name: hook for hook in HOOKS}


def hook_info(name: str) -> Hook:
    """The table row of hook ``name``."""
    return _BY_NAME[name]


def _signature(value: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(value)
    except (TypeError, ValueError):
        return None  # a builtin without a signature: it gets the benefit of the doubt


def _bind_problem(signature: inspect.Signature, args: tuple[str, ...], *, exc: bool) -> str | None:
    try:
        if exc:
            signature.bind(*args, exc=None)
        else:
            signature.bind(*args)
    except TypeError as error:
        return str(error)
    return None


@attrs.frozen
class CallForm:
    """How one function is called as a hook: its positional arguments, by name, and
    whether it gets the keyword ``exc``."""

    args: tuple[str, ...]
    exc: bool


def _positional_names(signature: inspect.Signature) -> tuple[str, ...]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in signature.parameters.values() if p.kind in kinds)


def _call_form(signature: inspect.Signature, hook: Hook) -> CallForm | None:
    forms = [hook.args, *hook.forms]
    # Names decide between forms of the same length: post_request(worker, req, environ)
    # is gunicorn's three-argument form, post_request(worker, req, resp) trioserve's.
    named = _positional_names(signature)
    forms.sort(key=lambda form: form != named)
    for form in forms:
        for exc in (True, False):
            if _bind_problem(signature, form, exc=exc) is None:
                return CallForm(form, exc)
    return None


def arity_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be hook ``name``, or None when its signature fits: when it
    can be called with the hook's arguments (or one of gunicorn's forms of them), with
    or without the keyword ``exc``."""
    if not callable(value):
        return "not callable"
    signature = _signature(value)
    if signature is None:
        return None
    hook = _BY_NAME[name]
    if _call_form(signature, hook) is not None:
        return None
    return _bind_problem(signature, hook.args, exc=False)


def signature_problem(name: str, value: Callable[..., Any]) -> str | None:
    """What is wrong with the signature of ``value`` as hook ``name``, in a sentence that
    shows the signature it has and the two it may have; None when it fits."""
    problem = arity_problem(name, value)
    if problem is None:
        return None
    hook = _BY_NAME[name]
    signature = _signature(value)
    assert signature is not None  # arity_problem found a problem in it
    bare = signature.replace(
        parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
        return_annotation=signature.empty,
    )
    called = getattr(value, "__name__", type(value).__name__)
    message = (
        f"{called}{bare} cannot be called as {name}({', '.join(hook.args)}) "
        f"nor as {signature_text(name)}: {problem}"
    )
    return f"{message}; {hook.gunicorn}" if hook.gunicorn else message


def signature_text(name: str) -> str:
    """``on_starting(server, *, exc=None)``: how the hook is called."""
    hook = _BY_NAME[name]
    return f"{name}({', '.join(hook.args)}, *, exc=None)"


@functools.lru_cache(maxsize=256)
def _call_form_cached(name: str, hook: Callable[..., Any]) -> CallForm:
    row = _BY_NAME[name]
    signature = _signature(hook)
    form = _call_form(signature, row) if signature is not None else None
    # No signature (a builtin) or none that fits (checked when the config loaded, so
    # only for a hook set behind the check's back): the table's form, with exc.
    return form if form is not None else CallForm(row.args, True)


def call_form(name: str, hook: Callable[..., Any]) -> CallForm:
    """How hook ``name`` calls ``hook``: trioserve's arguments with the keyword ``exc``
    when it takes them, else gunicorn's form that fits (no ``exc``; for post_request,
    ``(worker, req, environ, resp)`` ...). Worked out once per function."""
    try:
        return _call_form_cached(name, hook)
    except TypeError:  # an unhashable callable object: no cache for it
        return _call_form_cached.__wrapped__(name, hook)
