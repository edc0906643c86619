"""The file watcher behind ``--reload``: report batches of changed source files.

:func:`watch_files` watches directories recursively and sends each batch of
changed paths to a trio memory channel; the master rolling-restarts the
workers on each batch. Two backends:

- ``watchfiles`` (``pip install trioserve[reload]``): OS notifications
  (inotify, FSEvents, ReadDirectoryChangesW) through watchfiles' Rust core;
- ``poll``: a stdlib scan every ``poll_interval`` seconds comparing
  ``mtime_ns``, size and inode of the matching files.

Both backends share the same filtering (:class:`_Filter`) and the same
debouncing (:func:`_batch`), so they report the same batches.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import logging
import math
import os
import re
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal, cast

import attrs
import trio

from ._errors import ConfigError

if TYPE_CHECKING:
    from watchfiles import Change

__all__ = ["DEFAULT_EXCLUDE", "DEFAULT_INCLUDE", "Backend", "describe", "watch_files"]

LOGGER = logging.getLogger("trioserve.reload")

DEFAULT_INCLUDE: tuple[str, ...] = ("*.py",)
"""File-name patterns watched when no include pattern is given."""

DEFAULT_EXCLUDE: tuple[str, ...] = (".*", "*.py[cod]", "*.sw.*", "~*", "__pycache__")
"""Patterns always excluded, in addition to the ones given."""

# A burst of changes that never pauses for ``debounce`` seconds (a long
# checkout, a build writing files) is still reported after this many debounce
# windows, so the workers are not starved of restarts.
_MAX_DEBOUNCE_WINDOWS = 10

# watchfiles: how long the Rust watcher waits for changes (ms) before it checks
# back in with an empty batch. Only a fallback for noticing that the watcher is
# ready (see _StopEvent); stopping does not depend on it.
_RUST_TIMEOUT_MS = 1_000
# watchfiles: how often the Rust watcher checks for changes and for the stop
# event (ms); it is also the quiet time it waits for before returning changes.
_RUST_STEP_MS = 50

Backend = Literal["auto", "watchfiles", "poll"]
_Signature = tuple[int, int, int]


def _compile(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One regex matching a (normcased) name against any of the glob patterns."""
    regexes = [fnmatch.translate(os.path.normcase(pattern)) for pattern in patterns]
    return re.compile("|".join(regexes)) if regexes else None


@attrs.frozen
class _Filter:
    """Which paths under the watched roots are reported.

    A path is reported when its name matches an include pattern and neither its
    name nor any directory between it and its watched root matches an exclude
    pattern. Components above the root never count, so watching a directory
    inside ``~/.config`` works.
    """

    roots: tuple[str, ...]
    include: re.Pattern[str] | None
    exclude: re.Pattern[str] | None

    @classmethod
    def build(cls, roots: Sequence[str], include: Sequence[str], exclude: Sequence[str]) -> _Filter:
        """A filter for ``roots`` (absolute), applying the include/exclude defaults."""
        return cls(
            roots=tuple(roots),
            include=_compile(_include_patterns(include)),
            exclude=_compile(_exclude_patterns(exclude)),
        )

    def is_excluded(self, name: str) -> bool:
        """Whether a file or directory name matches an exclude pattern."""
        return self.exclude is not None and self.exclude.match(os.path.normcase(name)) is not None

    def is_included(self, name: str) -> bool:
        """Whether a file name matches an include pattern (and no exclude pattern)."""
        return (
            self.include is not None
            and self.include.match(os.path.normcase(name)) is not None
            and not self.is_excluded(name)
        )

    def wants(self, path: str) -> bool:
        """Whether a change to the file at the absolute ``path`` is reported."""
        *parents, name = self._parts(path)
        return self.is_included(name) and not any(self.is_excluded(part) for part in parents)

    def wants_dir(self, path: str) -> bool:
        """Whether files under the directory at the absolute ``path`` can be reported."""
        return not any(self.is_excluded(part) for part in self._parts(path))

    def _parts(self, path: str) -> list[str]:
        root = self.root_of(path)
        relative = os.path.relpath(path, root) if root is not None else os.path.basename(path)
        return relative.split(os.sep)

    def root_of(self, path: str) -> str | None:
        """The watched root ``path`` is under (not equal to), or None."""
        # The most specific root wins: a root named explicitly inside an
        # excluded directory of another root is still watched.
        best: str | None = None
        for root in self.roots:
            if path.startswith(os.path.join(root, "")) and (best is None or len(root) > len(best)):
                best = root
        return best


