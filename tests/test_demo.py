"""The simulated API speaks the real API's language: its answers validate against the
spec (the repository's own copy), in both shapes, and its figures follow the clock."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from typing import Any

import pytest

from exporter import statuspage
from exporter.demo import DemoApi
from exporter.simulation import DEMO_TOKENS, DemoAccount, default_accounts, demo_budgets
from tests.conftest import ROOT, TOKEN, http_get, load_fixture, usage_of
from tests.spec import billing_validator, errors_of, projects_validator
from tests.spec import copy as spec_copy

ACCOUNTS = default_accounts()
PROJECTS = [(account, project_id) for account in ACCOUNTS for project_id in account.projects]


def test_the_schemas_really_differ() -> None:
    newest = spec_copy()["billing_usage"]["newest"]
    product = newest["properties"]["data"]["properties"]["attributes"]["properties"]["products"][
        "items"
    ]["properties"]
    assert "GB" in product["unit"]["enum"] and "servers" in product["metadata"]["properties"]
    seed = spec_copy()["billing_usage"]["seed"]
    old_product = seed["properties"]["data"]["properties"]["attributes"]["properties"]["products"][
        "items"
    ]["properties"]
    assert "GB" not in old_product["unit"]["enum"]
    assert "hostname" in old_product["metadata"]["properties"]


@pytest.mark.parametrize(("account", "project"), PROJECTS, ids=[p for _, p in PROJECTS])
def test_demo_usage_validates_strictly_against_the_newest_spec(
    account: DemoAccount, project: str
) -> None:
    document = account.usage(account.projects[project])
    assert errors_of(billing_validator("newest"), document) == []


@pytest.mark.parametrize(("account", "project"), PROJECTS, ids=[p for _, p in PROJECTS])
def test_demo_old_shape_validates_against_the_seed_schema(
    account: DemoAccount, project: str
) -> None:
    document = account.usage(account.projects[project], "old")
    assert errors_of(billing_validator("seed", strict=False), document) == []
    attributes = document["data"]["attributes"]
    assert attributes["amount"] == attributes["price"]  # as the 2025-10-13 example shows
    assert all("servers" not in p["metadata"] for p in attributes["products"])


def test_fixtures_validate_against_their_schemas() -> None:
    assert errors_of(billing_validator("newest"), load_fixture("billing_usage_new.json")) == []
    assert (
        errors_of(billing_validator("seed", strict=False), load_fixture("billing_usage_old.json"))
        == []
    )
    assert errors_of(projects_validator(), load_fixture("projects_page.json")) == []


def test_the_validator_catches_a_wrong_answer() -> None:
    account = ACCOUNTS[0]
    broken = copy.deepcopy(account.usage(account.projects["proj_demo_web"]))
    broken["data"]["attributes"]["products"][0]["unit"] = "petaflop"
    broken["data"]["attributes"]["invented"] = 1
    assert len(errors_of(billing_validator("newest"), broken)) == 2


@pytest.mark.parametrize("account", ACCOUNTS, ids=[a.team.slug for a in ACCOUNTS])
def test_demo_projects_validate_against_the_spec(account: DemoAccount) -> None:
    page = {"data": account.project_resources(), "meta": {}}
    assert errors_of(projects_validator(), page) == []


def test_two_teams_in_two_currencies_behind_two_keys() -> None:
    us, br = ACCOUNTS
    assert (us.team.slug, us.currency, us.token) == ("demo-us", "USD", DEMO_TOKENS[0])
    assert (br.team.slug, br.currency, br.token) == ("demo-br", "BRL", DEMO_TOKENS[1])
    assert not set(us.projects) & set(br.projects)


def test_the_demo_has_something_for_every_showback_panel() -> None:
    us = ACCOUNTS[0]
    servers = [s for p in us.projects.values() for product in p.products for s in product.servers]
    assert any(not s.tags for s in servers)  # one untagged
    tags = [tag for s in servers for tag in s.tags]
    assert len(tags) > len(set(tags))  # overlapping
    locations = {
        product.bucket.location
        for p in us.projects.values()
        for product in p.products
        if product.bucket
    }
    assert len(locations) == 2
    assert any(product.billing_unit_divisor for p in us.projects.values() for product in p.products)


def test_usage_grows_with_time_and_rolls_over_at_period_end() -> None:
    now = [1_000_000.0]
    account = DemoAccount(clock=lambda: now[0], speed=3600)  # one real second = one hour
    web = account.projects["proj_demo_web"]
    first = account.usage(web)["data"]["attributes"]["price"]
    now[0] += 10
    later = account.usage(web)["data"]["attributes"]["price"]
    assert later > first
    now[0] += 24 * 20  # 20 simulated days: past the 30-day period end
    rolled = account.usage(web)["data"]["attributes"]
    assert rolled["price"] < first


def test_the_period_runs_at_the_speed_of_the_simulation() -> None:
    """Period start and end are real timestamps around now, so the share of the period
    gone and projections agree with the spend, however fast the demo runs."""
    now = [1_000_000.0]
    account = DemoAccount(clock=lambda: now[0])  # 60x: a 30-day period in 12 hours
    start, end, hours = account.period()
    assert end - start == 12 * 3600
    assert (now[0] - start) / (end - start) == pytest.approx(0.4)  # 12 of 30 days
    assert hours == 12 * 24
    now[0] += 3600  # one real hour: 2.5 simulated days
    start2, _, hours2 = account.period()
    assert start2 == start and hours2 == pytest.approx(hours + 60)


def test_a_product_running_all_the_time_uses_the_elapsed_time_in_its_unit() -> None:
    """One VM billed by the minute uses 60 minutes an hour, not 60 VMs' worth."""
    account = DemoAccount(clock=lambda: 1_000_000.0)
    _, _, hours = account.period()
    products = {
        p["id"]: p
        for p in account.usage(account.projects["proj_demo_web"])["data"]["attributes"]["products"]
    }
    real = hours / account.speed  # the answer counts hours of the real clock
    assert products["si_vm_ci"]["unit"] == "minute"
    assert products["si_vm_ci"]["quantity"] == pytest.approx(real * 60, abs=0.01)
    assert products["si_eip"]["quantity"] == pytest.approx(real, abs=0.01)
    assert products["si_bm_web"]["quantity"] == pytest.approx(2 * real, abs=0.01)  # 2 servers
    # ...at a unit price `speed` times the simulated one: the same money
    assert products["si_eip"]["unit_price"] == 0.5 * account.speed


