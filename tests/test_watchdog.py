"""Stalled means stalled: the watchdog judges a project against the schedule the request
budget allows its refresh, never against the time since its last outcome.

On injected clocks. A refresh the budget spreads over its whole effective interval, its
projects listed by discovery in a new order each time, is never stalled; neither is one
that a 429 pause or the process's own pause (SIGSTOP) holds back. A poll that hangs is
still stalled, just after its refresh's span plus the margin and not before.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from exporter.config import ApiSettings
from exporter.errors import POLL_ERROR_REASONS
from exporter.models import (
    ProjectResource,
    ProjectsPage,
    UsageAnswer,
    parse_document,
    read_usage,
)
from exporter.poller import Target
from exporter.ratelimit import RequestBudget
from exporter.schedule import Schedule
from exporter.snapshot import ProjectStatus
from exporter.store import SnapshotStore
from exporter.watchdog import Team, Watchdog
from exporter.wiring import stall_margin
from testing.waits import wait_for
from tests.conftest import new_poller

TEAM = "t"
#: The hostile round's account: 40 projects behind a key of 120 requests a minute.
PROJECTS = [f"proj_{i:02d}" for i in range(40)]
RATE = 120.0
#: What one poll may take with its retries: small, as in the hostile round.
MARGIN = 4.0


def attributes(project_id: str) -> UsageAnswer:
    body = json.dumps({"data": {"attributes": {"project": {"id": project_id}, "price": 100}}})
    return UsageAnswer(read_usage(project_id, body.encode()), body.encode())


def status(store: SnapshotStore, project: str) -> ProjectStatus:
    return next(p for p in store.view().projects if p.project_id == project)


def stalled(store: SnapshotStore) -> dict[str, int]:
    index = POLL_ERROR_REASONS.index("stalled")
    return {p.project_id: p.errors[index] for p in store.view().projects if p.errors[index]}


# --- a budget-paced world on a fake clock ---------------------------------------------


class World:
    """Monotonic time that moves only when something waits; the watchdog looks at
    every whole second that passes, as its own thread would."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.watchdog: Watchdog | None = None
        self.looks = 0

    def __call__(self) -> float:
        return self.now

    def advance_to(self, moment: float) -> None:
        while self.watchdog is not None and math.floor(self.now) + 1 <= moment:
            self.now = math.floor(self.now) + 1
            self.watchdog.check()
            self.looks += 1
        self.now = max(self.now, moment)

    def sleep(self, seconds: float) -> bool:
        self.advance_to(self.now + seconds)
        return False


class PacedApi:
    """The API as `LatitudeClient` meets it behind its budget: every request takes a
    slot of the budget and `latency` seconds, and is answered 200. /projects lists the
    projects in a new random order each time."""

    def __init__(
        self, world: World, budget: RequestBudget, ids: Sequence[str], latency: float = 0.1
    ) -> None:
        self.world = world
        self.budget = budget
        self.ids = list(ids)
        self.latency = latency
        self.random = random.Random(28)
        #: Called before each poll with how many came before it.
        self.before_poll: Callable[[int], None] = lambda count: None
        self.orders: list[list[str]] = []
        #: When each project's answers came.
        self.answers: dict[str, list[float]] = {}

    def _request(self, endpoint: str) -> None:
        self.budget.acquire()
        self.world.sleep(self.latency)

    def projects(self) -> list[ProjectResource]:
        self._request("/projects")
        order = list(self.ids)
        self.random.shuffle(order)
        self.orders.append(order)
        team = {"slug": TEAM, "currency": {"code": "USD"}}
        body = {"data": [{"id": p, "attributes": {"slug": p, "team": team}} for p in order]}
        return parse_document(ProjectsPage, json.dumps(body).encode()).data

    def billing_usage(
        self, project_id: str, *, plan: str | None = None, products: Sequence[str] = ()
    ) -> UsageAnswer:
        self.before_poll(sum(len(times) for times in self.answers.values()))
        self._request("/billing/usage")
        self.answers.setdefault(project_id, []).append(self.world.now)
        return attributes(project_id)