def _include_patterns(include: Sequence[str]) -> tuple[str, ...]:
    return tuple(include) or DEFAULT_INCLUDE


def _exclude_patterns(exclude: Sequence[str]) -> tuple[str, ...]:
    return DEFAULT_EXCLUDE + tuple(p for p in exclude if p not in DEFAULT_EXCLUDE)


def _roots(dirs: Sequence[str]) -> tuple[str, ...]:
    """The absolute, symlink-free directories to watch, without duplicates."""
    # realpath because FSEvents reports real paths, and a path reported by the
    # OS has to be matched against its root.
    paths = [os.path.realpath(d) for d in dirs] or [os.path.realpath(os.getcwd())]
    return tuple(dict.fromkeys(paths))


def _checked_roots(dirs: Sequence[str]) -> tuple[str, ...]:
    for d in dirs:
        if not os.path.exists(d):
            raise ConfigError(f"--reload-dir: no such directory {d!r}; give an existing directory")
        if not os.path.isdir(d):
            raise ConfigError(
                f"--reload-dir: {d!r} is not a directory; give the directory that contains it"
            )
    return _roots(dirs)


def describe(dirs: Sequence[str], include: Sequence[str], exclude: Sequence[str]) -> str:
    """A one-line summary of what :func:`watch_files` watches, for the log.

    Example: ``watching /srv/app (*.py; excluding .*, *.py[cod], *.sw.*, ~*, __pycache__)``.
    """
    return "watching {} ({}; excluding {})".format(
        ", ".join(_roots(dirs)),
        ", ".join(_include_patterns(include)),
        ", ".join(_exclude_patterns(exclude)),
    )


def _watchfiles_import_error() -> ImportError | None:
    """Why watchfiles cannot be imported, or None when it can."""
    try:
        importlib.import_module("watchfiles")
    except ImportError as exc:
        return exc
    return None


def _choose_backend(backend: str) -> Literal["watchfiles", "poll"]:
    if backend == "poll":
        return "poll"
    if backend not in ("auto", "watchfiles"):
        raise ValueError(f"backend: expected 'auto', 'watchfiles' or 'poll', got {backend!r}")
    error = _watchfiles_import_error()
    if error is None:
        return "watchfiles"
    if backend == "watchfiles":
        raise ConfigError(
            f"--reload: the watchfiles backend needs 'pip install trioserve[reload]' ({error})"
        )
    LOGGER.debug("watchfiles is not importable (%s); polling for changes", error)
    return "poll"


