"""Tests for the recycling decisions by memory and lifetime (fake readings, no processes)."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pytest
import trio

from trioserve import Config, ConfigError, ExitReason, serve
from trioserve._recycle import (
    MIB,
    PERIOD_ENV,
    RETRY_AFTER,
    SAMPLE_SECONDS,
    SAMPLES,
    Recycling,
    check_supported,
    read_rss,
    sample_period,
)
from trioserve._server import _check_servable

APP = "tests.apps:hello"


def _watch(**settings: object) -> Recycling:
    return Recycling.start(Config(app=APP, **settings), 100.0)  # type: ignore[arg-type]


def test_memory_is_due_after_three_samples_in_a_row_over_the_limit() -> None:
    """Only SAMPLES consecutive samples over the limit make a worker due; one under the
    limit starts the count again; an unreadable sample neither counts nor resets."""
    watch = _watch(max_worker_memory=100)
    over, under = 101 * MIB, 100 * MIB  # the limit itself is not over it
    assert SAMPLES == 3
    assert [watch.sample(rss) for rss in (over, over, under, over, over)] == [False] * 5
    assert watch.over == 2
    assert watch.sample(None) is False and watch.over == 2
    assert watch.sample(over) is True
    assert (watch.over, watch.rss) == (3, over)
    assert watch.sample(over) is True  # stays due while it waits its turn


def test_without_a_memory_limit_nothing_is_counted() -> None:
    """--max-worker-memory 0: samples are ignored and never make a worker due."""
    watch = _watch()
    assert [watch.sample(10**12) for _ in range(5)] == [False] * 5
    assert watch.over == 0


def test_lifetime_deadline_is_start_plus_lifetime_plus_jitter() -> None:
    """A worker is due once lifetime plus its own jitter has passed since it started;
    without a lifetime it never is, whatever the jitter."""
    watch = Recycling.start(
        Config(app=APP, max_worker_lifetime=60, max_worker_lifetime_jitter=30),
        100.0,
        random.Random(7),
    )
    assert 0 <= watch.jitter <= 30
    assert watch.deadline == 160.0 + watch.jitter
    assert not watch.expired(159.99 + watch.jitter)
    assert watch.expired(160.0 + watch.jitter)
    never = _watch(max_worker_lifetime_jitter=30)
    assert (never.deadline, never.jitter, never.expired(10**9)) == (None, 0.0, False)


def test_jitter_spreads_the_deadlines_of_a_pool() -> None:
    """Workers started together get deadlines spread over [lifetime, lifetime + jitter]
    (drawn per worker); without jitter they all come due together."""
    config = Config(app=APP, max_worker_lifetime=60, max_worker_lifetime_jitter=30)
    rng = random.Random(1)
    deadlines = sorted(Recycling.start(config, 0.0, rng).deadline or 0 for _ in range(50))
    assert deadlines[0] >= 60 and deadlines[-1] <= 90
    assert deadlines[-1] - deadlines[0] > 20  # spread over most of the range
    assert len(set(deadlines)) == 50
    gaps = [later - earlier for earlier, later in itertools.pairwise(deadlines)]
    assert max(gaps) < 10  # no clump with a long silence beside it
    flat = Config(app=APP, max_worker_lifetime=60)
    assert {Recycling.start(flat, 0.0, rng).deadline for _ in range(5)} == {60.0}


def test_due_says_why_memory_first() -> None:
    """due() names the reason: memory before lifetime when both hold, lifetime alone once
    past the deadline, None before."""
    watch = _watch(max_worker_memory=1, max_worker_lifetime=10)
    assert watch.due(105.0, 2 * MIB) is None
    assert watch.due(111.0, 0) is ExitReason.LIFETIME
    assert watch.due(111.0, 2 * MIB) is ExitReason.LIFETIME  # a first sample over
    watch.due(111.0, 2 * MIB)
    assert watch.due(111.0, 2 * MIB) is ExitReason.MEMORY


def test_a_failed_replacement_postpones_the_next_attempt() -> None:
    """After retry_later the worker is not due for RETRY_AFTER seconds, and its memory
    samples count from zero again."""
    watch = _watch(max_worker_memory=1, max_worker_lifetime=10)
    for _ in range(SAMPLES):
        watch.due(200.0, 2 * MIB)
    watch.retry_later(200.0)
    assert watch.over == 0
    assert watch.due(200.0 + RETRY_AFTER - 1, 2 * MIB) is None
    assert watch.due(200.0 + RETRY_AFTER, 2 * MIB) is ExitReason.LIFETIME
    assert watch.due(200.0 + RETRY_AFTER, 2 * MIB) is ExitReason.MEMORY


def test_read_rss_reads_the_resident_pages_of_statm(tmp_path: Path) -> None:
    """read_rss is statm's second field times the page size; None for a process gone."""
    (tmp_path / "321").mkdir()
    (tmp_path / "321" / "statm").write_text("5000 1200 300 10 0 900 0\n")
    assert read_rss(321, tmp_path) == 1200 * os.sysconf("SC_PAGE_SIZE")
    assert read_rss(322, tmp_path) is None
    (tmp_path / "323").mkdir()
    (tmp_path / "323" / "statm").write_text("garbage")
    assert read_rss(323, tmp_path) is None