def test_divided_units_price_as_quantity_over_divisor_times_unit_price() -> None:
    account = DemoAccount(clock=lambda: 1_000_000.0)
    products = {
        p["id"]: p
        for p in account.usage(account.projects["proj_demo_data"])["data"]["attributes"]["products"]
    }
    calls = products["si_api_calls"]
    divisor = calls["metadata"]["billing_unit_divisor"]
    assert divisor == 1000
    assert calls["quantity"] / divisor * calls["unit_price"] == pytest.approx(calls["price"], abs=1)


def test_demo_api_serves_each_key_its_own_team() -> None:
    with DemoApi([*default_accounts(), DemoAccount(token=TOKEN)]) as api:
        url = api.url + "/billing/usage?filter[project]=proj_demo_loja"
        status, headers, body = http_get(url, {"Authorization": DEMO_TOKENS[1]})
        assert status == 200 and headers["Content-Type"] == "application/vnd.api+json"
        assert json.loads(body)["data"]["attributes"]["project"]["slug"] == "loja-online"
        assert http_get(url, {"Authorization": DEMO_TOKENS[0]})[0] == 404
        assert http_get(url)[0] == 401
        status, _, body = http_get(
            api.url + "/projects?page[size]=10", {"Authorization": DEMO_TOKENS[1]}
        )
        (project,) = json.loads(body)["data"]
        assert project["attributes"]["team"]["currency"]["code"] == "BRL"