class Paced:
    """A team polled by the budget's pace on the world's clock: its poller, schedule
    and watchdog, and a log of refresh starts."""

    def __init__(self, interval: float, *, configured: bool) -> None:
        self.world = World()
        self.store = SnapshotStore()
        self.budget = RequestBudget(RATE, clock=self.world, sleep=self.world.sleep)
        self.api = PacedApi(self.world, self.budget, PROJECTS)
        self.poller = new_poller(
            self.api,
            self.store,
            team=TEAM,
            currency="USD" if configured else None,
            targets=[Target(p) for p in PROJECTS] if configured else (),
            interval=interval,
            # One poll at a time: only one thread ever moves the clock.
            concurrency=1,
            budget_seconds=self.budget.seconds_for,
            requests_made=self.budget.grants,
            grace=2.0,
            monotonic=self.world,
        )
        self.starts: list[float] = []
        self.runs = 0
        self.schedule = Schedule(
            TEAM, self.refresh, self.poller.effective_interval, clock=self.world, sleep=self.sleep
        )
        self.watchdog = Watchdog(
            [Team(self.poller, self.schedule)],
            self.store,
            margin=MARGIN,
            tick=1.0,
            clock=self.world,
        )
        self.world.watchdog = self.watchdog

    def refresh(self) -> None:
        if len(self.starts) == self.runs:
            self.schedule.stop()
            return
        self.starts.append(self.world.now)
        self.poller.refresh()

    def idle(self) -> None:
        wait_for(lambda: not self.poller._in_flight, message="the polls to end")

    def sleep(self, seconds: float) -> bool:
        moment = self.world.now + seconds
        # Polls that outlasted their refresh move the clock meanwhile: the schedule
        # waits for them, so that one thread at a time moves it.
        self.idle()
        self.world.advance_to(moment)
        return False

    def run(self, refreshes: int) -> None:
        self.runs = refreshes
        try:
            self.schedule.run()
            self.idle()
        finally:
            self.poller.stop(timeout=10)

    def longest_gap(self) -> float:
        """The longest time between two answers of one project."""
        return max(
            b - a for times in self.api.answers.values() for a, b in itertools.pairwise(times)
        )


def test_a_refresh_the_budget_spreads_over_its_interval_in_shuffled_order_is_never_stalled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The hostile round, on a fake clock: 40 discovered projects at 120 requests a
    minute (one every 0.5 s: a refresh takes 20.5 s, more than the 20 s interval),
    /projects in a new order each time, every poll answered. A project polled first in
    one refresh and last in the next goes about 40 s between answers, longer than the
    effective interval plus the margin: before, it was marked stalled (`up` 0, paged)."""
    team = Paced(interval=20.0, configured=False)
    with caplog.at_level(logging.WARNING, logger="exporter.watchdog"):
        team.run(refreshes=8)
    assert team.poller.effective_interval() == pytest.approx(20.5)  # stretched
    assert len({tuple(order) for order in team.api.orders}) == 8  # shuffled each time
    assert all(len(team.api.answers[p]) == 8 for p in PROJECTS)
    # The old rule's allowance is exceeded: the scenario is the hostile one.
    assert team.longest_gap() > 20.5 + MARGIN
    assert team.world.looks > 150  # the watchdog looked every second throughout
    assert stalled(team.store) == {}
    assert all(p.up for p in team.store.view().projects)
    assert [r.getMessage() for r in caplog.records if r.name == "exporter.watchdog"] == []
    assert team.schedule.restarts == 0


def test_a_process_pause_in_the_middle_of_a_paced_refresh_is_not_a_stall(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGSTOP for ten minutes half-way through a refresh the budget paces over 20 s:
    on resuming, its other half still takes its 10 s at the budget's pace. Before, the
    watchdog waited one margin and then marked those projects stalled."""
    team = Paced(interval=10.0, configured=True)  # 40 requests: stretched to 20 s

    def stop_the_process(count: int) -> None:
        if count == 60:  # half-way through the second refresh
            team.world.now += 600.0  # no look, no poll: the process is stopped
            # On resuming, the refresh is past its deadline: it ends and the schedule
            # starts the next one at once. Here the polls' thread moves the clock
            # faster than the schedule's thread reacts, so that start is recorded now.
            team.schedule.last_start = team.world.now

    team.api.before_poll = stop_the_process
    with caplog.at_level(logging.INFO, logger="exporter.watchdog"):
        team.run(refreshes=4)
    assert team.world.now > team.starts[0] + 600
    watchdog = [r for r in caplog.records if r.name == "exporter.watchdog"]
    assert [r.getMessage() for r in watchdog] == ["the process was paused; polling resumes"]
    assert all(len(team.api.answers[p]) >= 3 for p in PROJECTS)
    assert stalled(team.store) == {}
    assert all(p.up for p in team.store.view().projects)
    assert team.schedule.restarts == 0


