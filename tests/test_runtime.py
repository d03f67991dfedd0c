"""`runtime.py`, tested in-process: `tune` (malloc's arenas, the minute's trim) and
`raise_file_limit`. The real mallopt is kept out of the test process."""

from __future__ import annotations

import gc
import platform
import resource
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from exporter import runtime


class FakeLibc:
    """glibc's two entry points `runtime` uses, written down instead of called."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", (param, value)))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", (pad,)))
        return 1


class NoMallopt:
    """A libc with malloc_trim only (as `hasattr` sees it)."""

    def __init__(self) -> None:
        self.trims = 0

    def malloc_trim(self, pad: int) -> int:
        self.trims += 1
        return 0


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real mallopt kept out of the test process unless a test lets it in."""
    monkeypatch.setattr(runtime, "_libc", lambda: None)


def fake_libc(monkeypatch: pytest.MonkeyPatch, libc: Any) -> None:
    monkeypatch.setattr(runtime, "_libc", lambda: libc)


def tuned(monkeypatch: pytest.MonkeyPatch, libc: Any = None) -> BackgroundScheduler:
    fake_libc(monkeypatch, libc)
    scheduler = BackgroundScheduler()
    runtime.tune(scheduler)
    return scheduler


# --- tune -------------------------------------------------------------------------------


@pytest.mark.usefixtures("restored")
def test_tune_leaves_the_collector_and_the_switch_interval_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Measured and dropped (benchmarks/RESULTS.md, section 14): nothing a user sees."""
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    frozen = gc.get_freeze_count()
    tuned(monkeypatch)
    assert gc.get_threshold() == thresholds
    assert sys.getswitchinterval() == interval
    assert gc.get_freeze_count() == frozen


@pytest.mark.usefixtures("restored")
def test_the_trim_runs_once_a_minute_coalesced(monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler = tuned(monkeypatch)
    (job,) = scheduler.get_jobs()
    assert job.id == "trim"
    assert job.func is runtime._trim
    assert job.trigger.interval == timedelta(seconds=60)
    assert runtime.TRIM_SECONDS == 60
    assert job.coalesce is True


@pytest.mark.usefixtures("restored")
def test_tune_holds_glibc_to_two_arenas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    libc = FakeLibc()
    tuned(monkeypatch, libc)
    # and gives back at once what the start (a warm start's load) left free
    assert libc.calls == [("mallopt", (runtime.M_ARENA_MAX, 2)), ("malloc_trim", (0,))]
    assert runtime.M_ARENA_MAX == -8  # malloc.h


@pytest.mark.usefixtures("restored")
def test_tune_never_overrides_the_operators_arena_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    libc = FakeLibc()
    tuned(monkeypatch, libc)
    assert libc.calls == [("malloc_trim", (0,))]


@pytest.mark.usefixtures("restored")
@pytest.mark.parametrize("libc", [None, NoMallopt()], ids=["no-glibc", "no-mallopt"])
def test_tune_without_mallopt_still_schedules_the_trim(
    monkeypatch: pytest.MonkeyPatch, libc: Any
) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    scheduler = tuned(monkeypatch, libc)
    assert len(scheduler.get_jobs()) == 1


def test_the_trim_gives_the_heap_back(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc()
    fake_libc(monkeypatch, libc)
    runtime._trim()
    assert libc.calls == [("malloc_trim", (0,))]


def test_the_trim_without_glibc_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_libc(monkeypatch, None)
    runtime._trim()  # no error, nothing to call


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc only",
)
def test_glibc_is_found_once_with_malloc_trim() -> None:
    libc = runtime._libc()
    assert libc is not None
    assert hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt")
    assert runtime._libc() is libc  # looked up once


def test_no_libc_outside_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    runtime._libc.cache_clear()
    try:
        assert runtime._libc() is None
    finally:
        monkeypatch.undo()
        runtime._libc.cache_clear()


# --- raise_file_limit ---------------------------------------------------------------------

INF = resource.RLIM_INFINITY


class FileLimits:
    """RLIMIT_NOFILE as getrlimit/setrlimit see it, with what was set."""

    def __init__(self, soft: int, hard: int, refuse: type[Exception] | None = None) -> None:
        self.soft, self.hard = soft, hard
        self.refuse = refuse
        self.set: list[tuple[int, int]] = []

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        if self.refuse is not None:
            raise self.refuse("refused")
        self.set.append(limits)
        self.soft, self.hard = limits


def with_limits(monkeypatch: pytest.MonkeyPatch, limits: FileLimits) -> FileLimits:
    monkeypatch.setattr(resource, "getrlimit", limits.getrlimit)
    monkeypatch.setattr(resource, "setrlimit", limits.setrlimit)
    return limits


def test_the_soft_limit_is_raised_to_the_hard_one(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = with_limits(monkeypatch, FileLimits(1024, 524_288))
    assert runtime.raise_file_limit() == 524_288
    assert limits.set == [(524_288, 524_288)]


def test_one_below_the_hard_limit_is_raised_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = with_limits(monkeypatch, FileLimits(4095, 4096))
    assert runtime.raise_file_limit() == 4096
    assert limits.set == [(4096, 4096)]


def test_a_soft_limit_at_the_hard_one_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = with_limits(monkeypatch, FileLimits(4096, 4096))
    assert runtime.raise_file_limit() == 4096
    assert limits.set == []


@pytest.mark.parametrize(
    ("soft", "expected", "set_to"),
    [
        (1024, 65536, [(65536, INF)]),
        (65535, 65536, [(65536, INF)]),
        (65536, 65536, []),
        (100_000, 100_000, []),
        (INF, INF, []),
    ],
)
def test_an_unlimited_hard_limit_raises_the_soft_one_to_65536_at_least(
    monkeypatch: pytest.MonkeyPatch, soft: int, expected: int, set_to: list[tuple[int, int]]
) -> None:
    limits = with_limits(monkeypatch, FileLimits(soft, INF))
    assert runtime.raise_file_limit() == expected
    assert limits.set == set_to


@pytest.mark.parametrize("error", [ValueError, OSError])
def test_a_refused_raise_keeps_and_returns_the_soft_limit(
    monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    with_limits(monkeypatch, FileLimits(1024, 4096, refuse=error))
    assert runtime.raise_file_limit() == 1024


@pytest.fixture
def file_limit() -> Iterator[tuple[int, int]]:
    """This process's open-files limits, put back after the test."""
    original = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        yield original
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, original)


def test_the_real_limit_is_raised_to_the_hard_one_and_never_above(
    file_limit: tuple[int, int],
) -> None:
    _, hard = file_limit
    if hard == INF:
        pytest.skip("no hard limit on open files here")
    lowered = max(hard // 2, 64)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    assert runtime.raise_file_limit() == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    assert runtime.raise_file_limit() == hard  # again: already there, unchanged
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
