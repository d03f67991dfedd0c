"""The request budget: no window ever holds more requests than the limit."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import pytest

from benchmarks.measure import busiest_window
from exporter.client import LatitudeClient
from exporter.errors import Cancelled
from exporter.ratelimit import RequestBudget
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
