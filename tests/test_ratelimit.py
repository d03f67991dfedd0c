"""The request budget: no window ever holds more requests than the limit."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import pytest

from benchmarks.measure import busiest_window
from exporter.client import LatitudeClient
from exporter.errors import Cancelled
from exporter.ratelimit import PAUSES_KEPT, RequestBudget
from testing.fakeapi import FakeApi


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        with self._lock:
            self.now = max(self.now, self.now + seconds)
        return False


def test_no_60_second_window_holds_more_than_the_limit() -> None:
    clock = FakeClock()
    budget = RequestBudget(50, clock=clock, sleep=clock.sleep)
    sent = []
    for _ in range(500):
        budget.acquire()
        sent.append(clock.now)
    assert busiest_window(sent, 60.0) == 50
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(sent)}
    assert gaps == {1.2}, gaps  # spread evenly: one request every 60/50 s, no bursts


def test_threads_woken_late_do_not_push_the_later_requests_back() -> None:
    """Every wait ends 10 ms late (a busy process): the requests keep to their 1.2 s
    grid (the sliding window, which counts the actual grant times, shifts it by a
    wake-up now and then) instead of drifting 10 ms more each: 200 requests take 200
    spacings, not 2 s more, and a refresh ends on time. No window holds more than
    the limit all the same."""
    clock = FakeClock()

    def late(seconds: float) -> bool:
        return clock.sleep(seconds + 0.01)

    budget = RequestBudget(50, clock=clock, sleep=late)
    sent = [budget.acquire() for _ in range(200)]
    assert sent[-1] - sent[0] == pytest.approx(199 * 1.2, abs=0.1)  # before: + 1.99
    assert busiest_window(sent, 60.0) <= 50


def test_idle_time_is_not_saved_up_for_a_burst() -> None:
    clock = FakeClock()
    budget = RequestBudget(60, clock=clock, sleep=clock.sleep)
    budget.acquire()
    clock.now += 3600
    sent = []
    for _ in range(120):
        budget.acquire()
        sent.append(clock.now)
    assert busiest_window(sent, 60.0) <= 60


def test_pause_holds_every_caller_back() -> None:
    clock = FakeClock()
    budget = RequestBudget(60, clock=clock, sleep=clock.sleep)
    first = budget.acquire()
    budget.pause(30)
    assert budget.acquire() - first == pytest.approx(30)


def test_a_stop_cancels_waiting_callers() -> None:
    stop = threading.Event()
    budget = RequestBudget(1, stop=stop)  # one request a minute: the second waits 60 s
    budget.acquire()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            budget.acquire()
        except Cancelled as exc:
            errors.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert len(errors) == 1


def test_seconds_for_reports_the_time_a_refresh_needs() -> None:
    assert RequestBudget(50).seconds_for(100) == pytest.approx(120.0)


class RecordingBudget(RequestBudget):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sent: list[float] = []
        self._record_lock = threading.Lock()

    def acquire(self) -> float:
        granted = super().acquire()
        with self._record_lock:
            self.sent.append(granted)
        return granted


def test_concurrent_polls_over_real_sockets_stay_within_the_budget(
    fake_api: FakeApi, make_client: Callable[..., LatitudeClient]
) -> None:
    # The real budget is per 60 s; the same limiter on a 1 s window keeps the test short.
    budget = RecordingBudget(20, window=1.0)
    client = make_client(fake_api.url, budget=budget)
    projects = list(fake_api.account.projects)

    def worker(n: int) -> None:
        for i in range(8):
            client.billing_usage(projects[(n + i) % len(projects)])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert fake_api.request_count("/billing/usage") == 48
    assert len(budget.sent) == 48
    assert busiest_window(budget.sent, 1.0) <= 20


def test_paused_between_says_how_long_pauses_held_the_queue_back() -> None:
    """The watchdog allows a refresh the time 429 pauses held its requests back, as
    that time passes: pauses that overlap (every poll of a refresh meeting the same
    429) count once, and a pause over before a refresh started is no excuse for it."""
    clock = FakeClock()
    budget = RequestBudget(60, clock=clock, sleep=clock.sleep)
    assert budget.paused_between(0, 100) == 0.0
    budget.pause(30)
    budget.pause(30)  # the same 429, met by another poll at the same moment
    assert budget.paused_between(0, 100) == pytest.approx(30)
    assert budget.paused_between(10, 20) == pytest.approx(10)  # as it passes
    assert budget.paused_between(30, 100) == 0.0
    clock.now = 10.0
    budget.pause(30)  # 20 s of it were already held back: 10 s more
    assert budget.paused_between(0, 100) == pytest.approx(40)
    clock.now = 140.0
    budget.acquire()
    budget.pause(5)  # after the next slot, 1 s away: the queue is held back 4 s more
    assert budget.paused_between(0, 200) == pytest.approx(44)
    assert budget.paused_between(100, 142) == pytest.approx(1)


# --- the limits, exactly --------------------------------------------------------------

#: A fraction of a second that binary floats hold exactly: boundaries stay exact.
EPSILON = 2.0**-10


class Waits:
    """A clock and a `sleep` that moves it, keeping every wait; wait number `late_at`
    (from 1) ends `late` seconds late, as a thread the OS wakes late."""

    def __init__(self, late_at: int = 0, late: float = 0.0) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self.late_at = late_at
        self.late = late

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds + (self.late if len(self.waits) == self.late_at else 0.0)
        return False


def test_a_request_exactly_at_its_slot_goes_at_once_and_a_late_one_keeps_the_grid() -> None:
    """Spacing 1 s. A request let through late by less than half a spacing keeps the
    next slots where they were; one late by half a spacing or more moves them."""
    clock = Waits()
    budget = RequestBudget(60, clock=clock, sleep=clock.sleep)
    assert budget.acquire() == 0.0
    clock.now = 1.0  # exactly at the next slot
    assert budget.acquire() == 1.0
    clock.now = 2.0 + 0.5  # late by exactly half a spacing: the grid moves
    assert budget.acquire() == 2.5
    clock.now = 3.5 - EPSILON  # a hair before the moved slot: waits for it
    assert budget.acquire() == 3.5
    clock.now = 4.5 + 0.5 - EPSILON  # late by just under half a spacing: the grid stays
    assert budget.acquire() == 5.0 - EPSILON
    clock.now = 5.5
    assert budget.acquire() == 5.5
    assert clock.waits == [EPSILON]
    assert budget.grants() == 6


def test_the_window_lets_a_request_through_exactly_a_window_after_its_predecessor() -> None:
    """Three requests a minute (a slot every 20 s); the first wait ends 9 s late (under
    half a spacing: the grid stays), so the spacing alone would let a fourth request
    into the minute after it: the window holds it back to exactly 60 s after it."""
    clock = Waits(late_at=1, late=9.0)
    budget = RequestBudget(3, clock=clock, sleep=clock.sleep)
    sent = [budget.acquire() for _ in range(7)]
    assert sent == [0.0, 20.0 + 9.0, 40.0, 60.0, 89.0, 109.0, 129.0]
    assert [b - a for a, b in zip(sent, sent[3:], strict=False)] == [60.0, 60.0, 69.0, 69.0]
    assert busiest_window(sent, 60.0) == 3  # exactly full, never over


def test_a_fractional_limit_never_lets_a_window_hold_more_than_it() -> None:
    """1.5 requests a minute: at most one in any minute, never two."""
    clock = Waits()
    budget = RequestBudget(1.5, clock=clock, sleep=clock.sleep)
    sent = [budget.acquire() for _ in range(4)]
    assert sent == [0.0, 60.0, 120.0, 180.0]
    assert busiest_window(sent, 60.0) == 1


def test_a_second_shorter_429_pause_never_shortens_a_longer_one() -> None:
    clock = Waits()
    budget = RequestBudget(60, clock=clock, sleep=clock.sleep)
    budget.acquire()  # at 0: the next slot is at 1
    budget.pause(30)  # the queue is held back from its next slot to 30
    clock.now = 1.0
    budget.pause(5)  # another poll's 429, asking less: until 6, within the first
    assert budget.paused_between(0, 100) == 29.0
    assert budget.acquire() == 30.0
    clock.now = 40.0
    budget.pause(10)
    budget.pause(20)  # a longer one at the same moment: it wins
    assert budget.acquire() == 60.0
    assert budget.paused_between(0, 100) == 29.0 + 20.0


def test_pauses_that_meet_or_overlap_count_once() -> None:
    clock = Waits()
    budget = RequestBudget(60, clock=clock, sleep=clock.sleep)
    clock.now = 10.0
    budget.pause(30)  # 10 to 40
    clock.now = 20.0
    budget.pause(30)  # 20 to 50: only 40 to 50 is more
    assert budget.paused_between(0, 100) == 40.0
    clock.now = 50.0
    budget.pause(5)  # from exactly the end of the last one
    assert budget.paused_between(0, 100) == 45.0


@pytest.mark.parametrize(
    ("since", "until", "paused"),
    [
        (0, 10, 0.0),  # ends exactly where the first pause starts
        (40, 100, 0.0),  # starts exactly where it ends
        (45, 95, 0.0),  # between the two pauses
        (50, 60, 0.0),  # after the first, before the second
        (0, 200, 40.0),
        (10, 40, 30.0),
        (20, 30, 10.0),
        (5, 15, 5.0),
        (39, 41, 1.0),
        (35, 105, 10.0),  # the end of one and the start of the other
        (100, 110, 10.0),
    ],
)
def test_paused_between_counts_only_what_falls_between_its_bounds(
    since: float, until: float, paused: float
) -> None:
    clock = Waits()
    budget = RequestBudget(60, clock=clock, sleep=clock.sleep)
    clock.now = 10.0
    budget.pause(30)  # 10 to 40
    clock.now = 100.0
    budget.pause(10)  # 100 to 110
    assert budget.paused_between(since, until) == paused


def test_only_the_latest_pauses_are_kept() -> None:
    clock = Waits()
    budget = RequestBudget(60, clock=clock, sleep=clock.sleep)
    for n in range(PAUSES_KEPT + 1):
        clock.now = 10.0 * n
        budget.pause(1)
    assert budget.paused_between(0, 1e9) == PAUSES_KEPT
    assert budget.paused_between(0, 5) == 0.0  # the oldest was forgotten
    last = 10.0 * PAUSES_KEPT
    assert budget.paused_between(last, last + 1) == 1.0


def test_grants_count_every_request_let_through_and_nothing_else() -> None:
    clock = Waits()
    stop = threading.Event()
    budget = RequestBudget(60, clock=clock, sleep=clock.sleep, stop=stop)
    assert budget.grants() == 0
    for _ in range(3):
        budget.acquire()
    budget.pause(10)
    assert budget.grants() == 3
    stop.set()
    clock.now = 1000.0  # a slot is free, but the budget is stopping
    with pytest.raises(Cancelled):
        budget.acquire()
    assert budget.grants() == 3
    assert clock.waits == [1.0, 1.0]  # no wait for a request refused by the stop


def test_grants_count_beyond_what_the_window_remembers() -> None:
    """The window keeps the last `limit` grant times; the count goes on past them."""
    clock = Waits()
    budget = RequestBudget(2, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        budget.acquire()
    assert budget.grants() == 5


@pytest.mark.parametrize(("limit", "window"), [(0, 60.0), (-1, 60.0), (60, 0.0), (60, -1.0)])
def test_a_budget_needs_a_positive_limit_and_window(limit: float, window: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        RequestBudget(limit, window=window)
