"""The monotonic schedule and the watchdog, on injected clocks: runs one interval apart,
never skipped, never two at once; late polling turned into `up 0` with reason stalled;
a stuck schedule restarted; a paused process not mistaken for a stuck one."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest

from exporter.errors import POLL_ERROR_REASONS
from exporter.schedule import Schedule
from exporter.snapshot import ProjectStatus
from exporter.store import SnapshotStore
from exporter.watchdog import PAUSE_SECONDS, Team, Watchdog
from testing.waits import wait_for
from tests.conftest import usage_of


class Clock:
    """A monotonic clock that moves only when told (or when the schedule sleeps)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleeper(self, runs: int, starts: list[float]) -> Callable[[float], bool]:
        """A `sleep` that moves the clock, and stops the schedule after `runs` runs."""

        def sleep(seconds: float) -> bool:
            self.sleeps.append(seconds)
            self.now += seconds
            return len(starts) >= runs

        return sleep


def test_runs_start_one_interval_apart_whatever_they_take() -> None:
    clock = Clock()
    starts: list[float] = []

    def job() -> None:
        starts.append(clock.now)
        clock.now += 0.3  # the refresh takes 0.3 s of the 1 s interval

    Schedule("t", job, lambda: 1.0, clock=clock, sleep=clock.sleeper(5, starts)).run()
    assert starts == pytest.approx([1000.0, 1001.0, 1002.0, 1003.0, 1004.0])
    assert clock.sleeps == pytest.approx([0.7] * 5)


def test_an_overrunning_run_is_followed_at_once_once_never_skipped() -> None:
    """A run longer than the interval: the next runs right after it, once (no catch-up
    burst for the runs it 'missed'), and two never overlap."""
    clock = Clock()
    starts: list[float] = []
    running = threading.Lock()

    def job() -> None:
        assert running.acquire(blocking=False), "two runs at once"
        starts.append(clock.now)
        clock.now += 2.5 if len(starts) == 2 else 0.1
        running.release()

    Schedule("t", job, lambda: 1.0, clock=clock, sleep=clock.sleeper(5, starts)).run()
    assert starts == pytest.approx([1000.0, 1001.0, 1003.5, 1004.5, 1005.5])


def test_the_interval_is_asked_again_after_every_run() -> None:
    """The request budget stretches the interval as the number of projects grows."""
    clock = Clock()
    starts: list[float] = []
    intervals = iter([1.0, 5.0, 2.0, 2.0])

    Schedule(
        "t",
        lambda: starts.append(clock.now),
        lambda: next(intervals),
        clock=clock,
        sleep=clock.sleeper(4, starts),
    ).run()
    assert starts == pytest.approx([1000.0, 1001.0, 1006.0, 1008.0])


def test_a_crashing_refresh_is_logged_and_the_schedule_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    starts: list[float] = []

    def job() -> None:
        starts.append(clock.now)
        if len(starts) == 1:
            raise RuntimeError("a bug")

    with caplog.at_level(logging.ERROR, logger="exporter.schedule"):
        Schedule("t", job, lambda: 1.0, clock=clock, sleep=clock.sleeper(3, starts)).run()
    assert len(starts) == 3
    assert [r.getMessage() for r in caplog.records] == ["refresh crashed"]


def test_a_restart_leaves_a_stuck_run_behind_and_polls_again() -> None:
    """The watchdog's remedy: a new thread runs the schedule while the stuck run ends
    on its own; the old thread then exits instead of running a second schedule."""
    release = threading.Event()
    started = threading.Semaphore(0)
    runs = []

    def job() -> None:
        runs.append(threading.current_thread().name)
        started.release()
        if len(runs) == 1:
            release.wait(30)  # stuck, until the test lets it go

    schedule = Schedule("t", job, lambda: 3600.0)
    schedule.start()
    try:
        assert started.acquire(timeout=10)
        first = schedule._thread
        schedule.restart()
        assert started.acquire(timeout=10)  # the new thread ran at once
        assert schedule.restarts == 1
        release.set()
        assert first is not None
        first.join(timeout=10)
        assert not first.is_alive()  # the old thread ended instead of waiting an hour
        assert len(runs) == 2
    finally:
        schedule.stop()
        release.set()