async def watch_files(
    dirs: Sequence[str],
    include: Sequence[str],
    exclude: Sequence[str],
    changes: trio.MemorySendChannel[frozenset[str]],
    *,
    backend: Backend = "auto",
    poll_interval: float = 0.5,
    debounce: float = 0.1,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Watch ``dirs`` recursively and send each batch of changed files to ``changes``.

    Runs until cancelled. Created, modified and deleted files are reported
    (directories are not, but the files already in a new directory are), as
    absolute paths under the real path of each watched directory. ``changes``
    is closed when this returns or raises.

    Args:
        dirs: Directories to watch recursively; empty means the current directory.
        include: Glob patterns on the file name (``fnmatch``); empty means ``*.py``.
        exclude: Glob patterns; a file is ignored when its name, or the name of
            any directory between it and the watched directory, matches. The
            :data:`DEFAULT_EXCLUDE` patterns are always added. Excluded
            directories are not descended into when polling.
        changes: Where each batch (a non-empty ``frozenset`` of paths) is sent.
        backend: ``"watchfiles"`` (OS notifications, needs the ``reload`` extra),
            ``"poll"``, or ``"auto"``: watchfiles when importable, else polling.
        poll_interval: Seconds between two scans of the ``poll`` backend.
        debounce: Changes that follow each other within this many seconds are
            sent as one batch (a burst is still sent after ten such windows).
        task_status: Started with the backend used (``"watchfiles"`` or
            ``"poll"``) once the initial state is recorded: a change made after
            :meth:`trio.Nursery.start` returns is always reported.

    Raises:
        ConfigError: A directory does not exist, or ``backend="watchfiles"``
            and watchfiles is not installed.
        ValueError: ``backend``, ``poll_interval`` or ``debounce`` is invalid.
    """
    async with changes:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval: expected seconds > 0, got {poll_interval!r}")
        if not debounce >= 0:
            raise ValueError(f"debounce: expected seconds >= 0, got {debounce!r}")
        roots = _checked_roots(dirs)
        used = _choose_backend(backend)
        flt = _Filter.build(roots, include, exclude)
        raw_send, raw_receive = trio.open_memory_channel[frozenset[str]](math.inf)
        # raw_receive is closed only once the backend has stopped, so the
        # backend never sends into a closed channel.
        async with raw_receive, trio.open_nursery() as nursery:
            if used == "watchfiles":
                await nursery.start(_watch_with_watchfiles, flt, raw_send)
            else:
                await nursery.start(_watch_by_polling, flt, raw_send, poll_interval)
            LOGGER.debug("watching %s with the %s backend", ", ".join(roots), used)
            task_status.started(used)
            await _batch(raw_receive, changes, debounce)
            # The backend ended or nobody listens any more: stop the backend.
            nursery.cancel_scope.cancel()


async def _batch(
    raw: trio.MemoryReceiveChannel[frozenset[str]],
    out: trio.MemorySendChannel[frozenset[str]],
    debounce: float,
) -> None:
    """Merge what ``raw`` receives into batches separated by ``debounce`` quiet seconds.

    Returns when the sending end of ``raw`` is closed (after sending what is
    pending) or when the receiving end of ``out`` is closed.
    """
    ended = False
    while not ended:
        try:
            pending = set(await raw.receive())
        except trio.EndOfChannel:
            return
        give_up = trio.current_time() + debounce * _MAX_DEBOUNCE_WINDOWS
        while True:
            with trio.move_on_at(min(trio.current_time() + debounce, give_up)) as quiet:
                try:
                    pending |= await raw.receive()
                except trio.EndOfChannel:
                    ended = True
                    break
            if quiet.cancelled_caught:
                break
        LOGGER.debug("%d file(s) changed: %s", len(pending), ", ".join(sorted(pending)))
        try:
            await out.send(frozenset(pending))
        except trio.BrokenResourceError:
            return


# --- polling ------------------------------------------------------------------------------------


def _scan(flt: _Filter, tops: Iterable[str] | None = None) -> dict[str, _Signature]:
    """The ``(mtime_ns, size, inode)`` of every watched file, by path (runs in a thread).

    Scans the watched roots, or only the ``tops`` directories under them.
    """
    found: dict[str, _Signature] = {}
    for top in flt.roots if tops is None else tops:
        stack = [top]
        while stack:
            try:
                entries = os.scandir(stack.pop())
            except OSError:  # removed or unreadable since it was listed
                continue
            with entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if not flt.is_excluded(entry.name):
                                stack.append(entry.path)
                        elif flt.is_included(entry.name) and entry.is_file():
                            st = entry.stat()
                            # The inode catches editors that save by replacing
                            # the file within the mtime granularity.
                            found[entry.path] = (st.st_mtime_ns, st.st_size, st.st_ino)
                    except OSError:
                        continue
    return found


def _diff(old: dict[str, _Signature], new: dict[str, _Signature]) -> set[str]:
    """Paths created, modified or deleted between two scans."""
    changed = {path for path, signature in new.items() if old.get(path) != signature}
    changed.update(old.keys() - new.keys())
    return changed


async def _watch_by_polling(
    flt: _Filter,
    raw: trio.MemorySendChannel[frozenset[str]],
    poll_interval: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The ``poll`` backend: scan every ``poll_interval`` seconds, send what differs."""
    async with raw:
        # Not abandon_on_cancel: a scan takes milliseconds and cancelling must
        # not leave a thread walking the tree behind.
        state = await trio.to_thread.run_sync(_scan, flt)
        task_status.started()
        while True:
            await trio.sleep(poll_interval)
            new = await trio.to_thread.run_sync(_scan, flt)
            changed = _diff(state, new)
            state = new
            if changed:
                raw.send_nowait(frozenset(changed))


# --- watchfiles ---------------------------------------------------------------------------------


class _StopEvent:
    """The ``stop_event`` given to ``watchfiles.awatch``; it also tells when watching has begun.

    On trio, awatch waits in a thread that cannot be cancelled (anyio's
    ``to_thread.run_sync`` does not abandon threads), and only returns when the
    Rust watcher sees changes, times out, or finds ``stop_event.is_set()``: so
    cancelling means setting this event. The Rust watcher polls ``is_set()``
    from its thread only once it exists and has registered its watches; the
    first such call is therefore the moment changes start being recorded.
    """

    def __init__(self) -> None:
        self.ready = trio.Event()
        self._stopped = False
        self._token = trio.lowlevel.current_trio_token()
        self._trio_thread = threading.get_ident()
        self._told_ready = False

    def is_set(self) -> bool:
        """Whether watching should stop; called by watchfiles, from its thread."""
        if not self._told_ready and threading.get_ident() != self._trio_thread:
            self._told_ready = True
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self.ready.set)
        return self._stopped

    def set(self) -> None:
        """Ask the watcher to stop; it returns within one step."""
        self._stopped = True