def test_the_demo_filters_by_plan_and_products_as_the_spec_says() -> None:
    """Before, `filter[plan]` and `filter[products][]` were ignored: a project's
    `plan`/`products` config could never be seen working in --demo."""
    with DemoApi(DemoAccount(token=TOKEN)) as api:
        base = api.url + "/billing/usage?filter[project]=proj_demo_web"

        def lines(query: str) -> tuple[list[str], float]:
            status, _, body = http_get(base + query, {"Authorization": TOKEN})
            assert status == 200
            attributes = json.loads(body)["data"]["attributes"]
            assert errors_of(billing_validator("newest"), json.loads(body)) == []
            return [p["id"] for p in attributes["products"]], attributes["price"]

        every, total = lines("")
        assert len(every) == 4
        assert lines("&filter[products][]=si_eip&filter[products][]=si_vm_ci")[0] == [
            "si_vm_ci",
            "si_eip",
        ]
        kept, price = lines("&filter[plan]=c2.small.x86")  # a plan name
        assert kept == ["si_bm_web"] and 0 < price < total
        assert lines("&filter[plan]=c2-small-x86")[0] == ["si_bm_web"]  # a server's plan
        assert lines("&filter[plan]=nope") == ([], 0)


def test_the_standalone_demo_says_its_keys_and_the_next_command() -> None:
    """Before: its keys were only in the source, and its --help had no descriptions."""
    result = subprocess.run(
        [sys.executable, "-m", "exporter.demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert all(token in result.stdout for token in DEMO_TOKENS)
    assert "LATITUDESH_AUTH_TOKEN=demo-key-us latitudesh-exporter --once" in result.stdout
    for flag in ("--speed", "--shape", "--port"):
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(flag))
        assert len(line.split()) > 2, flag  # the flag, its value, then words saying what
    readme = (ROOT / "README.md").read_text()
    assert "LATITUDESH_AUTH_TOKEN=demo-key-us latitudesh-exporter --once" in readme
    assert all(token in readme for token in DEMO_TOKENS)


def test_the_demo_closes_a_period_in_its_first_minutes_and_a_server_starts_after() -> None:
    """`--demo` starts three simulated hours (three real minutes) before its period's
    end; six simulated hours into the next one, dev-sandbox's build server starts, and
    the forecast sees its whole remaining cost while the linear projection hardly moves."""
    now = [1_000_000.0]
    us, _ = default_accounts(clock=lambda: now[0])
    dev = us.projects["proj_demo_dev"]

    def forecast_and_linear() -> tuple[float, float, float]:
        document = us.usage(dev)
        usage = usage_of(document, "proj_demo_dev", at=now[0])
        linear = statuspage.linear(usage, now[0])
        assert usage.projected_price is not None and linear is not None
        return usage.period_start or 0.0, usage.projected_price, linear

    first_start, _, _ = forecast_and_linear()
    now[0] += 2 * 60  # two real minutes: still the first period
    assert forecast_and_linear()[0] == first_start
    now[0] += 2 * 60  # four: the period closed a minute ago
    start, before_forecast, before_linear = forecast_and_linear()
    assert start > first_start
    assert "si_build" not in {p["id"] for p in us.usage(dev)["data"]["attributes"]["products"]}
    now[0] += 6 * 60  # six simulated hours later: the build server runs
    _, forecast, linear = forecast_and_linear()
    # 1.00 an hour more, for the ~713 hours left: the forecast jumps by about 713.00
    assert forecast - before_forecast == pytest.approx(713, abs=5)
    assert abs(forecast - linear) > 300  # the two projections visibly differ
    assert linear - before_linear < 50


def test_the_demos_project_budget_passes_75_percent_within_its_first_minutes() -> None:
    """`make run` shows a budget alert without waiting: web-platform's budget (made from
    the clock at the start) is under 75 % at the start and over it 90 real seconds on,
    before the period's close at three minutes; the team's stands near 40 %."""
    now = [1_800_000_000.0]
    accounts = default_accounts(clock=lambda: now[0])
    web, team = demo_budgets(accounts)
    assert (web["project"], "project" in team) == ("web-platform", False)
    us = accounts[0]

    def spent(budget: dict[str, Any], *projects: str) -> float:
        _, _, hours = us.period()
        return sum(us.price_at(pid, hours) for pid in projects) / 100 / float(budget["amount"])

    assert 0.7 < spent(web, "proj_demo_web") < 0.75
    assert spent(team, *us.projects) == pytest.approx(0.4, abs=0.01)
    now[0] += 95  # real seconds: simulated hours at the demo's speed
    assert spent(web, "proj_demo_web") >= 0.75
    _, end, _ = us.period()
    assert end > now[0]  # the period has not closed yet
