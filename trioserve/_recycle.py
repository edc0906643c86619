"""Recycling workers by memory and by lifetime: the master's decisions, apart from its I/O.

The master gives each worker a :class:`Recycling` when it starts it. Every
:func:`sample_period` seconds it feeds the worker's resident memory (:func:`read_rss`,
from ``/proc/PID/statm``) to :meth:`Recycling.sample` and asks
:meth:`Recycling.expired`; a worker due for either is replaced the way ``--max-requests``
replaces one: a fresh worker takes the slot first, then the old one drains.

Why these numbers:

- One sample a second (:data:`SAMPLE_SECONDS`): reading ``/proc/PID/statm`` costs a few
  microseconds per worker, and a leak worth a restart grows over minutes, not within a
  second. trioserve's own tests shorten it with the ``TRIOSERVE_TEST_RECYCLE_SECONDS``
  environment variable of the master (:data:`PERIOD_ENV`); it is no setting.
- :data:`SAMPLES` (3) in a row over the limit: a request that holds a large buffer for a
  moment must not cost its worker a restart; a leak stays over the limit.
- The lifetime jitter is drawn once per worker, uniformly between 0 and
  ``--max-worker-lifetime-jitter``, so that workers started together (at boot, after a
  reload) do not all come due together.
- A replacement that fails to boot leaves the old worker serving; it is tried again
  :data:`RETRY_AFTER` (30) seconds later rather than at the next sample, so a broken
  deployment does not spawn a failing worker every second.

Nothing here awaits or reads a clock: the master passes its clock's ``now``, tests pass any.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path

import attrs

from ._config import Config
from ._errors import ConfigError
from ._hooks import ExitReason

#: Seconds between two memory samples (and lifetime checks) of each worker.
SAMPLE_SECONDS = 1.0
#: Consecutive samples over ``--max-worker-memory`` that make a worker due.
SAMPLES = 3
#: The master's environment variable that changes :data:`SAMPLE_SECONDS` (tests only).
PERIOD_ENV = "TRIOSERVE_TEST_RECYCLE_SECONDS"
#: Seconds a worker whose replacement failed to boot serves on before the next attempt.
RETRY_AFTER = 30.0
MIB = 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE")
_PROC = Path("/proc")


def sample_period(environ: Mapping[str, str]) -> float:
    """:data:`SAMPLE_SECONDS`, or the positive number of seconds :data:`PERIOD_ENV` gives."""
    try:
        period = float(environ.get(PERIOD_ENV, ""))
    except ValueError:
        return SAMPLE_SECONDS
    return period if 0 < period < float("inf") else SAMPLE_SECONDS


def read_rss(pid: int, proc: Path = _PROC) -> int | None:
    """Resident memory of process ``pid`` in bytes (as ``ps`` shows it: pages it shares
    with others, the preloader's for one, count too), or None if it cannot be read (the
    process is gone)."""
    try:
        fields = (proc / str(pid) / "statm").read_bytes().split()
        return int(fields[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def check_supported(config: Config, proc: Path | None = None) -> None:
    """Refuse ``--max-worker-memory`` where no worker's memory can be read (``proc``:
    where procfs is, ``/proc``).

    Raises:
        ConfigError: the setting is on and ``/proc/self/statm`` does not exist (not Linux).
    """
    root = _PROC if proc is None else proc
    if config.max_worker_memory and not (root / "self" / "statm").is_file():
        raise ConfigError(
            "--max-worker-memory: the master reads a worker's memory from /proc/PID/statm, "
            "which this system does not have (Linux only); set it to 0"
        )


@attrs.define(eq=False)
class Recycling:
    """Whether one worker is due for replacement by memory or by lifetime.

    Attributes:
        memory_limit: ``--max-worker-memory`` in bytes; 0 when off.
        started: When the worker was started (the master's clock).
        lifetime: ``--max-worker-lifetime`` in seconds; 0 when off.
        jitter: The random seconds this worker adds to ``lifetime``.
        over: Samples over ``memory_limit`` in a row, up to the last one.
        rss: The last sample, in bytes.
        not_before: It is not due before this time (after a failed replacement).
    """

    memory_limit: int = 0
    started: float = 0.0
    lifetime: float = 0.0
    jitter: float = 0.0
    over: int = 0
    rss: int = 0
    not_before: float = 0.0

    @classmethod
    def start(cls, config: Config, now: float, rng: random.Random | None = None) -> Recycling:
        """The watch of a worker started at ``now`` with ``config``; its jitter drawn
        from ``rng`` (the ``random`` module's by default)."""
        spread = config.max_worker_lifetime_jitter if config.max_worker_lifetime else 0.0
        jitter = (rng or random).uniform(0.0, spread) if spread else 0.0
        return cls(
            memory_limit=config.max_worker_memory * MIB,
            started=now,
            lifetime=config.max_worker_lifetime,
            jitter=jitter,
        )

    @property
    def deadline(self) -> float | None:
        """When its lifetime ends (the master's clock), or None without a lifetime."""
        return self.started + self.lifetime + self.jitter if self.lifetime else None

    def sample(self, rss: int | None) -> bool:
        """Count one sample of its resident memory (None: not readable, not counted);
        True once the last :data:`SAMPLES` samples were all over the limit."""
        if not self.memory_limit or rss is None:
            return False
        self.rss = rss
        self.over = self.over + 1 if rss > self.memory_limit else 0
        return self.over >= SAMPLES

    def expired(self, now: float) -> bool:
        """Whether it has run past its lifetime at ``now``."""
        deadline = self.deadline
        return deadline is not None and now >= deadline

    def due(self, now: float, rss: int | None) -> ExitReason | None:
        """Count the sample ``rss`` (see :meth:`sample`) taken at ``now``; why the worker
        is due for recycling now (memory first), or None."""
        memory = self.sample(rss)
        if now < self.not_before:
            return None
        if memory:
            return ExitReason.MEMORY
        if self.expired(now):
            return ExitReason.LIFETIME
        return None

    def retry_later(self, now: float) -> None:
        """Its replacement failed to boot at ``now``: not due again for :data:`RETRY_AFTER`
        seconds, and its memory samples are counted afresh."""
        self.over = 0
        self.not_before = now + RETRY_AFTER
