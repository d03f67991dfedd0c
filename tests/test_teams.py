"""Several teams in one exporter: each key with its own budget, 401 pause, discovery,
currency and schedule; one team's failure never slows, pauses or blanks another."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from pydantic import SecretStr

from exporter.client import LatitudeClient
from exporter.poller import Poller
from exporter.ratelimit import RequestBudget
from exporter.schedule import Schedule
from exporter.simulation import DemoAccount, DemoTeam, brazil_projects
from exporter.store import SnapshotStore
from testing.fakeapi import FakeApi, Fault
from testing.waits import wait_for
from tests.conftest import (
    FIXED_NOW,
    ExporterProcess,
    api_settings,
    http_get,
    new_poller,
    parse_samples,
    run_cli,
    sample,
    serving,
)

KEY_US = "key-us-0123456789abcdef"
KEY_BR = "key-br-fedcba9876543210"


@pytest.fixture
def two_teams() -> Iterator[FakeApi]:
    accounts = [
        DemoAccount(token=KEY_US, clock=lambda: FIXED_NOW),
        DemoAccount(
            brazil_projects(),
            team=DemoTeam("demo-br", "Demo Brasil", "BRL"),
            token=KEY_BR,
            clock=lambda: FIXED_NOW,
        ),
    ]
    with FakeApi(accounts) as api:
        yield api


def team_env(api: FakeApi, **extra: str) -> dict[str, str]:
    return {
        "LATITUDESH_EXPORTER_TEAMS": json.dumps(
            [
                {"name": "us", "token_env": "KEY_US", "requests_per_minute": 600},
                {"name": "br", "token_env": "KEY_BR", "requests_per_minute": 600},
            ]
        ),
        "KEY_US": KEY_US,
        "KEY_BR": KEY_BR,
        "LATITUDESH_EXPORTER_API__BASE_URL": api.url,
        "LATITUDESH_EXPORTER_API__MAX_RETRIES": "0",
        **extra,
    }


def test_once_polls_every_team_with_its_currency_and_label(
    two_teams: FakeApi, tmp_path: Path
) -> None:
    result = run_cli("--once", env=team_env(two_teams), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    samples = parse_samples(result.stdout)
    assert (
        sample(
            samples,
            "latitudesh_project_info",
            project_id="proj_demo_web",
            team="us",
            currency="USD",
        )
        == 1.0
    )
    assert (
        sample(
            samples,
            "latitudesh_project_info",
            project_id="proj_demo_loja",
            team="br",
            currency="BRL",
        )
        == 1.0
    )
    assert (
        sample(samples, "latitudesh_billing_price", project_id="proj_demo_loja", currency="BRL")
        is not None
    )
    for team in ("us", "br"):
        assert (
            sample(
                samples,
                "latitudesh_api_requests_total",
                team=team,
                endpoint="/projects",
                code="200",
            )
            == 1.0
        )
        assert sample(samples, "latitudesh_poll_effective_interval_seconds", team=team) == 300
    assert two_teams.request_count("/billing/usage", key=KEY_BR) == 1
    assert two_teams.request_count("/billing/usage", key=KEY_US) == 4


def test_once_exits_1_when_one_team_fails(two_teams: FakeApi, tmp_path: Path) -> None:
    env = team_env(two_teams, KEY_BR="a-revoked-key")
    result = run_cli("--once", env=env, cwd=tmp_path)
    assert result.returncode == 1
    samples = parse_samples(result.stdout)
    assert sample(samples, "latitudesh_up", project_id="proj_demo_web") == 1.0
    assert (
        sample(samples, "latitudesh_discovery_errors_total", team="br", reason="unauthorized")
        == 1.0
    )
    assert "a-revoked-key" not in result.stdout + result.stderr


def test_check_config_checks_every_key_and_exits_2_on_a_rejected_one(
    two_teams: FakeApi, tmp_path: Path
) -> None:
    result = run_cli("--check-config", env=team_env(two_teams), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "team us: key from the environment variable KEY_US, 600 requests/minute, "
        "projects discovered, currency from the API\n"
        "    GET /projects: accepted; sees at least one project; currency USD; team demo-us"
        in result.stdout
    )
    assert result.stdout.endswith("result: OK\n")
    assert "team br:" in result.stdout and "currency BRL" in result.stdout
    assert two_teams.request_count() == 2
    bad = run_cli("--check-config", env=team_env(two_teams, KEY_US="nope-nope-nope"), cwd=tmp_path)
    assert bad.returncode == 2
    assert "team us:" in bad.stdout and "REJECTED (unauthorized" in bad.stdout
    assert "OK" not in bad.stdout  # never above a rejection, nor below it
    assert bad.stdout.endswith("result: REJECTED: the key of team us\n")
    assert KEY_US not in bad.stdout + bad.stderr and KEY_BR not in bad.stdout


@pytest.fixture
def closing() -> Iterator[list[LatitudeClient]]:
    clients: list[LatitudeClient] = []
    yield clients
    for client in clients:
        client.close()


def pollers(
    api: FakeApi,
    store: SnapshotStore,
    stop: threading.Event,
    clients: list[LatitudeClient],
    rate: float = 600,
    max_retry_wait: float = 5,
) -> dict[str, Poller]:
    made = {}
    for name, key in (("us", KEY_US), ("br", KEY_BR)):
        budget = RequestBudget(rate, stop=stop)
        client = LatitudeClient(
            token=partial(SecretStr, key),
            budget=budget,
            api=api_settings(api.url, {"max_retries": 1, "max_retry_wait": max_retry_wait}),
            backoff_base=0.01,
            unauthorized_backoff=300,
            on_request=partial(store.record_request, name),
            stop=stop,
        )
        clients.append(client)
        poller = new_poller(
            client,
            store,
            team=name,
            interval=0.1,
            budget_seconds=budget.seconds_for,
            requests_made=budget.grants,
        )
        made[name] = poller
    return made


def test_a_revoked_key_blanks_nothing_of_the_other_team(
    two_teams: FakeApi, closing: list[LatitudeClient]
) -> None:
    store = SnapshotStore()
    stop = threading.Event()
    teams = pollers(two_teams, store, stop, closing)
    assert all(p.refresh() for p in teams.values())
    KEY = KEY_BR  # noqa: N806
    two_teams.accounts[1].token = "rotated-elsewhere"  # the BR key is revoked mid-run
    assert not teams["br"].refresh()
    assert teams["us"].refresh()
    view = store.view()
    status = {p.project_id: p for p in view.projects}
    # discovery meets the 401 first; the key then pauses and its polls are refused
    assert (status["proj_demo_loja"].up, status["proj_demo_loja"].last_error) == (
        False,
        "unauthorized",
    )
    assert status["proj_demo_loja"].usage is not None  # its last good data is kept
    assert all(status[p].up for p in ("proj_demo_web", "proj_demo_gpu"))
    sent = two_teams.request_count(key=KEY)
    for _ in range(3):
        teams["br"].refresh()
        assert teams["us"].refresh()
    assert two_teams.request_count(key=KEY) == sent  # the BR key pauses, alone
    stop.set()


def test_a_429_storm_on_one_key_does_not_delay_the_other(
    two_teams: FakeApi, closing: list[LatitudeClient]
) -> None:
    """The US key is rate limited for seconds at a time; the BR key keeps its own
    budget: its requests per 60 s and its refresh time stay what they were."""
    store = SnapshotStore()
    stop = threading.Event()
    teams = pollers(two_teams, store, stop, closing, rate=1200, max_retry_wait=60)
    assert teams["br"].refresh()
    started = time.monotonic()
    assert teams["br"].refresh()
    alone = time.monotonic() - started
    two_teams.inject(Fault("rate_limited", retry_after=30, where="both"), key=KEY_US, times=None)
    storm = threading.Thread(target=teams["us"].refresh, daemon=True)
    storm.start()
    wait_for(
        lambda: two_teams.request_count(key=KEY_US, path="/projects") > 0,
        message="the storm to begin",
    )
    started = time.monotonic()
    assert teams["br"].refresh()
    during = time.monotonic() - started
    assert during < alone + 10.0, (alone, during)  # no 30 s pause leaked across keys
    stop.set()
    storm.join(timeout=10)


def test_two_teams_in_one_daemon_the_status_page_groups_them(
    two_teams: FakeApi, tmp_path: Path
) -> None:
    exporter = ExporterProcess([], env=team_env(two_teams), cwd=tmp_path, tmp=tmp_path)
    try:
        exporter.wait_ready()
        page = http_get(exporter.url + "/")[2].decode()
        assert page.index('data-team="us"') < page.index('data-team="br"')
        assert (
            page.index("proj_demo_web")
            < page.index('data-team="br"')
            < page.index("proj_demo_loja")
        )
        assert "BRL" in page and "USD" in page
        assert KEY_US not in page and KEY_BR not in page
    finally:
        exporter.stop()
    assert KEY_US not in exporter.output() and KEY_BR not in exporter.output()


def test_the_store_keeps_teams_apart_in_one_exposition() -> None:
    store = SnapshotStore()
    store.add_team("a")
    store.add_team("b")
    store.set_projects("a", [("p1", "")])
    store.set_projects("b", [("p2", "")])
    store.record_request("a", "/projects", "401")
    with serving(store) as server:
        samples = parse_samples(http_get(f"http://127.0.0.1:{server.port}/metrics")[2].decode())
    assert (
        sample(samples, "latitudesh_api_requests_total", team="a", endpoint="/projects", code="401")
        == 1.0
    )
    assert (
        sample(samples, "latitudesh_api_requests_total", team="b", endpoint="/projects", code="401")
        is None
    )


def test_scheduler_keeps_each_teams_own_interval(
    two_teams: FakeApi, closing: list[LatitudeClient]
) -> None:
    store = SnapshotStore()
    stop = threading.Event()
    teams = pollers(two_teams, store, stop, closing)
    schedules = [Schedule(p.team, p.refresh, p.effective_interval) for p in teams.values()]
    for schedule in schedules:
        schedule.start()
    try:
        wait_for(
            lambda: len(two_teams.times("/projects", key=KEY_BR)) >= 3,
            timeout=20,
            message="three BR refreshes",
        )
    finally:
        stop.set()
        for schedule in schedules:
            schedule.stop()
        for poller in teams.values():
            poller.stop()
    intervals = {t.name: t.effective_interval for t in store.view().teams}
    assert intervals["us"] == pytest.approx(0.5)  # 4 projects + 1 page at 0.1 s
    assert intervals["br"] == pytest.approx(0.2)  # 1 project + 1 page
