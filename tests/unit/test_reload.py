"""The --reload file watcher: what is reported, batching, backends, errors and cancellation."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import operator
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest
import trio
import trio.testing

from trioserve import ConfigError, _reload
from trioserve._reload import Backend, _batch, _Filter, describe, watch_files

TIMEOUT = 5

needs_watchfiles = pytest.mark.skipif(
    importlib.util.find_spec("watchfiles") is None, reason="watchfiles is not installed"
)
BACKENDS = ["poll", pytest.param("watchfiles", marks=needs_watchfiles)]

Receiver = trio.MemoryReceiveChannel[frozenset[str]]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each backend in turn."""
    return cast(Backend, request.param)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A watched directory, spelled the way reported paths are (symlinks resolved)."""
    return tmp_path.resolve()


async def start(
    nursery: trio.Nursery,
    dirs: Sequence[Path],
    backend: Backend,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    debounce: float = 0.02,
) -> Receiver:
    """Start watch_files in ``nursery``; return where its batches arrive."""
    send, receive = trio.open_memory_channel[frozenset[str]](math.inf)
    watcher = functools.partial(
        watch_files,
        [str(d) for d in dirs],
        include,
        exclude,
        send,
        backend=backend,
        poll_interval=0.01,
        debounce=debounce,
    )
    with trio.fail_after(TIMEOUT):
        assert await nursery.start(watcher) == backend
    return receive


async def next_batch(receive: Receiver) -> frozenset[str]:
    with trio.fail_after(TIMEOUT):
        return await receive.receive()


def paths(*files: Path) -> frozenset[str]:
    return frozenset(str(f) for f in files)


# --- what is reported ---------------------------------------------------------------------------


async def test_create_modify_and_delete_are_reported(nursery, root, backend):
    """Creating, modifying and deleting an included file are each reported, right after start."""
    changes = await start(nursery, [root], backend)
    module = root / "app.py"
    module.write_text("x = 1\n")
    assert await next_batch(changes) == paths(module)
    module.write_text("x = 1000\n")
    assert await next_batch(changes) == paths(module)
    module.unlink()
    assert await next_batch(changes) == paths(module)


async def test_files_in_a_new_directory_are_reported(nursery, root, backend):
    """Files written at once into new directories are reported, though no OS watch was on them."""
    changes = await start(nursery, [root], backend, debounce=0.15)
    (root / "pkg" / "sub" / "__pycache__").mkdir(parents=True)
    modules = [root / "pkg" / "__init__.py", root / "pkg" / "sub" / "mod.py"]
    for module in modules:
        module.write_text("new\n")
    (root / "pkg" / "sub" / "__pycache__" / "mod.py").write_text("excluded\n")
    (root / "pkg" / "README.txt").write_text("not included\n")
    assert await next_batch(changes) == paths(*modules)


async def test_excluded_names_and_directories_are_not_reported(nursery, root, backend):
    """Default and given exclude patterns hide files, and everything under excluded dirs."""
    for name in (".git", "__pycache__", "node_modules", "pkg/__pycache__"):
        (root / name).mkdir(parents=True)
    changes = await start(nursery, [root], backend, exclude=["node_modules", "generated_*"])
    for name in (
        ".hidden.py",
        "stale.pyc",
        "generated_models.py",
        ".git/hook.py",
        "__pycache__/app.py",
        "node_modules/build.py",
        "pkg/__pycache__/app.py",
    ):
        (root / name).write_text("ignored\n")
    module = root / "app.py"
    module.write_text("seen\n")
    assert await next_batch(changes) == paths(module)


async def test_names_above_the_watched_directory_do_not_exclude(nursery, tmp_path, backend):
    """Only path components below the watched directory are matched against exclude patterns."""
    watched = tmp_path.resolve() / ".config" / "__pycache__"
    watched.mkdir(parents=True)
    changes = await start(nursery, [watched], backend)
    module = watched / "app.py"
    module.write_text("seen\n")
    assert await next_batch(changes) == paths(module)


async def test_include_patterns_replace_the_default(nursery, root, backend):
    """With include=["*.html"], templates are reported and Python files are not."""
    changes = await start(nursery, [root], backend, include=["*.html"])
    (root / "app.py").write_text("ignored\n")
    template = root / "index.html"
    template.write_text("<p>seen</p>\n")
    assert await next_batch(changes) == paths(template)


async def test_several_directories_are_watched(nursery, tmp_path, backend):
    """Every directory given is watched."""
    first, second = tmp_path.resolve() / "first", tmp_path.resolve() / "second"
    first.mkdir()
    second.mkdir()
    changes = await start(nursery, [first, second], backend, debounce=0.15)
    (first / "a.py").write_text("a\n")
    (second / "b.py").write_text("b\n")
    assert await next_batch(changes) == paths(first / "a.py", second / "b.py")


async def test_quick_changes_are_sent_as_one_batch(nursery, root, backend):
    """Changes following each other within the debounce window arrive as one batch."""
    changes = await start(nursery, [root], backend, debounce=0.15)
    files = [root / f"{name}.py" for name in "abc"]
    for f in files:
        f.write_text("changed\n")
    assert await next_batch(changes) == paths(*files)


# --- debouncing ---------------------------------------------------------------------------------


async def test_batch_merges_changes_until_a_quiet_window(autojump_clock):
    """A batch grows while changes are less than `debounce` apart and is sent after a pause."""
    raw_send, raw_receive = trio.open_memory_channel[frozenset[str]](math.inf)
    out_send, out_receive = trio.open_memory_channel[frozenset[str]](math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_batch, raw_receive, out_send, 1.0)
        for name, pause in [("a", 0.5), ("b", 0.9), ("c", 2.0), ("d", 0.0)]:
            raw_send.send_nowait(frozenset({name}))
            await trio.sleep(pause)
        raw_send.close()
    assert out_receive.receive_nowait() == {"a", "b", "c"}
    assert out_receive.receive_nowait() == {"d"}  # flushed when the backend stops


async def test_batch_sends_an_endless_burst_after_ten_windows(autojump_clock):
    """Changes that never pause are still sent, ten debounce windows after the first."""
    raw_send, raw_receive = trio.open_memory_channel[frozenset[str]](math.inf)
    out_send, out_receive = trio.open_memory_channel[frozenset[str]](math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_batch, raw_receive, out_send, 1.0)
        for i in range(40):
            raw_send.send_nowait(frozenset({str(i)}))
            await trio.sleep(0.5)
        first = out_receive.receive_nowait()
        raw_send.close()
    assert {str(i) for i in range(20)} <= first < {str(i) for i in range(40)}


# --- backends and errors ------------------------------------------------------------------------


@needs_watchfiles
async def test_auto_uses_watchfiles_when_installed(nursery, root):
    """backend="auto" starts with "watchfiles" when it is importable."""
    send, _ = trio.open_memory_channel[frozenset[str]](0)
    with trio.fail_after(TIMEOUT):
        used = await nursery.start(functools.partial(watch_files, [str(root)], [], [], send))
    assert used == "watchfiles"


async def test_auto_polls_without_watchfiles(nursery, root, monkeypatch):
    """backend="auto" falls back to polling when watchfiles cannot be imported."""
    monkeypatch.setitem(sys.modules, "watchfiles", None)
    send, _ = trio.open_memory_channel[frozenset[str]](0)
    with trio.fail_after(TIMEOUT):
        used = await nursery.start(functools.partial(watch_files, [str(root)], [], [], send))
    assert used == "poll"


async def test_watchfiles_backend_without_watchfiles_is_a_config_error(root, monkeypatch):
    """backend="watchfiles" without watchfiles says which extra to install."""
    monkeypatch.setitem(sys.modules, "watchfiles", None)
    send, receive = trio.open_memory_channel[frozenset[str]](0)
    with pytest.raises(ConfigError, match=r"^--reload: .*'pip install trioserve\[reload\]'"):
        await watch_files([str(root)], [], [], send, backend="watchfiles")
    with pytest.raises(trio.EndOfChannel):
        receive.receive_nowait()


async def test_missing_directory_is_a_config_error(tmp_path):
    """A --reload-dir that does not exist is a ConfigError naming the setting and the path."""
    missing = str(tmp_path / "nope")
    send, _ = trio.open_memory_channel[frozenset[str]](0)
    with pytest.raises(ConfigError, match=r"^--reload-dir: no such directory") as info:
        await watch_files([missing], [], [], send, backend="poll")
    assert repr(missing) in str(info.value)


async def test_file_given_as_directory_is_a_config_error(tmp_path):
    """A --reload-dir naming a file is a ConfigError."""
    module = tmp_path / "app.py"
    module.write_text("")
    send, _ = trio.open_memory_channel[frozenset[str]](0)
    with pytest.raises(ConfigError, match=r"^--reload-dir: '.*app\.py' is not a directory"):
        await watch_files([str(module)], [], [], send, backend="poll")


def _watcher_resources() -> tuple[int, int]:
    """How many inotify fds and notify-rs threads this process has (Linux)."""
    fds = threads = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd of the listing itself, closed by now
            fds += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that ended since the listing
            threads += Path(f"/proc/self/task/{task}/comm").read_text().startswith("notify-rs")
    return fds, threads


async def test_cancelling_stops_promptly_and_leaves_nothing_behind(root, backend, monkeypatch):
    """Cancelling stops at once (not at watchfiles' timeout), closes `changes`, frees the watch."""
    # A watcher that only stopped at its timeout would now hang for a minute.
    monkeypatch.setattr(_reload, "_RUST_TIMEOUT_MS", 60_000)
    linux = sys.platform == "linux"
    before = _watcher_resources() if linux else (0, 0)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            changes = await start(nursery, [root], backend)
            nursery.cancel_scope.cancel()
    with pytest.raises(trio.EndOfChannel):
        changes.receive_nowait()
    if linux:
        # watchfiles' Rust watcher, once closed, tells its event-loop thread
        # (which owns the inotify fd) to exit without joining it: nothing
        # signals the moment it is gone, so look until it is.
        with trio.fail_after(TIMEOUT):
            while not all(map(operator.le, _watcher_resources(), before)):  # noqa: ASYNC110
                await trio.sleep(0.005)


async def test_watching_stops_when_nobody_listens(root, backend):
    """When the receiving end of `changes` is closed, watch_files returns after the next batch."""
    # Nothing cancels this nursery: it exits only if watch_files returns.
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            changes = await start(nursery, [root], backend)
            await changes.aclose()
            (root / "app.py").write_text("x\n")


# --- filtering and description ------------------------------------------------------------------


def test_filter_matches_components_below_the_most_specific_root():
    """Exclusion looks at components below the deepest root containing the path."""
    flt = _Filter.build(["/srv/app", "/srv/app/.venv/src"], [], ["build"])
    assert flt.wants("/srv/app/pkg/mod.py")
    assert not flt.wants("/srv/app/build/mod.py")
    assert not flt.wants("/srv/app/.venv/lib/mod.py")
    assert flt.wants("/srv/app/.venv/src/mod.py")
    assert not flt.wants("/srv/app/pkg/mod.pyc")
    assert not flt.wants("/srv/app/pkg/data.json")


def test_describe_summarises_dirs_and_patterns(tmp_path):
    """describe() is one line: directories, include patterns, then every exclude pattern."""
    text = describe([str(tmp_path)], ["*.py", "*.html"], ["node_modules", ".*"])
    assert text == (
        f"watching {tmp_path.resolve()} (*.py, *.html; "
        "excluding .*, *.py[cod], *.sw.*, ~*, __pycache__, node_modules)"
    )


def test_describe_defaults_to_the_current_directory(tmp_path, monkeypatch):
    """With no directories and no patterns, describe() shows the defaults."""
    monkeypatch.chdir(tmp_path)
    assert describe([], [], []) == (
        f"watching {tmp_path.resolve()} (*.py; excluding .*, *.py[cod], *.sw.*, ~*, __pycache__)"
    )