# --- the limits, exactly --------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class HangingApi:
    """Answers at once, except for `hung`, whose poll waits until released. Each
    project's answer counts `requests[project]` requests (1 unless told: retries)."""

    def __init__(self, hung: str) -> None:
        self.hung = hung
        self.entered = threading.Event()
        self.release = threading.Event()
        self.requests: dict[str, int] = {}
        self.answered: list[str] = []
        #: Requests made so far: what the budget's grants count for the real client.
        self.made = 0

    def projects(self) -> list[ProjectResource]:
        raise AssertionError("the team is configured: no discovery")

    def billing_usage(
        self, project_id: str, *, plan: str | None = None, products: Sequence[str] = ()
    ) -> UsageAnswer:
        if project_id == self.hung:
            self.entered.set()
            self.release.wait(30)
        self.made += self.requests.get(project_id, 1)
        self.answered.append(project_id)
        return attributes(project_id)


class Hung:
    """A team of two projects, `a` and `b`, whose refreshes run in threads of their
    own; `b`'s poll hangs until the test ends. Interval 10 s; 0.5 s a request."""

    def __init__(self, clock: Clock | None = None, **kwargs: Any) -> None:
        self.clock = clock or Clock()
        self.store = SnapshotStore()
        self.api = HangingApi("b")
        self.poller = new_poller(
            self.api,
            self.store,
            team=TEAM,
            currency="USD",
            targets=[Target("a"), Target("b")],
            interval=10.0,
            concurrency=2,
            budget_seconds=lambda requests: requests * 0.5,
            grace=1.0,
            monotonic=self.clock,
            requests_made=lambda: self.api.made,
            **kwargs,
        )
        self.threads: list[threading.Thread] = []

    def refresh(self) -> None:
        """Start a refresh at the clock's time; return once `a` has its answer."""
        answered = self.api.answered.count("a")
        thread = threading.Thread(target=self.poller.refresh, daemon=True)
        thread.start()
        self.threads.append(thread)
        wait_for(lambda: self.api.answered.count("a") > answered, message="a's answer")
        wait_for(self.api.entered.is_set, message="b's poll to hang")

    def close(self) -> None:
        self.api.release.set()
        for thread in self.threads:
            thread.join(timeout=30)
        self.poller.stop(timeout=10)


@pytest.fixture
def hung() -> Iterator[Callable[..., Hung]]:
    made: list[Hung] = []

    def make(clock: Clock | None = None, **kwargs: Any) -> Hung:
        made.append(Hung(clock, **kwargs))
        return made[-1]

    yield make
    for team in made:
        team.close()


def test_a_hung_poll_is_overdue_just_after_its_refreshs_span_plus_the_margin(
    hung: Callable[..., Hung],
) -> None:
    team = hung()
    team.refresh()  # at 1000: span 10 s, margin 5 s
    assert team.poller.overdue(1015.0, 5.0) == []  # exactly at the limit: on time
    assert team.poller.overdue(1015.001, 5.0) == ["b"]  # just after: late
    # A process pause the watchdog noticed since the refresh started moves it too.
    assert team.poller.overdue(1020.0, 5.0, lambda since: 5.0 if since < 1016 else 0) == []
    assert team.poller.overdue(1020.001, 5.0, lambda since: 5.0) == ["b"]


def test_a_project_never_polled_is_overdue_after_one_span_plus_the_margin() -> None:
    """No refresh at all (its schedule never ran): the poller's creation stands for
    the first refresh's start."""
    store = SnapshotStore()
    clock = Clock()
    poller = new_poller(
        HangingApi("none"),
        store,
        team=TEAM,
        currency="USD",
        targets=[Target("a"), Target("b")],
        interval=10.0,
        monotonic=clock,
    )
    try:
        assert poller.overdue(1015.0, 5.0) == []
        assert poller.overdue(1015.001, 5.0) == ["a", "b"]
    finally:
        poller.stop(timeout=5)