async def _watch_with_watchfiles(
    flt: _Filter,
    raw: trio.MemorySendChannel[frozenset[str]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The ``watchfiles`` backend: OS notifications through ``watchfiles.awatch``."""
    stop = _StopEvent()
    async with raw, trio.open_nursery() as nursery:
        nursery.start_soon(_consume_awatch, flt, raw, stop)
        try:
            await stop.ready.wait()
            task_status.started()
            await trio.sleep_forever()
        finally:
            # Runs as soon as we are cancelled, while awatch's thread cannot be.
            stop.set()


async def _consume_awatch(
    flt: _Filter, raw: trio.MemorySendChannel[frozenset[str]], stop: _StopEvent
) -> None:
    import watchfiles

    added = watchfiles.Change.added

    def wanted(change: Change, path: str) -> bool:
        # A directory that appears (mkdir, a checkout, a move) may hold files
        # created before the OS watch on it was in place, which will never be
        # reported: keep it, to report what it contains (see _expand).
        return flt.wants(path) or (change == added and flt.wants_dir(path))

    watcher = watchfiles.awatch(
        # A root inside another root is covered by the recursive watch.
        *(root for root in flt.roots if flt.root_of(root) is None),
        watch_filter=wanted,
        # awatch only calls is_set() and set(); its type hint lists the event
        # classes of each async library, which _StopEvent is not.
        stop_event=cast("trio.Event", stop),
        step=_RUST_STEP_MS,
        rust_timeout=_RUST_TIMEOUT_MS,
        # A timeout, like a change, proves the watcher is running: a fallback
        # for _StopEvent's readiness signal.
        yield_on_timeout=True,
    )
    # aclosing: the generator owns the Rust watcher (an inotify fd and a
    # thread); close it now, not when the garbage collector gets to it.
    async with contextlib.aclosing(watcher):
        async for batch in watcher:
            stop.ready.set()
            if batch:
                found = await trio.to_thread.run_sync(_expand, flt, batch, added)
                if found:
                    raw.send_nowait(found)


def _expand(flt: _Filter, batch: set[tuple[Change, str]], added: Change) -> frozenset[str]:
    """The files a watchfiles batch is about, with new directories replaced by their files."""
    files: set[str] = set()
    new_dirs: list[str] = []
    for change, path in batch:
        if change == added and os.path.isdir(path):
            new_dirs.append(path)
        elif flt.wants(path):
            files.add(path)
    files.update(_scan(flt, new_dirs))
    return frozenset(files)