def test_a_run_that_takes_exactly_the_interval_is_followed_at_once_without_a_wait() -> None:
    clock = Clock()
    starts: list[float] = []
    waits: list[float] = []

    def job() -> None:
        starts.append(clock.now)
        clock.now += 1.0 if len(starts) == 1 else 0.25
        if len(starts) == 3:
            schedule.stop()

    def sleep(seconds: float) -> bool:
        waits.append(seconds)
        clock.now += seconds
        return False

    schedule = Schedule("t", job, lambda: 1.0, clock=clock, sleep=sleep)
    schedule.run()
    assert starts == [1000.0, 1001.0, 1002.0]
    assert waits == [0.75, 0.75]  # none after the run that took the whole interval


def test_a_started_schedule_is_due_since_each_runs_start_in_its_own_thread() -> None:
    """What the watchdog reads (`due_since`) of a schedule running as the daemon runs it:
    started, in its own thread, its runs one interval apart or at once after an overrun,
    and restarted while a run is stuck."""
    clock = Clock()
    entered = threading.Semaphore(0)
    go = threading.Semaphore(0)
    waits: list[float] = []

    def job() -> None:
        entered.release()
        assert go.acquire(timeout=30)

    def sleep(seconds: float) -> bool:
        waits.append(seconds)
        clock.now += seconds
        return schedule._stopped.is_set()

    schedule = Schedule("t", job, lambda: 10.0, clock=clock, sleep=sleep)
    assert schedule.due_since() is None  # not started: nothing is due
    schedule.start()
    try:
        assert entered.acquire(timeout=10)
        assert (schedule.started_at, schedule.due_since()) == (1000.0, 1000.0)
        clock.now = 1004.0  # the first run takes 4 s
        go.release()
        assert entered.acquire(timeout=10)
        assert waits == [6.0]  # one interval after the first run *started*
        assert (schedule.started_at, schedule.due_since()) == (1000.0, 1010.0)
        clock.now = 1025.0  # the second run overran its interval: 15 s
        go.release()
        assert entered.acquire(timeout=10)
        assert waits == [6.0]  # the third started at once
        assert schedule.due_since() == 1025.0
        clock.now = 1040.0  # the third is stuck: the watchdog restarts the schedule
        schedule.restart()
        assert entered.acquire(timeout=10)  # a new thread, a new run at once
        assert (schedule.restarts, schedule.started_at, schedule.due_since()) == (
            1,
            1040.0,
            1040.0,
        )
    finally:
        schedule.stop()
        go.release()
        go.release()
    assert schedule.join(10)
    assert waits == [6.0, 10.0]  # the new thread's wait, cut short by the stop


def test_a_started_schedule_that_never_ran_is_due_since_it_started() -> None:
    clock = Clock()
    schedule = Schedule("t", lambda: None, lambda: 10.0, clock=clock)
    schedule.stop()  # its thread ends before a first run
    schedule.start()
    assert schedule.join(10)
    assert schedule.last_start is None
    assert schedule.due_since() == 1000.0


# --- the watchdog -------------------------------------------------------------------


class FakePoller:
    """What the watchdog reads of a poller, set by the test."""

    def __init__(self, store: SnapshotStore, projects: list[str]) -> None:
        self.team = "t"
        self.key = "t"
        self.projects = projects
        self.interval = 10.0
        self.outcomes: dict[str, float] = {}
        store.add_team("t")
        store.record_refresh("t", duration=1.0, effective_interval=10.0)
        store.set_projects("t", [(p, "") for p in projects])
        for project in projects:
            store.record_success(
                "t", usage_of(demo_answer(project), project), duration=0.1, now=1.0
            )

    def effective_interval(self) -> float:
        return self.interval

    def overdue(self, now: float, margin: float, paused: Callable[[float], float]) -> list[str]:
        """Each project waits on the refresh after its last outcome, due one interval
        plus the margin later (the real rule, `Poller.overdue`, is tested on its own)."""
        allowance = self.interval + margin
        return [p for p in self.projects if now - self.outcomes.get(p, 0.0) > allowance]


def demo_answer(project: str) -> dict[str, object]:
    return {"data": {"attributes": {"project": {"id": project}, "price": 100}}}


class FakeSchedule(Schedule):
    def __init__(self, clock: Clock) -> None:
        super().__init__("t", lambda: None, lambda: 10.0, clock=clock)
        self.restarted = 0

    def restart(self) -> None:
        self.restarted += 1
        self.last_start = self._clock()