def test_a_429_pause_of_the_budget_moves_the_deadline_by_its_length(
    hung: Callable[..., Hung],
) -> None:
    """Every request of the key waits out a 429's pause: the deadline moves with it, as
    it passes. A pause over before the refresh started is no excuse."""
    clock = Clock()
    budget = RequestBudget(120, clock=clock)
    clock.now = 990.0
    budget.pause(5)  # over at 995, before the refresh
    team = hung(clock, budget_paused=budget.paused_between)
    clock.now = 1000.0
    team.refresh()  # span 10 s, margin 5 s
    clock.now = 1010.0
    budget.pause(30)  # a 429 asking 30 s: held back until 1040
    assert team.poller.overdue(1030.0, 5.0) == []  # 20 s of it passed: due at 1035
    assert team.poller.overdue(1045.0, 5.0) == []
    assert team.poller.overdue(1045.001, 5.0) == ["b"]


def test_requests_beyond_the_plan_stretch_the_span_until_the_next_refresh(
    hung: Callable[..., Hung],
) -> None:
    """Retries and redirects take slots of the budget too: a refresh that made 25
    requests takes 12.5 s of it, not its 10 s interval. The requests of a later refresh
    are not the hung poll's refresh's: its deadline stays."""
    team = hung()
    team.api.requests["a"] = 25
    team.refresh()  # at 1000
    assert team.poller.overdue(1017.5, 5.0) == []
    assert team.poller.overdue(1017.501, 5.0) == ["b"]
    team.clock.now = 1020.0
    team.refresh()  # b still hangs: it still waits on the first refresh
    assert team.poller.overdue(1017.501, 5.0) == ["b"]
    assert team.poller.overdue(1020.0 + 12.5 + 5.0, 5.0) == ["b"]  # not "a": answered


def test_a_hung_poll_is_marked_stalled_by_the_watchdog_and_the_others_are_not(
    hung: Callable[..., Hung], caplog: pytest.LogCaptureFixture
) -> None:
    team = hung()
    team.refresh()
    schedule = Schedule(TEAM, lambda: None, team.poller.effective_interval, clock=team.clock)
    schedule.last_start = team.clock.now
    watchdog = Watchdog([Team(team.poller, schedule)], team.store, margin=5.0, clock=team.clock)
    with caplog.at_level(logging.WARNING, logger="exporter.watchdog"):
        for second in range(1, 16):
            team.clock.now = 1000.0 + second
            if second % 10 == 0:
                schedule.last_start = team.clock.now  # the next refresh starts on time
            watchdog.check()
        assert stalled(team.store) == {}
        team.clock.now = 1016.0
        watchdog.check()
    b = status(team.store, "b")
    assert (b.up, b.last_error) == (False, "stalled")
    assert b.polled  # the watchdog's verdict is its outcome: `up` 0 is exported
    assert status(team.store, "a").up
    assert stalled(team.store) == {"b": 1}
    assert [r.getMessage() for r in caplog.records] == ["polls overdue: marked stalled"]


#: A fraction of a second that binary floats hold exactly: boundaries stay exact.
EPSILON = 2.0**-10


def test_a_never_polled_project_waits_on_the_first_refresh_not_on_the_pollers_creation(
    hung: Callable[..., Hung],
) -> None:
    """The schedule's first refresh may start well after the poller was made (a slow
    start): a project that never had an outcome is judged from that refresh's start."""
    team = hung()  # made at 1000
    assert team.poller.overdue(1015.0, 5.0) == []
    assert team.poller.overdue(1015.0 + EPSILON, 5.0) == ["a", "b"]
    team.clock.now = 1100.0
    team.refresh()  # b's first poll hangs
    assert team.poller.overdue(1115.0, 5.0) == []
    assert team.poller.overdue(1115.0 + EPSILON, 5.0) == ["b"]


