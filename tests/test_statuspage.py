"""The status page: money per team and project, escaped, self-contained, and rendered
for real in Debian's chromium (driven by Playwright)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter import statuspage
from exporter.client import LatitudeClient
from exporter.curve import step
from exporter.httpserver import HttpServer
from exporter.simulation import DEMO_TOKENS, default_accounts
from exporter.snapshot import Budget
from exporter.state.sqlite import SqliteState
from exporter.store import SnapshotStore
from exporter.web import WebApp
from exporter.webconfig import WebSettings
from testing.fakeapi import FakeApi
from tests.conftest import (
    FIXED_NOW,
    ROOT,
    ExporterProcess,
    api_env,
    exposition_of,
    golden_store,
    new_poller,
    usage_of,
)

SCREENSHOT = ROOT / "docs" / "status-page.png"
#: The page after a period watched for 70 % of its length: the spend curves.
CURVE_SCREENSHOT = ROOT / "docs" / "status-page-curve.png"
NOW = 1_795_000_000.0  # 2026-11-18, inside the fixtures' November period


def card_of(html: str, project: str) -> str:
    start = html.index(f'data-project="{project}"')
    end = html.find("data-project=", start + 1)
    return html[start : end if end > 0 else len(html)]


def page_of(store: SnapshotStore) -> str:
    return statuspage.render(
        store.view(), now=NOW, telemetry_path="/metrics", version="9.9"
    ).decode()


def test_money_threshold_credit_period_projection_and_products_per_project() -> None:
    card = card_of(page_of(golden_store()), "proj_r0MK4O4kDa95w")
    assert "512.30 USD" in card  # spend so far
    assert "51% of the 1,000.00 USD threshold" in card
    assert "123.45 USD" in card  # credit left
    assert "projected at period end" in card
    assert re.search(r"\d+% of the period gone, ends 2026-12-01", card)
    assert "c2.small.x86" in card and "456.00 USD" in card  # top products
    assert "up</span> · last success" in card


def test_each_budget_of_a_team_as_a_bar_with_what_it_says() -> None:
    """The golden store's budgets (conftest.GOLDEN_BUDGETS): spent, projected, an
    unknown tag said in words."""
    page = page_of(golden_store())
    budgets = page[
        page.index('data-field="budgets"') : page.index(
            "</table>", page.index('data-field="budgets"')
        )
    ]
    rows = re.findall(r'<tr data-budget="([^"]+)">(.*?)</tr>', budgets)
    assert [scope for scope, _ in rows] == [
        "project fantastic-iron-clock",
        "tag web",
        "whole team",
        "tag nowhere",
    ]
    said = dict(rows)
    assert (
        "512.30 USD of 1,000.00 USD (51%) · 57% by the period&#x27;s end"
        in said["project fantastic-iron-clock"]
    )
    assert 'aria-label="budget 51% spent"' in said["project fantastic-iron-clock"]
    assert "width:51.2%" in said["project fantastic-iron-clock"]
    assert "233.00 USD of 500.00 USD (47%)" in said["tag web"]
    assert "runs out" not in budgets  # every run-out falls after the period's end
    assert "names nothing the team has · budget 10.00 USD" in said["tag nowhere"]


def test_a_budget_the_run_rate_spends_before_the_period_ends_says_when() -> None:
    store = golden_store()
    store.set_budgets([Budget("default", 520.0, (100.0,), "project", "proj_r0MK4O4kDa95w")])
    page = page_of(store)
    # 7.70 USD left at 0.20 an hour from the poll (2026-11-18 11:06:40): 38.5 hours on
    assert "runs out 2026-11-20 01:36 UTC" in page
    assert '<span class="warn" style="width:98.5%">' in page  # 99 %: warned, not over


def test_every_api_string_is_escaped() -> None:
    store = SnapshotStore()
    store.add_team("t")
    store.set_projects("t", [("p", "")])
    hostile = {
        "data": {
            "attributes": {
                "project": {"id": "p", "name": "<script>alert(1)</script>"},
                "price": 100,
                "products": [{"id": "x", "name": '"><img src=x onerror=alert(1)>', "price": 100}],
            }
        }
    }
    store.record_success("t", usage_of(hostile, "p"), duration=0.1, now=NOW)
    html = page_of(store)
    assert "<script>alert" not in html and "<img" not in html
    assert "&lt;script&gt;" in html


def test_no_external_asset_and_it_reloads_itself() -> None:
    html = page_of(golden_store())
    assert not re.search(r"(src|href)=\"https?://", html)
    assert "<script" not in html
    assert '<meta http-equiv="refresh"' in html


def test_a_failing_project_shows_its_last_error_and_keeps_its_money() -> None:
    store = golden_store()
    store.record_failure("default", "proj_old", "rate_limited", duration=1)
    card = card_of(page_of(store), "proj_old")
    assert "down</span>" in card and "last error: rate_limited" in card
    assert "120.50 BRL" in card


def test_the_demo_page_in_a_real_browser(browser: object, tmp_path: Path) -> None:
    from playwright.sync_api import Browser

    assert isinstance(browser, Browser)
    exporter = ExporterProcess(["--demo"], tmp=tmp_path)
    try:
        exporter.wait_ready()
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        response = page.goto(exporter.url + "/")
        assert response is not None
        assert "default-src 'none'" in response.headers["content-security-policy"]
        teams = page.locator("section[data-team]")
        assert [teams.nth(i).get_attribute("data-team") for i in range(teams.count())] == [
            "demo-us",
            "demo-br",
        ]
        cards = page.locator("[data-project]")
        assert cards.count() == 5
        gpu = page.locator('[data-project="proj_demo_gpu"]')
        assert "USD" in gpu.locator('[data-field="spend"]').inner_text()
        assert re.fullmatch(
            r"\d+% of the 1,300\.00 USD threshold",
            gpu.locator('[data-field="threshold"]').inner_text(),
        )
        bar = gpu.locator(".bar span").first
        share = int(gpu.locator('[data-field="threshold"]').inner_text().split("%")[0])
        inner, outer = bar.bounding_box(), gpu.locator(".bar").first.bounding_box()
        assert inner is not None and outer is not None
        width = inner["width"] / outer["width"]
        assert abs(width * 100 - min(share, 100)) < 2  # the bar shows the share
        # the period's spend curve, drawn: a card's and its team's, each with a box
        for chart in (
            gpu.locator("svg.curve"),
            page.locator('section[data-team="demo-us"] [data-field="team-curve"] svg.curve'),
        ):
            assert chart.count() == 1 and chart.is_visible()
            box = chart.bounding_box()
            assert box is not None and box["width"] > 200 and box["height"] > 40
            now = chart.locator('[data-series="now"]').bounding_box()
            assert now is not None and now["width"] > 0  # the live point, inside it
            assert box["x"] <= now["x"] <= box["x"] + box["width"]
        assert gpu.locator('svg.curve [data-series="threshold"]').count() == 1
        assert gpu.locator('svg.curve [data-series="projection"]').count() == 1
        # the demo's budget of web-platform, as a bar as wide as its share
        budget = page.locator('section[data-team="demo-us"] [data-budget="project web-platform"]')
        assert budget.count() == 1
        spent = re.search(r"\((\d+)%\)", budget.inner_text())
        assert spent is not None, budget.inner_text()
        inner = budget.locator(".bar span").bounding_box()
        outer = budget.locator(".bar").bounding_box()
        assert inner is not None and outer is not None
        assert abs(inner["width"] / outer["width"] * 100 - min(int(spent[1]), 100)) < 2
        loja = page.locator('[data-project="proj_demo_loja"]')
        assert "BRL" in loja.locator('[data-field="spend"]').inner_text()
        assert "projected" in page.content()
        assert all(url.startswith(exporter.url) for url in requests)  # nothing external
        # The page works under its own strict default policy: nothing was blocked.
        assert not [line for line in console if "Content Security Policy" in line]
        shot = tmp_path / "status-page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("UPDATE_SCREENSHOT"):
            SCREENSHOT.parent.mkdir(exist_ok=True)
            shutil.copy(shot, SCREENSHOT)
    finally:
        exporter.stop()


def test_the_readme_shows_the_committed_screenshots() -> None:
    for shot in (SCREENSHOT, CURVE_SCREENSHOT):
        assert shot.is_file() and shot.stat().st_size > 10_000
        assert f"docs/{shot.name}" in (ROOT / "README.md").read_text()


class Clock:
    """The wall clock of the demo accounts and of the exporter's parts, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.slow
