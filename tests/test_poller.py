"""The poller against the simulated API over real sockets: isolation, counters, budget."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import pytest

from exporter.demo import DemoApi, Fault
from exporter.poller import Poller, Target
from exporter.ratelimit import RequestBudget
from exporter.snapshot import SnapshotStore
from tests.conftest import FIXED_NOW, make_client, wait_for

DEMO_IDS = ["proj_demo_web", "proj_demo_gpu", "proj_demo_data", "proj_demo_dev"]


@pytest.fixture
def store() -> SnapshotStore:
    return SnapshotStore()


@pytest.fixture
def make_poller(demo_api: DemoApi, store: SnapshotStore) -> Iterator[Callable[..., Poller]]:
    """Pollers of four threads over the demo API, stopped after the test."""
    made: list[Poller] = []

    def make(*, unauthorized_backoff: float) -> Poller:
        client = make_client(demo_api.url, on_request=store.record_request, max_retries=1,
                             unauthorized_backoff=unauthorized_backoff)
        made.append(Poller(client, store, concurrency=4, now=lambda: FIXED_NOW))
        return made[-1]

    yield make
    for poller in made:
        poller.stop(timeout=5)


@pytest.fixture
def poller(make_poller: Callable[..., Poller]) -> Poller:
    # The per-token 401 back-off is switched off here: with it, whether the other projects
    # of a refresh are refused too depends on thread timing (see the test that covers it).
    return make_poller(unauthorized_backoff=0)


def status(store: SnapshotStore, project: str):  # type: ignore[no-untyped-def]
    return next(p for p in store.view().projects if p.project_id == project)


def test_discovers_every_project_and_the_team_currency(poller: Poller,
                                                       store: SnapshotStore) -> None:
    assert poller.refresh()
    view = store.view()
    assert [p.project_id for p in view.projects] == DEMO_IDS
    assert all(p.up and p.usage is not None for p in view.projects)
    assert {p.usage.currency for p in view.projects if p.usage} == {"USD"}
    assert view.api_requests[("/projects", "200")] == 1
    assert view.api_requests[("/billing/usage", "200")] == 4
    assert view.ready


def test_one_failing_project_never_affects_the_others(poller: Poller, store: SnapshotStore,
                                                      demo_api: DemoApi) -> None:
    assert poller.refresh()
    before = status(store, "proj_demo_web").usage
    demo_api.inject(Fault("status", status=500), project="proj_demo_gpu", times=None)
    assert not poller.refresh()
    gpu = status(store, "proj_demo_gpu")
    assert (gpu.up, gpu.last_error) == (False, "server_error")
    assert gpu.usage is not None  # last good values are kept
    assert store.view().poll_errors[("proj_demo_gpu", "server_error")] == 1
    assert store.view().api_requests[("/billing/usage", "500")] == 2  # one retry
    web = status(store, "proj_demo_web")
    assert web.up and web.usage == before
    demo_api.clear_faults()
    assert poller.refresh()
    assert status(store, "proj_demo_gpu").up


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault("status", status=401), "unauthorized"),
        (Fault("status", status=403), "forbidden"),
        (Fault("status", status=404), "not_found"),
        (Fault("rate_limited", retry_after=0.01, where="both"), "rate_limited"),
        (Fault("status", status=502), "server_error"),
        (Fault("reset"), "network"),
        (Fault("not_json"), "invalid_response"),
        (Fault("wrong_project"), "invalid_response"),
        (Fault("empty_data"), "invalid_response"),
    ],
)
def test_each_error_kind_is_counted_under_its_reason(
    poller: Poller, store: SnapshotStore, demo_api: DemoApi, fault: Fault, reason: str
) -> None:
    demo_api.inject(fault, project="proj_demo_data", times=None)
    assert not poller.refresh()
    assert store.view().poll_errors[("proj_demo_data", reason)] == 1
    assert sum(n for (pid, _), n in store.view().poll_errors.items()
               if pid == "proj_demo_data") == 1
    assert all(p.up for p in store.view().projects if p.project_id != "proj_demo_data")


def test_a_401_stops_the_shared_token_for_the_rest_of_the_refresh(
    make_poller: Callable[..., Poller], demo_api: DemoApi, store: SnapshotStore
) -> None:
    """The token is the account's, so a 401 for one project is a 401 for every project.

    Projects whose request was already on the wire keep their data; every one that
    comes after is refused without a request. Which ones those are depends on thread
    timing, so the test asserts what holds in every interleaving.
    """
    poller = make_poller(unauthorized_backoff=300)
    demo_api.inject(Fault("status", status=401), project="proj_demo_data", times=None)
    assert not poller.refresh()
    up = {p.project_id for p in store.view().projects if p.up}
    assert "proj_demo_data" not in up
    assert demo_api.request_count("/billing/usage") == len(up) + 1
    errors = {key: n for key, n in store.view().poll_errors.items() if n}
    assert {pid for pid, _ in errors} == set(DEMO_IDS) - up
    assert all(reason == "unauthorized" for _, reason in errors)

    sent = demo_api.request_count()
    assert not poller.refresh()  # the back-off holds: no request goes out at all
    assert demo_api.request_count() == sent
    assert not any(p.up for p in store.view().projects)


@pytest.mark.parametrize("fault", [Fault("data_list"), Fault("strings"), Fault("drift"),
                                   Fault("old_shape")])
def test_tolerated_drift_still_succeeds(poller: Poller, store: SnapshotStore,
                                        demo_api: DemoApi, fault: Fault) -> None:
    demo_api.inject(fault, project="proj_demo_web", times=None)
    assert poller.refresh()
    usage = status(store, "proj_demo_web").usage
    assert usage is not None and usage.price is not None and usage.products


def test_a_failed_poll_logs_one_line_with_a_hint(poller: Poller, demo_api: DemoApi,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    demo_api.inject(Fault("status", status=404), project="proj_demo_dev", times=None)
    with caplog.at_level(logging.WARNING, logger="exporter.poller"):
        poller.refresh()
    (record,) = [r for r in caplog.records if r.name == "exporter.poller"]
    assert record.getMessage() == "poll failed"
    assert record.project_id == "proj_demo_dev"  # type: ignore[attr-defined]
    assert "unknown project id" in record.hint  # type: ignore[attr-defined]


def test_configured_projects_are_polled_with_their_filters(demo_api: DemoApi,
                                                           store: SnapshotStore) -> None:
    client = make_client(demo_api.url)
    poller = Poller(client, store, targets=[Target("proj_demo_gpu", plan="g3-h100-large",
                                                   products=("si_gpu",))], currency="EUR")
    assert poller.refresh()
    assert demo_api.request_count("/projects") == 0  # currency given: no discovery needed
    (only,) = store.view().projects
    assert only.usage is not None and only.usage.currency == "EUR"
    poller.stop()


def test_discovery_failure_keeps_known_projects(poller: Poller, store: SnapshotStore,
                                                demo_api: DemoApi) -> None:
    assert poller.refresh()
    demo_api.inject(Fault("status", status=503), project="/projects", times=None)
    poller.refresh()
    assert [p.project_id for p in store.view().projects] == DEMO_IDS
    assert store.view().discovery_errors["server_error"] == 1
    assert all(p.up for p in store.view().projects)


def test_discovered_projects_that_disappear_are_dropped(poller: Poller, store: SnapshotStore,
                                                        demo_api: DemoApi) -> None:
    assert poller.refresh()
    del demo_api.account.projects["proj_demo_dev"]
    assert poller.refresh()
    assert "proj_demo_dev" not in [p.project_id for p in store.view().projects]


def test_budget_stretches_the_interval_and_says_so_once(
    demo_api: DemoApi, store: SnapshotStore, caplog: pytest.LogCaptureFixture
) -> None:
    budget = RequestBudget(50)
    client = make_client(demo_api.url, budget=RequestBudget(1e6))
    targets = [Target(f"proj_{i}") for i in range(300)]
    poller = Poller(client, store, targets=targets, currency="USD", interval=300,
                    budget_seconds=budget.seconds_for)
    assert poller.effective_interval() == pytest.approx(360.0)  # 300 requests at 50/min
    with caplog.at_level(logging.WARNING, logger="exporter.poller"):
        for _ in range(2):
            poller._note_stretch(poller.effective_interval())
    stretch = [r for r in caplog.records if "stretches" in r.getMessage()]
    assert len(stretch) == 1
    poller.stop()


def test_slow_api_does_not_stack_refreshes(demo_api: DemoApi, store: SnapshotStore) -> None:
    """With the API slower than the interval, runs are skipped, never run side by side."""
    demo_api.inject(Fault("delay", delay=1.5), times=None)
    client = make_client(demo_api.url, timeout=5)
    poller = Poller(client, store, targets=[Target("proj_demo_web")], currency="USD",
                    interval=1)
    running = []
    peak = [0]
    lock = threading.Lock()
    original = poller.refresh

    def tracked() -> bool:
        with lock:
            running.append(1)
            peak[0] = max(peak[0], len(running))
        try:
            return original()
        finally:
            with lock:
                running.pop()

    poller.refresh = tracked  # type: ignore[method-assign]
    poller.start()
    wait_for(lambda: demo_api.request_count("/billing/usage") >= 3, timeout=20,
             message="three polls")
    assert poller.stop(timeout=5)
    assert peak[0] == 1


def test_stop_during_a_refresh_with_queued_polls_returns_promptly(
    demo_api: DemoApi, store: SnapshotStore
) -> None:
    stop = threading.Event()
    budget = RequestBudget(30, stop=stop)  # one request every 2 s: most polls queue up
    client = make_client(demo_api.url, budget=budget, stop=stop)
    poller = Poller(client, store, targets=[Target(pid) for pid in DEMO_IDS],
                    currency="USD", concurrency=2)
    refreshing = threading.Thread(target=poller.refresh, daemon=True)
    refreshing.start()
    wait_for(lambda: demo_api.request_count("/billing/usage") >= 1, message="a first poll")
    stop.set()
    assert poller.stop(timeout=10)  # idle: the refresh noticed the cancelled polls
    refreshing.join(timeout=10)
    assert not refreshing.is_alive()