class DiscoveredApi:
    """/projects lists `listed`; a poll of a project in `hung` waits until released."""

    def __init__(self, listed: list[str], hung: set[str]) -> None:
        self.listed = listed
        self.hung = hung
        self.entered: set[str] = set()
        self.release = threading.Event()
        self.answered: list[str] = []

    def projects(self) -> list[ProjectResource]:
        team = {"slug": TEAM, "currency": {"code": "USD"}}
        body = {"data": [{"id": p, "attributes": {"team": team}} for p in self.listed]}
        return parse_document(ProjectsPage, json.dumps(body).encode()).data

    def billing_usage(
        self, project_id: str, *, plan: str | None = None, products: Sequence[str] = ()
    ) -> UsageAnswer:
        if project_id in self.hung:
            self.entered.add(project_id)
            self.release.wait(30)
        self.answered.append(project_id)
        return attributes(project_id)


def test_projects_discovered_behind_a_hung_poll_are_overdue_after_their_refresh() -> None:
    """One poll at a time: a newly discovered project whose poll hangs holds the others
    discovered with it in the queue. None of them ever has an outcome; each is
    overdue just past the span of the refresh that discovered it, never before, and
    never not at all."""
    clock = Clock()
    store = SnapshotStore()
    api = DiscoveredApi(["a"], hung={"b"})
    poller = new_poller(
        api,
        store,
        team=TEAM,
        interval=10.0,
        concurrency=1,
        budget_seconds=lambda requests: requests * 0.5,
        grace=1.0,
        monotonic=clock,
    )
    threads: list[threading.Thread] = []

    def refresh() -> None:
        thread = threading.Thread(target=poller.refresh, daemon=True)
        thread.start()
        threads.append(thread)

    try:
        refresh()  # at 1000: a alone
        threads[0].join(timeout=30)
        assert api.answered == ["a"]
        clock.now = 1020.0
        api.listed = ["b", "c", "a"]
        refresh()
        wait_for(lambda: "b" in api.entered, message="b's poll to hang")
        wait_for(lambda: len(poller.targets) == 3, message="c to be discovered")
        assert poller.overdue(1035.0, 5.0) == []
        assert sorted(poller.overdue(1035.0 + EPSILON, 5.0)) == ["a", "b", "c"]
    finally:
        api.release.set()
        for thread in threads:
            thread.join(timeout=30)
        poller.stop(timeout=10)
    assert sorted(api.answered) == ["a", "a", "b", "c"]
    assert poller.overdue(1e9, 5.0) == []  # every project had its outcome at last


@pytest.mark.parametrize(
    ("timeout", "retries", "margin"),
    [
        (10.0, 0, 10.0),  # one attempt, no wait
        (10.0, 1, 20.0 + 1.0),  # two attempts, one backoff of 1 s
        (10.0, 3, 40.0 + 1.0 + 2.0 + 4.0),
        (5.0, 8, 45.0 + 1 + 2 + 4 + 8 + 16 + 32 + 60 + 60),  # backoff capped at 60 s
    ],
)
def test_the_stall_margin_is_every_attempt_at_its_timeout_and_each_backoff(
    timeout: float, retries: int, margin: float
) -> None:
    api = ApiSettings(timeout_seconds=timeout, max_retries=retries)
    assert stall_margin(api) == margin


def test_a_refresh_keeps_the_span_it_started_with_when_discovery_shrinks_the_team() -> None:
    """A refresh planned for 30 projects (15.5 s at the budget's pace) whose discovery
    finds one: the projects still waiting on it keep the span it started with."""
    clock = Clock()
    store = SnapshotStore()
    api = DiscoveredApi([f"p{i:02d}" for i in range(30)], hung={"b"})
    poller = new_poller(
        api,
        store,
        team=TEAM,
        interval=10.0,
        concurrency=1,
        budget_seconds=lambda requests: requests * 0.5,
        grace=1.0,
        monotonic=clock,
    )
    thread = threading.Thread(target=poller.refresh, daemon=True)
    try:
        assert poller.refresh()  # at 1000: 30 projects and a page, 15.5 s
        assert poller.effective_interval() == 15.5
        clock.now = 1020.0
        api.listed = ["b"]
        thread.start()
        wait_for(lambda: "b" in api.entered, message="b's poll to hang")
        assert poller.effective_interval() == 10.0  # the next refresh's plan
        assert poller.overdue(1020.0 + 15.5 + 5.0, 5.0) == []
        assert poller.overdue(1020.0 + 15.5 + 5.0 + EPSILON, 5.0) == ["b"]
    finally:
        api.release.set()
        thread.join(timeout=30)
        poller.stop(timeout=10)