def status(store: SnapshotStore, project: str) -> ProjectStatus:
    return next(p for p in store.view().projects if p.project_id == project)


def stalled(store: SnapshotStore, project: str) -> int:
    return status(store, project).errors[POLL_ERROR_REASONS.index("stalled")]


@pytest.fixture
def rig() -> tuple[Clock, SnapshotStore, FakePoller, FakeSchedule, Watchdog]:
    clock = Clock()
    store = SnapshotStore()
    poller = FakePoller(store, ["a", "b"])
    poller.outcomes = {"a": clock.now, "b": clock.now}
    schedule = FakeSchedule(clock)
    schedule.last_start = clock.now
    watchdog = Watchdog([Team(poller, schedule)], store, margin=5.0, tick=1.0, clock=clock)
    return clock, store, poller, schedule, watchdog


def test_a_project_without_an_outcome_in_time_is_stalled_once_per_episode(
    rig: tuple[Clock, SnapshotStore, FakePoller, FakeSchedule, Watchdog],
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, store, poller, schedule, watchdog = rig

    def tick(seconds: float) -> None:
        for _ in range(int(seconds)):
            clock.now += 1.0
            schedule.last_start = clock.now  # the team's refreshes start on time
            watchdog.check()

    tick(15)  # interval 10 + margin 5: not yet late
    assert status(store, "b").up
    poller.outcomes["a"] = clock.now  # a was polled; b's poll hangs
    with caplog.at_level(logging.WARNING, logger="exporter.watchdog"):
        tick(3)
    b = status(store, "b")
    assert (b.up, b.last_error, stalled(store, "b")) == (False, "stalled", 1)
    assert b.usage is not None  # the last figures are kept, marked not fresh
    assert status(store, "a").up
    assert [r.getMessage() for r in caplog.records] == ["polls overdue: marked stalled"]
    tick(30)
    assert stalled(store, "b") == 1  # still the same episode: counted once
    store.record_failure("t", "b", "timeout", duration=16.0)  # its poll ended at last
    poller.outcomes["b"] = clock.now
    tick(16)
    assert stalled(store, "b") == 2  # late again: a second episode
    assert schedule.restarted == 0


def test_a_team_whose_refresh_does_not_start_is_stalled_and_restarted(
    rig: tuple[Clock, SnapshotStore, FakePoller, FakeSchedule, Watchdog],
) -> None:
    clock, store, poller, schedule, watchdog = rig
    for _ in range(15):
        clock.now += 1.0
        poller.outcomes = dict.fromkeys(poller.projects, clock.now)
        watchdog.check()
    assert schedule.restarted == 0
    clock.now += 1.5  # 16.5 s since the last start: 10 s interval + 5 s margin passed
    watchdog.check()
    assert schedule.restarted == 1
    view = store.view()
    assert not view.ready and "stalled" in (view.not_ready or "")
    assert all(not p.up and p.last_error == "stalled" for p in view.projects)
    store.record_refresh("t", duration=None, effective_interval=10.0)  # it starts again
    assert store.view().ready


def test_a_paused_process_is_given_a_margin_before_anything_is_stalled(
    rig: tuple[Clock, SnapshotStore, FakePoller, FakeSchedule, Watchdog],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGSTOP, a suspended VM: every clock reading jumps at once. The schedules resume
    by themselves; the watchdog must not restart them or mark their projects first."""
    clock, store, poller, schedule, watchdog = rig
    watchdog.check()
    with caplog.at_level(logging.INFO, logger="exporter.watchdog"):
        clock.now += 600  # ten minutes stopped
        watchdog.check()
    assert "paused" in caplog.records[0].getMessage()
    assert schedule.restarted == 0 and status(store, "a").up
    clock.now += 1.0
    schedule.last_start = clock.now  # the schedule resumed at once
    poller.outcomes = dict.fromkeys(poller.projects, clock.now)
    for _ in range(4):
        clock.now += 1.0
        watchdog.check()
    assert schedule.restarted == 0 and status(store, "a").up


def test_the_watchdog_thread_outlives_a_failing_check(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        team = "t"
        key = "t"

        def effective_interval(self) -> float:
            raise RuntimeError("a bug")

        def overdue(self, now: float, margin: float, paused: Callable[[float], float]) -> list[str]:
            return []

    store = SnapshotStore()
    schedule = Schedule("t", lambda: None, lambda: 1.0)
    schedule.last_start = 0.0
    watchdog = Watchdog([Team(Broken(), schedule)], store, margin=1.0, tick=0.01)
    with caplog.at_level(logging.ERROR, logger="exporter.watchdog"):
        watchdog.start()
        try:
            wait_for(
                lambda: len([r for r in caplog.records if "watchdog" in r.getMessage()]) >= 2,
                message="two failed checks, the thread still looking",
            )
        finally:
            watchdog.stop()


# --- the watchdog's limits, exactly ---------------------------------------------------

#: A fraction of a second that binary floats hold exactly: boundaries stay exact.
EPSILON = 2.0**-10


def test_a_team_is_stalled_only_past_its_interval_plus_the_margin(
    rig: tuple[Clock, SnapshotStore, FakePoller, FakeSchedule, Watchdog],
) -> None:
    clock, store, poller, schedule, watchdog = rig
    for _ in range(15):  # 15 s since the last start: the interval (10) plus margin (5)
        clock.now += 1.0
        poller.outcomes = dict.fromkeys(poller.projects, clock.now)
        watchdog.check()
    assert schedule.restarted == 0
    assert store.view().ready
    clock.now += EPSILON
    watchdog.check()
    assert schedule.restarted == 1
    assert not store.view().ready


def test_a_schedule_not_started_yet_is_never_stalled(
    rig: tuple[Clock, SnapshotStore, FakePoller, FakeSchedule, Watchdog],
) -> None:
    clock, _store, poller, schedule, watchdog = rig
    schedule.last_start = None
    watchdog.check()
    clock.now += 1.0
    poller.outcomes = dict.fromkeys(poller.projects, clock.now + 3600)
    for _ in range(100):
        clock.now += 1.0
        watchdog.check()
    assert schedule.restarted == 0


@pytest.mark.parametrize(
    ("gap", "paused"),
    [(1.0 + PAUSE_SECONDS, False), (1.0 + PAUSE_SECONDS + EPSILON, True)],
    ids=["late", "paused"],
)
def test_a_look_up_to_pause_seconds_late_is_judged_at_once_and_beyond_it_held(
    rig: tuple[Clock, SnapshotStore, FakePoller, FakeSchedule, Watchdog],
    caplog: pytest.LogCaptureFixture,
    gap: float,
    paused: bool,
) -> None:
    """The window between late and paused: a look that comes up to `PAUSE_SECONDS`
    after its tick is a busy process, and a team late by then is stalled at once; a
    later one is a pause of the process, and the watchdog waits one margin first."""
    clock, _store, _poller, schedule, watchdog = rig
    schedule.last_start = clock.now + gap - 15.0 - EPSILON  # late at the next look
    watchdog.check()
    assert schedule.restarted == 0
    with caplog.at_level(logging.INFO, logger="exporter.watchdog"):
        clock.now += gap
        watchdog.check()
    said = [r.getMessage() for r in caplog.records]
    assert ("the process was paused; polling resumes" in said) is paused
    assert schedule.restarted == (0 if paused else 1)
    noticed = clock.now
    assert watchdog.paused_since(noticed - gap) == (gap - 1.0 if paused else 0.0)
    assert watchdog.paused_since(noticed) == 0.0  # a pause noticed at `since` is not after it


def test_after_a_pause_the_teams_are_judged_again_exactly_one_margin_later(
    rig: tuple[Clock, SnapshotStore, FakePoller, FakeSchedule, Watchdog],
) -> None:
    clock, _store, poller, schedule, watchdog = rig
    schedule.last_start = clock.now - 100.0  # late all along, and never restarted yet
    poller.outcomes = dict.fromkeys(poller.projects, clock.now + 3600)
    clock.now -= 1.0
    watchdog._last_look = clock.now  # as if started a second ago
    clock.now += 1.0 + PAUSE_SECONDS + EPSILON  # a pause: hold until now + margin (5)
    watchdog.check()
    resumed = clock.now
    assert watchdog.paused_since(resumed - 10) == PAUSE_SECONDS + EPSILON
    for second in range(1, 5):
        clock.now = resumed + second
        watchdog.check()
    clock.now = resumed + 5.0 - EPSILON
    watchdog.check()
    assert schedule.restarted == 0
    clock.now = resumed + 5.0
    watchdog.check()
    assert schedule.restarted == 1


def test_the_first_look_after_start_notices_a_pause_since_the_start() -> None:
    clock = Clock()
    store = SnapshotStore()
    poller = FakePoller(store, ["a"])
    schedule = FakeSchedule(clock)
    schedule.last_start = clock.now
    # A tick of an hour: the watchdog's own thread never looks during the test.
    watchdog = Watchdog([Team(poller, schedule)], store, margin=5.0, tick=3600.0, clock=clock)
    watchdog.start()
    try:
        clock.now += 3600.0 + PAUSE_SECONDS + EPSILON
        poller.outcomes = {"a": clock.now}
        watchdog.check()  # the team is an hour late, but the process was stopped
        assert schedule.restarted == 0
        assert watchdog.paused_since(1000.0) == PAUSE_SECONDS + EPSILON
    finally:
        watchdog.stop()


def test_a_started_schedule_stuck_in_its_first_run_is_restarted_by_the_watchdog() -> None:
    """A real schedule, started as the daemon starts it (the other tests use one that
    never started): due since its first run's start, restarted just past its interval
    plus the margin, due since the restart's run from then on."""
    clock = Clock()
    store = SnapshotStore()
    poller = FakePoller(store, ["a"])
    entered = threading.Semaphore(0)
    release = threading.Event()

    def stuck() -> None:
        entered.release()
        release.wait(30)

    schedule = Schedule("t", stuck, lambda: 10.0, clock=clock)
    watchdog = Watchdog([Team(poller, schedule)], store, margin=5.0, tick=1.0, clock=clock)
    schedule.start()
    try:
        assert entered.acquire(timeout=10)
        watchdog.check()
        for second in range(1, 16):
            clock.now = 1000.0 + second
            poller.outcomes = {"a": clock.now}
            watchdog.check()
        assert schedule.restarts == 0
        clock.now = 1015.0 + EPSILON
        watchdog.check()
        assert schedule.restarts == 1
        assert entered.acquire(timeout=10)  # the new thread's run started at once
        assert schedule.due_since() == 1015.0 + EPSILON
        clock.now += 1.0
        watchdog.check()
        assert schedule.restarts == 1
    finally:
        schedule.stop()
        release.set()
    assert schedule.join(10)


def test_a_schedule_whose_thread_ended_before_a_first_run_is_stalled_from_its_start() -> None:
    """Started, but its thread never ran the first refresh: the watchdog judges it from
    the schedule's start (`due_since`), and restarts it just past interval + margin."""
    clock = Clock()
    store = SnapshotStore()
    poller = FakePoller(store, ["a"])
    schedule = Schedule("t", lambda: None, lambda: 10.0, clock=clock)
    schedule.stop()  # the thread ends before its first run
    schedule.start()
    assert schedule.join(10) and schedule.last_start is None
    restarts: list[float] = []
    schedule.restart = lambda: restarts.append(clock.now)  # type: ignore[method-assign]
    watchdog = Watchdog([Team(poller, schedule)], store, margin=5.0, tick=1.0, clock=clock)
    watchdog.check()
    for _ in range(15):
        clock.now += 1.0
        poller.outcomes = {"a": clock.now}
        watchdog.check()
    assert restarts == []
    clock.now += EPSILON
    watchdog.check()
    assert restarts == [1015.0 + EPSILON]


def test_pauses_of_the_process_add_up_from_the_moment_asked(
    rig: tuple[Clock, SnapshotStore, FakePoller, FakeSchedule, Watchdog],
) -> None:
    """Two stops of the process after a refresh started: its deadline moves by both."""
    clock, _store, _poller, _schedule, watchdog = rig
    watchdog.check()
    clock.now += 1.0 + 10.0  # stopped 10 s
    watchdog.check()
    first = clock.now
    clock.now += 1.0
    watchdog.check()
    clock.now += 1.0 + 30.0  # stopped 30 s more
    watchdog.check()
    assert watchdog.paused_since(first - 20) == 40.0
    assert watchdog.paused_since(first) == 30.0  # the first was noticed at `first`
    assert watchdog.paused_since(clock.now) == 0.0
