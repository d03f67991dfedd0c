"""The poller against the fake API over real sockets: isolation, counters, truthful
health whatever goes wrong, bounded refreshes, true intervals."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from exporter import errors
from exporter.client import LatitudeClient
from exporter.config import DEFAULT_TEAM
from exporter.poller import Poller, Target
from exporter.ratelimit import RequestBudget
from exporter.snapshot import ProjectStatus, StoreView, TeamStatus
from exporter.store import SnapshotStore
from testing.fakeapi import FakeApi, Fault
from testing.waits import wait_for
from tests.conftest import FIXED_NOW, new_poller

DEMO_IDS = ["proj_demo_web", "proj_demo_gpu", "proj_demo_data", "proj_demo_dev"]
MakeClient = Callable[..., LatitudeClient]


@pytest.fixture
def store() -> SnapshotStore:
    return SnapshotStore()


@pytest.fixture
def make_poller(
    fake_api: FakeApi, store: SnapshotStore, make_client: MakeClient
) -> Iterator[Callable[..., Poller]]:
    """Pollers of four threads over the fake API, stopped after the test."""
    made: list[Poller] = []

    def make(*, unauthorized_backoff: float = 0, **kwargs: Any) -> Poller:
        client = make_client(
            fake_api.url,
            max_retries=1,
            # the team's key in the store: its configured name, or "default"
            on_request=partial(store.record_request, kwargs.get("team") or DEFAULT_TEAM),
            unauthorized_backoff=unauthorized_backoff,
        )
        kwargs.setdefault("concurrency", 4)
        poller = new_poller(client, store, now=lambda: FIXED_NOW, **kwargs)
        made.append(poller)
        return poller

    yield make
    for poller in made:
        poller.stop(timeout=5)


@pytest.fixture
def poller(make_poller: Callable[..., Poller]) -> Poller:
    # The per-token 401 back-off is switched off here: with it, whether the other projects
    # of a refresh are refused too depends on thread timing (see the test that covers it).
    return make_poller()


def status(store: SnapshotStore, project: str) -> ProjectStatus:
    return next(p for p in store.view().projects if p.project_id == project)


def team(view: StoreView) -> TeamStatus:
    (only,) = view.teams
    return only


def errors_of(store: SnapshotStore, project: str) -> dict[str, int]:
    return {
        reason: n
        for reason, n in zip(errors.POLL_ERROR_REASONS, status(store, project).errors, strict=True)
        if n
    }


def requests(view: StoreView) -> dict[tuple[str, str], int]:
    return dict(team(view).api_requests)


def test_discovers_every_project_the_currency_and_the_team_name(
    poller: Poller, store: SnapshotStore
) -> None:
    assert poller.refresh()
    view = store.view()
    assert [p.project_id for p in view.projects] == DEMO_IDS
    assert all(p.up and p.usage is not None for p in view.projects)
    assert {p.usage.currency for p in view.projects if p.usage} == {"USD"}
    assert team(view).name == "demo-us" == poller.team  # the team's slug, learned
    assert {p.team for p in view.projects} == {"demo-us"}
    assert requests(view)[("/projects", "200")] == 1
    assert requests(view)[("/billing/usage", "200")] == 4
    assert team(view).discovery_success == FIXED_NOW
    assert view.ready


def test_one_failing_project_never_affects_the_others(
    poller: Poller, store: SnapshotStore, fake_api: FakeApi
) -> None:
    assert poller.refresh()
    before = status(store, "proj_demo_web").usage
    fake_api.inject(Fault("status", status=500), project="proj_demo_gpu", times=None)
    assert not poller.refresh()
    gpu = status(store, "proj_demo_gpu")
    assert (gpu.up, gpu.last_error) == (False, "server_error")
    assert gpu.usage is not None  # last good values are kept
    assert errors_of(store, "proj_demo_gpu") == {"server_error": 1}
    assert requests(store.view())[("/billing/usage", "500")] == 2  # one retry
    web = status(store, "proj_demo_web")
    assert web.up and web.usage == before
    fake_api.clear_faults()
    assert poller.refresh()
    assert status(store, "proj_demo_gpu").up


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault("status", status=401), "unauthorized"),
        (Fault("status", status=403), "forbidden"),
        (Fault("status", status=404), "not_found"),
        (Fault("rate_limited", retry_after=0.01, where="both"), "rate_limited"),
        (Fault("rate_limited", header="Fri, 31 Dec 99999 23:59:59 GMT"), "rate_limited"),
        (Fault("rate_limited", retry_after="1" + "0" * 400), "rate_limited"),
        (Fault("status", status=502), "server_error"),
        (Fault("reset"), "network"),
        (Fault("not_json"), "invalid_response"),
        (Fault("wrong_project"), "invalid_response"),
        (Fault("empty_data"), "invalid_response"),
        (Fault("body", body="[" * 100_000 + "]" * 100_000), "invalid_response"),
        (Fault("tiny", products=10_001), "invalid_response"),
    ],
)
def test_each_error_kind_is_counted_once_under_its_reason(
    poller: Poller, store: SnapshotStore, fake_api: FakeApi, fault: Fault, reason: str
) -> None:
    fake_api.inject(fault, project="proj_demo_data", times=None)
    assert not poller.refresh()
    assert errors_of(store, "proj_demo_data") == {reason: 1}
    assert all(p.up for p in store.view().projects if p.project_id != "proj_demo_data")


class Exploding:
    """A source that fails in ways no `LatitudeError` describes."""

    def __init__(self, inner: Any, boom: BaseException, *, discovery: bool = False) -> None:
        self.inner = inner
        self.boom = boom
        self.discovery = discovery

    def billing_usage(self, project_id: str, **kwargs: Any) -> Any:
        if project_id == "proj_demo_data" and not self.discovery:
            raise self.boom
        return self.inner.billing_usage(project_id, **kwargs)

    def projects(self) -> Any:
        if self.discovery:
            raise self.boom
        return self.inner.projects()


@pytest.mark.parametrize(
    "boom",
    [
        RecursionError("deep"),
        OverflowError("big"),
        UnicodeEncodeError("ascii", "é", 0, 1, "no"),
        KeyError("x"),
        MemoryError(),
    ],
)
def test_any_exception_in_a_poll_ends_counted_with_up_zero_and_data_kept(
    make_poller: Callable[..., Poller],
    store: SnapshotStore,
    boom: BaseException,
    caplog: pytest.LogCaptureFixture,
) -> None:
    poller = make_poller()
    assert poller.refresh()
    poller._source = Exploding(poller._source, boom)
    with caplog.at_level(logging.WARNING, logger="exporter.poller"):
        assert not poller.refresh()
    data = status(store, "proj_demo_data")
    assert (data.up, data.last_error) == (False, "invalid_response")
    assert data.usage is not None
    assert errors_of(store, "proj_demo_data") == {"invalid_response": 1}
    assert status(store, "proj_demo_web").up
    (line,) = [r for r in caplog.records if r.getMessage() == "poll failed"]
    assert type(boom).__name__ in line.error  # type: ignore[attr-defined]
    assert not line.exc_info  # a traceback only at debug level


@pytest.mark.parametrize(
    "boom",
    [RecursionError("deep"), OverflowError("big"), errors.TokenUnavailable("api.token_file: gone")],
)
def test_any_exception_in_discovery_is_counted_and_polls_go_on(
    make_poller: Callable[..., Poller],
    store: SnapshotStore,
    boom: BaseException,
) -> None:
    poller = make_poller()
    assert poller.refresh()
    poller._discovery._source = Exploding(poller._source, boom, discovery=True)
    assert not poller.refresh()  # discovery failed: the refresh is not a success
    view = store.view()
    reason = boom.reason if isinstance(boom, errors.LatitudeError) else "invalid_response"
    assert (
        dict(zip(errors.POLL_ERROR_REASONS, team(view).discovery_errors, strict=True))[reason] == 1
    )
    assert all(p.up and p.last_success == FIXED_NOW for p in view.projects)
    assert requests(view)[("/billing/usage", "200")] == 8  # known projects polled again


@pytest.mark.parametrize("body", ["{}", '{"data": null}', '{"data": {"id": "x"}}'])
def test_a_projects_answer_without_a_list_never_blanks_the_team(
    poller: Poller, store: SnapshotStore, fake_api: FakeApi, body: str
) -> None:
    assert poller.refresh()
    fake_api.inject(Fault("body", body=body), project="/projects", times=None)
    assert not poller.refresh()
    assert [p.project_id for p in store.view().projects] == DEMO_IDS
    assert (
        team(store.view()).discovery_errors[errors.POLL_ERROR_REASONS.index("invalid_response")]
        == 1
    )


def test_a_well_formed_empty_list_empties_the_team(
    poller: Poller, store: SnapshotStore, fake_api: FakeApi
) -> None:
    assert poller.refresh()
    fake_api.inject(Fault("body", body='{"data": [], "meta": {}}'), project="/projects")
    poller.refresh()
    assert store.view().projects == ()


def test_a_truncated_projects_answer_is_a_discovery_failure_counted_once(
    poller: Poller, store: SnapshotStore, fake_api: FakeApi
) -> None:
    fake_api.inject(Fault("truncated"), project="/projects", times=None)
    assert not poller.refresh()
    view = store.view()
    assert requests(view).get(("/projects", "200"), 0) == 0
    assert requests(view)[("/projects", "network")] == 2  # the request and its retry
    assert team(view).discovery_success is None


def test_a_401_stops_the_shared_token_for_the_rest_of_the_refresh(
    make_poller: Callable[..., Poller], fake_api: FakeApi, store: SnapshotStore
) -> None:
    """The token is the account's, so a 401 for one project is a 401 for every project.

    Projects whose request was already on the wire keep their data; every one that
    comes after is refused without a request. Which ones those are depends on thread
    timing, so the test asserts what holds in every interleaving.
    """
    poller = make_poller(unauthorized_backoff=300)
    fake_api.inject(Fault("status", status=401), project="proj_demo_data", times=None)
    assert not poller.refresh()
    up = {p.project_id for p in store.view().projects if p.up}
    assert "proj_demo_data" not in up
    assert fake_api.request_count("/billing/usage") == len(up) + 1
    failed = {p.project_id for p in store.view().projects if any(p.errors)}
    assert failed == set(DEMO_IDS) - up
    assert all(p.last_error == "unauthorized" for p in store.view().projects if not p.up)

    sent = fake_api.request_count()
    assert not poller.refresh()  # the back-off holds: no request goes out at all
    assert fake_api.request_count() == sent
    assert not any(p.up for p in store.view().projects)


@pytest.mark.parametrize(
    "fault",
    [
        Fault("data_list"),
        Fault("strings"),
        Fault("drift"),
        Fault("old_shape"),
        Fault("gzip", layers=2),
    ],
)
def test_tolerated_drift_still_succeeds(
    poller: Poller, store: SnapshotStore, fake_api: FakeApi, fault: Fault
) -> None:
    fake_api.inject(fault, project="proj_demo_web", times=None)
    assert poller.refresh()
    usage = status(store, "proj_demo_web").usage
    assert usage is not None and usage.price is not None and usage.products


def test_a_failed_poll_logs_one_line_with_a_hint(
    poller: Poller, fake_api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    fake_api.inject(Fault("status", status=404), project="proj_demo_dev", times=None)
    with caplog.at_level(logging.WARNING, logger="exporter.poller"):
        poller.refresh()
    (record,) = [r for r in caplog.records if r.name == "exporter.poller"]
    assert record.getMessage() == "poll failed"
    assert record.project_id == "proj_demo_dev"  # type: ignore[attr-defined]
    assert "unknown project id" in record.hint  # type: ignore[attr-defined]


def test_configured_projects_are_polled_with_their_filters(
    make_poller: Callable[..., Poller], store: SnapshotStore, fake_api: FakeApi
) -> None:
    poller = make_poller(
        team="acme",
        currency="EUR",
        targets=[Target("proj_demo_gpu", plan="g3-h100-large", products=("si_gpu",))],
    )
    assert poller.refresh()
    assert fake_api.request_count("/projects") == 0  # named, currency given: no discovery
    (only,) = store.view().projects
    assert only.usage is not None and only.usage.currency == "EUR"
    assert only.team == "acme"


def test_discovered_projects_that_disappear_are_dropped(
    poller: Poller, store: SnapshotStore, fake_api: FakeApi
) -> None:
    assert poller.refresh()
    del fake_api.account.projects["proj_demo_dev"]
    assert poller.refresh()
    assert "proj_demo_dev" not in [p.project_id for p in store.view().projects]


def test_the_effective_interval_counts_every_page_of_projects(
    make_poller: Callable[..., Poller],
) -> None:
    budget = RequestBudget(50)
    poller = make_poller(
        targets=[Target(f"proj_{i}") for i in range(250)],
        interval=60,
        budget_seconds=budget.seconds_for,
    )
    # configured projects, no currency: 250 polls and 3 pages of /projects at 1.2 s
    assert poller.effective_interval() == pytest.approx(253 * 1.2)
    named = make_poller(
        targets=[Target(f"proj_named_{i}") for i in range(300)],
        interval=300,
        team="t",
        currency="USD",
        budget_seconds=budget.seconds_for,
    )
    assert named.effective_interval() == pytest.approx(360.0)  # no discovery at all


def test_the_budget_stretch_is_said_once(
    make_poller: Callable[..., Poller], caplog: pytest.LogCaptureFixture
) -> None:
    poller = make_poller(
        targets=[Target(f"proj_{i}") for i in range(300)],
        interval=300,
        team="t",
        currency="USD",
        budget_seconds=RequestBudget(50).seconds_for,
    )
    with caplog.at_level(logging.WARNING, logger="exporter.poller"):
        for _ in range(2):
            poller._note_stretch(poller.effective_interval())
    assert len([r for r in caplog.records if "stretches" in r.getMessage()]) == 1


def test_a_stuck_project_does_not_hold_the_refresh_or_the_others(
    make_poller: Callable[..., Poller], store: SnapshotStore, fake_api: FakeApi
) -> None:
    poller = make_poller(interval=0.5, grace=0.5)
    assert poller.refresh()
    fake_api.inject(Fault("delay", delay=20.0), project="proj_demo_gpu", times=None)
    started = time.monotonic()
    assert not poller.refresh()
    assert time.monotonic() - started < 10.0  # interval + grace (1 s), not the 20 s answer
    assert all(status(store, p).last_success == FIXED_NOW for p in DEMO_IDS)
    before = fake_api.request_count("/billing/usage", "proj_demo_gpu")
    poller.refresh()  # the stuck poll is still running: it is not asked for twice
    assert fake_api.request_count("/billing/usage", "proj_demo_gpu") == before


def test_stop_during_a_refresh_with_queued_polls_returns_promptly(
    fake_api: FakeApi, store: SnapshotStore, make_client: MakeClient
) -> None:
    stop = threading.Event()
    budget = RequestBudget(30, stop=stop)  # one request every 2 s: most polls queue up
    client = make_client(fake_api.url, budget=budget, stop=stop)
    poller = new_poller(
        client,
        store,
        targets=[Target(pid) for pid in DEMO_IDS],
        team="t",
        currency="USD",
        concurrency=2,
    )
    refreshing = threading.Thread(target=poller.refresh, daemon=True)
    refreshing.start()
    wait_for(lambda: fake_api.request_count("/billing/usage") >= 1, message="a first poll")
    stop.set()
    assert poller.stop(timeout=10)  # idle: the refresh noticed the cancelled polls
    refreshing.join(timeout=10)
    assert not refreshing.is_alive()


@pytest.mark.parametrize(
    "attributes",
    [
        {},
        {"price": "x", "amount": [], "available_credit_balance": {}, "products": "none"},
        {"period": {"start": "2026-11-01T00:00:00+00:00"}},
    ],
    ids=["empty", "wrong-typed", "no-figure"],
)
def test_an_answer_with_no_usable_figure_fails_the_poll_and_keeps_the_last_figures(
    poller: Poller, store: SnapshotStore, fake_api: FakeApi, attributes: dict[str, Any]
) -> None:
    """Before, a 200 with `attributes: {}` was a success: every money series vanished
    while `up` said 1."""
    assert poller.refresh()
    before = status(store, "proj_demo_web").usage
    assert before is not None and before.price is not None
    body = json.dumps({"data": {"id": "x", "type": "billing_usage", "attributes": attributes}})
    fake_api.inject(Fault("body", body=body), project="proj_demo_web", times=None)
    poller.refresh()
    web = status(store, "proj_demo_web")
    assert not web.up
    assert errors_of(store, "proj_demo_web") == {"invalid_response": 1}
    assert web.usage == before  # the last good figures stay
    assert status(store, "proj_demo_gpu").up


def test_a_project_id_longer_than_the_apis_is_refused_counted_and_said(
    poller: Poller, store: SnapshotStore, fake_api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    """One rule for ids everywhere: before, a 20,000-character id was polled, its
    answers dropped silently (up 0 forever) and its `up` series carried it uncut."""
    long_id = "proj_" + "x" * 20_000
    body = json.dumps(
        {
            "data": [
                {"id": long_id, "type": "projects", "attributes": {"name": "long"}},
                {"id": "proj_demo_web", "type": "projects", "attributes": {"name": "web"}},
            ],
            "meta": {},
        }
    )
    fake_api.inject(Fault("body", body=body), project="/projects", times=None)
    with caplog.at_level(logging.WARNING):
        poller.refresh()
    view = store.view()
    assert [p.project_id for p in view.projects] == ["proj_demo_web"]
    assert team(view).refused_ids == 1
    assert status(store, "proj_demo_web").up
    assert fake_api.request_count(project=long_id) == 0  # never spent a request on it
    (line,) = [r for r in caplog.records if "project ids refused" in r.getMessage()]
    assert line.__dict__["count"] == 1


def test_a_project_two_teams_see_belongs_to_the_first_and_is_warned_about_once(
    fake_api: FakeApi,
    store: SnapshotStore,
    make_client: MakeClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before, a shared project went to whichever discovery landed first (it could
    change between starts) and the other team warned at every refresh, forever."""
    pollers = [
        new_poller(make_client(fake_api.url), store, team=name, rank=rank, now=lambda: FIXED_NOW)
        for rank, name in ((1, "second"), (0, "first"))  # the second lands first
    ]
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                for poller in pollers:
                    poller.refresh()
        view = store.view()
        assert {p.team for p in view.projects} == {"first"}
        assert [p.project_id for p in view.projects] == DEMO_IDS
        warned = [r for r in caplog.records if "another team's key sees" in r.getMessage()]
        assert len(warned) == 1 and warned[0].__dict__["team"] == "second"
        assert all(p.up for p in view.projects)
    finally:
        for poller in pollers:
            poller.stop(timeout=5)