def test_a_period_watched_in_a_real_browser(
    browser: object, make_client: Callable[..., LatitudeClient], tmp_path: Path
) -> None:
    """The spend curve as people see it: the demo's two teams polled by real pollers
    over real sockets through 70 % of a period (a refresh every step of the curve, the
    clock moved by the test), the points kept in a real state file, and the page served
    by the real HTTP server, drawn by Chromium (`docs/status-page-curve.png`)."""
    from playwright.sync_api import Browser

    assert isinstance(browser, Browser)
    clock = Clock(FIXED_NOW)
    accounts = default_accounts(clock=clock, start_elapsed=0.0)
    start, end, _ = accounts[0].period()
    spacing = step(start, end)
    store = SnapshotStore()
    state = SqliteState(tmp_path / "state.db", on_status=store.record_state, max_body_bytes=10**7)
    state.load()
    state.start()
    with FakeApi(accounts) as api:
        pollers = [
            new_poller(make_client(api.url, token=token), store, team=team, now=clock, state=state)
            for token, team in zip(DEMO_TOKENS, ("demo-us", "demo-br"), strict=True)
        ]
        try:
            for k in range(168):  # 70 % of the period's 240 steps
                clock.now = start + k * spacing + 5
                assert all(poller.refresh() for poller in pollers)
        finally:
            for poller in pollers:
                poller.stop(timeout=5)
    state.close(timeout=30)
    curves = {p.project_id: p.curve for p in store.view().projects}
    assert {pid: len(c) if c else 0 for pid, c in curves.items()} == dict.fromkeys(curves, 168)
    kept = SqliteState(tmp_path / "state.db", on_status=lambda up, reason: None, max_body_bytes=1)
    kept.load()
    assert {c.project_id: c.curve for c in kept.load_points()} == curves  # all written

    app = WebApp(exposition_of(store), store.view, now=clock)
    server = HttpServer(app, "127.0.0.1", 0, web=WebSettings())
    server.start()
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        response = page.goto(f"http://127.0.0.1:{server.port}/")
        assert response is not None
        assert "default-src 'none'" in response.headers["content-security-policy"]
        gpu = page.locator('[data-project="proj_demo_gpu"] svg.curve')
        team = page.locator('section[data-team="demo-us"] [data-field="team-curve"] svg.curve')
        for chart in (gpu, team):
            box = chart.bounding_box()
            line = chart.locator('[data-series="curve"]').bounding_box()
            assert box is not None and line is not None
            # the curve spans the 70 % of the period watched, and rises
            assert 0.6 < line["width"] / box["width"] < 0.75
            assert line["height"] > 0.2 * box["height"]
        points = gpu.locator('[data-series="curve"]').get_attribute("points")
        assert points is not None and len(points.split()) == 168
        shot = tmp_path / "status-page-curve.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("UPDATE_SCREENSHOT"):
            shutil.copy(shot, CURVE_SCREENSHOT)
    finally:
        server.stop()