@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="needs Linux's /proc")
def test_read_rss_of_this_process_is_plausible() -> None:
    """On Linux the real reading of this process lies between 1 MiB and 10 GiB."""
    rss = read_rss(os.getpid())
    assert rss is not None and MIB < rss < 10 * 1024 * MIB


def test_memory_limit_is_refused_without_proc(tmp_path: Path) -> None:
    """Where /proc/self/statm does not exist the setting is a one-line configuration
    error naming it; 0 is fine anywhere, and so is any limit where it exists."""
    with pytest.raises(ConfigError) as info:
        check_supported(Config(app=APP, max_worker_memory=512), tmp_path)
    message = str(info.value)
    assert message.startswith("--max-worker-memory: ") and "\n" not in message
    check_supported(Config(app=APP), tmp_path)
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "statm").write_text("1 1 1 1 0 1 0\n")
    check_supported(Config(app=APP, max_worker_memory=512), tmp_path)


async def test_the_master_refuses_a_memory_limit_it_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without /proc, serving with --max-worker-memory fails before any worker starts."""
    monkeypatch.setattr("trioserve._recycle._PROC", tmp_path)
    config = Config(app=APP, workers=1, bind=["127.0.0.1:0"], max_worker_memory=64)
    with trio.fail_after(10), pytest.raises(ConfigError, match=r"^--max-worker-memory: "):
        await serve(config)


@pytest.mark.parametrize(
    ("setting", "flag"),
    [
        ("max_worker_memory", "--max-worker-memory"),
        ("max_worker_lifetime", "--max-worker-lifetime"),
    ],
)
def test_recycling_needs_worker_processes(setting: str, flag: str) -> None:
    """With --workers 0 there is no master to replace workers: a configuration error."""
    with pytest.raises(ConfigError, match=f"^{flag}: the master replaces worker processes"):
        _check_servable(Config(app=APP, workers=0, **{setting: 5}))  # type: ignore[arg-type]
    _check_servable(Config(app=APP, workers=1, **{setting: 5}))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "period"),
    [(None, SAMPLE_SECONDS), ("0.05", 0.05), ("0", SAMPLE_SECONDS), ("soon", SAMPLE_SECONDS)],
)
def test_sample_period_comes_from_the_test_variable(value: str | None, period: float) -> None:
    """One sample a second, unless the tests' variable gives a positive number."""
    assert sample_period({} if value is None else {PERIOD_ENV: value}) == period


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("max_worker_memory", "-1", "max_worker_memory: expected an integer >= 0, got -1"),
        ("max_worker_lifetime", "x", "max_worker_lifetime: expected a number of seconds >= 0"),
    ],
)
def test_bad_values_name_the_setting(flag: str, value: str, message: str) -> None:
    """A bad value is refused at load time, naming the setting."""
    with pytest.raises(ConfigError, match=message):
        Config(app=APP, **{flag: value})  # type: ignore[arg-type]