def test_a_rejected_key_shows_on_the_page_in_a_real_browser(
    browser: object, fake_api: FakeApi, tmp_path: Path
) -> None:
    """The likeliest first-run failure, a mistyped key: before, the page said only
    `default · 0 projects · n/a so far · no projects yet`."""
    from playwright.sync_api import Browser

    assert isinstance(browser, Browser)
    env = {**api_env(fake_api), "LATITUDESH_AUTH_TOKEN": "a-mistyped-key"}
    exporter = ExporterProcess([], env=env, cwd=tmp_path, tmp=tmp_path)
    try:
        exporter.wait_ready()  # /readyz keeps its meaning: the first refresh was attempted
        page = browser.new_page()
        page.goto(exporter.url + "/")
        problem = page.locator('section[data-team="default"] [data-field="problem"]')
        assert problem.get_attribute("data-reason") == "unauthorized"
        text = problem.inner_text()
        assert text.startswith("key rejected (401) since ")
        assert "the environment variable LATITUDESH_AUTH_TOKEN" in text
        assert "a-mistyped-key" not in page.content()
    finally:
        exporter.stop()


def test_a_problem_says_since_when_and_ends_with_a_healthy_refresh() -> None:
    clock = [1_795_000_000.0]
    store = SnapshotStore(clock=lambda: clock[0])
    store.add_team("t", key_origin="the file /run/key (api.token_file)")
    store.set_projects("t", [("p", "")])
    store.record_failure("t", "p", "timeout", duration=1.0)
    clock[0] += 120
    store.record_failure("t", "p", "timeout", duration=1.0)  # the same trouble: same start
    (team,) = store.view().teams
    assert team.problem is not None and team.problem.since == 1_795_000_000.0
    page = statuspage.render(store.view(), now=clock[0], telemetry_path="/m", version="v").decode()
    assert "timed out</span> since 2026-11-18 11:06 UTC (2 min ago)" in page
    store.record_failure("t", "p", "unauthorized", duration=1.0)  # another: a new start
    (team,) = store.view().teams
    assert team.problem is not None and team.problem.since == clock[0]
    assert (
        "the file /run/key (api.token_file)"
        in statuspage.render(store.view(), now=clock[0], telemetry_path="/m", version="v").decode()
    )
    store.record_refresh("t", duration=1.0, effective_interval=300.0, healthy=False)
    assert store.view().teams[0].problem is not None
    store.record_refresh("t", duration=1.0, effective_interval=300.0, healthy=True)
    assert store.view().teams[0].problem is None
    assert (
        'data-field="problem"'
        not in statuspage.render(
            store.view(), now=clock[0], telemetry_path="/m", version="v"
        ).decode()
    )
