"""Budgets: the config's checks, each scope against its spend (`budgets.assess`), the
series they make, and a SIGHUP that reads them again while the daemon runs."""

from __future__ import annotations

import logging
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.budgets import UnknownScopes, assess, from_settings
from exporter.config import ConfigError, Settings, load_settings
from exporter.snapshot import Budget, ProjectStatus, StoreView, TeamStatus
from exporter.store import SnapshotStore
from testing.fakeapi import FakeApi
from testing.waits import wait_for
from tests.conftest import (
    ExporterProcess,
    api_env,
    http_get,
    parse_samples,
    run_cli,
    sample,
    usage_of,
)

T0 = 1_800_000_000.0
HOUR = 3600.0
LEVELS = (50.0, 75.0, 90.0, 100.0)


def hourly(
    pid: str, price_cents: float, cents_an_hour: float, *servers: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": pid,
        "price": price_cents,
        "unit": "hour",
        "usage_type": "metered",
        "unit_price": cents_an_hour,
        "metadata": {"servers": list(servers)},
    }


def server(sid: str, *tags: str) -> dict[str, Any]:
    return {"id": sid, "hostname": sid, "plan": "c2", "tags": list(tags)}


def answer(project: str, *products: dict[str, Any], end: float = T0 + 100 * HOUR) -> dict[str, Any]:
    return {
        "data": {
            "attributes": {
                "project": {"id": project, "slug": f"{project}-slug"},
                "period": {"start": "2027-01-01T00:00:00Z", "end": _iso(end)},
                "price": sum(p["price"] for p in products),
                "products": list(products),
            }
        }
    }


def _iso(when: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def view_of(
    *budgets: Budget,
    projects: tuple[tuple[str, dict[str, Any], str], ...] = (),
    team: str = "prod",
    currency: str = "USD",
    at: float = T0,
) -> StoreView:
    """A view of team `team` (key and name) polling `projects` at `at`."""
    statuses = tuple(
        ProjectStatus(
            pid,
            team,
            usage=usage_of(payload, pid, currency=cur, at=at),
            up=True,
            last_success=at,
        )
        for pid, payload, cur in projects
    )
    teams = (TeamStatus(team, currency=currency, key=team),)
    return StoreView(statuses, teams, version=1, budgets=budgets)


# A project of 600.00 so far, running at 2.00 an hour on two servers (one tagged web,
# one db and web) for 100 hours more; and a second one, 400.00 at 1.00 an hour.
WEB = answer(
    "proj_w",
    hourly("si_1", 60_000, 200, server("sv_1", "web"), server("sv_2", "db", "web")),
)
API = answer("proj_a", hourly("si_2", 40_000, 100, server("sv_3", "db")))
BRL = answer("proj_b", hourly("si_3", 99_900, 900, server("sv_4", "web")))
PROJECTS = (("proj_w", WEB, "USD"), ("proj_a", API, "USD"), ("proj_b", BRL, "BRL"))


def test_a_project_budget_by_slug_spent_projected_and_run_out() -> None:
    (status,) = assess(
        view_of(Budget("prod", 1000.0, LEVELS, "project", "proj_w-slug"), projects=PROJECTS)
    )
    assert (status.found, status.project_id, status.currency) == (True, "proj_w", "USD")
    assert status.spent_ratio == pytest.approx(0.6)
    assert status.projected_ratio == pytest.approx((600 + 2 * 100) / 1000)
    assert status.period_end == T0 + 100 * HOUR
    assert status.run_out == pytest.approx(T0 + (1000 - 600) / 2 * HOUR)  # 200 hours on


def test_a_tag_budget_sums_the_tag_over_the_teams_projects_in_its_currency() -> None:
    """db: half of si_1 (300.00, 1.00/h) and all of si_2 (400.00, 1.00/h); the BRL
    project's servers never count in a USD team's budget."""
    budgets = (
        Budget("prod", 1400.0, LEVELS, "tag", "db"),
        Budget("prod", 1000.0, LEVELS, "tag", "web"),
    )
    db, web = assess(view_of(*budgets, projects=PROJECTS))
    assert db.spent == pytest.approx(700.0) and db.spent_ratio == pytest.approx(0.5)
    assert db.run_out == pytest.approx(T0 + (1400 - 700) / 2.0 * HOUR)
    assert web.spent == pytest.approx(600.0)  # both servers of si_1, not proj_b's
    assert (db.tag, db.project_id, db.budget.scope) == ("db", "", "tag")


def test_a_team_budget_sums_every_project_billed_in_the_teams_currency() -> None:
    (team,) = assess(view_of(Budget("prod", 2000.0, (100.0,)), projects=PROJECTS))
    assert team.spent == pytest.approx(1000.0)
    assert team.projected == pytest.approx(1000.0 + 3.0 * 100)
    assert team.run_out == pytest.approx(T0 + 1000 / 3.0 * HOUR)


def test_a_spent_budget_has_no_run_out_and_nothing_running_has_no_projection() -> None:
    (spent,) = assess(
        view_of(Budget("prod", 600.0, LEVELS, "project", "proj_w"), projects=PROJECTS)
    )
    assert spent.spent_ratio == pytest.approx(1.0) and spent.run_out is None
    licence = answer("proj_l", {"id": "si_l", "price": 5000, "usage_type": "licensed"})
    (idle,) = assess(view_of(Budget("prod", 100.0, LEVELS), projects=(("proj_l", licence, "USD"),)))
    assert idle.spent_ratio == pytest.approx(0.5)
    assert (idle.projected, idle.run_out) == (None, None)


def test_the_run_out_is_from_the_polls_time_not_the_scrapes() -> None:
    budget = Budget("prod", 1000.0, LEVELS, "project", "proj_w")
    (early,) = assess(view_of(budget, projects=PROJECTS[:1], at=T0))
    (later,) = assess(view_of(budget, projects=PROJECTS[:1], at=T0 + HOUR))
    assert early.run_out is not None
    assert later.run_out == pytest.approx(early.run_out + HOUR)  # same spend, an hour on


@pytest.mark.parametrize(
    "budget",
    [
        Budget("prod", 10.0, LEVELS, "project", "proj_nowhere"),
        Budget("prod", 10.0, LEVELS, "tag", "nowhere"),
    ],
    ids=["project", "tag"],
)
def test_an_unknown_scope_is_found_0_and_has_no_spend(budget: Budget) -> None:
    (status,) = assess(view_of(budget, projects=PROJECTS))
    assert not status.found
    assert (status.spent_ratio, status.projected_ratio, status.run_out) == (None, None, None)


def test_a_known_project_not_polled_yet_has_no_spend_rather_than_a_false_zero() -> None:
    view = view_of(Budget("prod", 10.0, LEVELS, "project", "proj_w"))
    view = replace(view, projects=(ProjectStatus("proj_w", "prod"),))
    (status,) = assess(view)
    assert status.found and status.spent is None


def test_a_renamed_team_keeps_its_budgets_under_its_new_label() -> None:
    store = SnapshotStore()
    store.add_team("default")
    store.set_budgets([Budget("default", 100.0, LEVELS)])
    assert store.rename_team("default", "acme")
    (status,) = assess(store.view())
    assert status.team == "acme"


def test_levels_as_labels_and_shares() -> None:
    (status,) = assess(view_of(Budget("prod", 10.0, (12.5, 100.0, 250.0))))
    assert status.levels == (("12.5", 0.125), ("100", 1.0), ("250", 2.5))


# --- the config ------------------------------------------------------------------------


def settings_of(tmp_path: Path, content: dict[str, Any]) -> Settings:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(content))
    return load_settings(path, explicit=True)


def test_budgets_from_the_config_default_levels_and_the_only_team(tmp_path: Path) -> None:
    settings = settings_of(
        tmp_path,
        {
            "budgets": [
                {"project": "proj_w", "amount": 1500},
                {"tag": "web", "amount": 5, "levels": [90, 10]},
            ]
        },
    )
    assert from_settings(settings) == (
        Budget("default", 1500.0, LEVELS, "project", "proj_w"),
        Budget("default", 5.0, (10.0, 90.0), "tag", "web"),
    )


@pytest.mark.parametrize(
    ("budgets", "teams", "message"),
    [
        ([{"amount": -5}], None, "budgets[#1].amount: Input should be greater than 0"),
        ([{"amount": 0}], None, "budgets[#1].amount: Input should be greater than 0"),
        ([{"amount": 5, "levels": [0]}], None, "budgets[#1].levels: each level is a percentage"),
        ([{"amount": 5, "levels": [50, 50]}], None, "a level is listed twice"),
        ([{"amount": 5, "project": "p", "tag": "t"}], None, "a budget has one scope"),
        ([{"amount": 5, "team": "nope"}], None, "budgets[#1].team: no team is named 'nope'"),
        ([{"amount": 5}], ["a", "b"], "budgets[#1].team: required with several teams (a, b)"),
        (
            [{"amount": 5, "tag": "x"}, {"amount": 6, "tag": "x"}],
            None,
            "budgets[#2]: the same scope as budgets[#1]",
        ),
        ([{"amount": 5, "colour": "red"}], None, "budgets[#1].colour: unknown field"),
    ],
)
def test_a_bad_budget_is_one_config_error_naming_it(
    tmp_path: Path, budgets: list[dict[str, Any]], teams: list[str] | None, message: str
) -> None:
    content: dict[str, Any] = {"budgets": budgets}
    if teams:
        content["teams"] = [{"name": name, "token_env": "KEY"} for name in teams]
    with pytest.raises(ConfigError, match=None) as caught:
        settings_of(tmp_path, content)
    assert message in str(caught.value)


def test_a_negative_amount_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("budgets:\n  - project: proj_w\n    amount: -1500\n")
    result = run_cli("--config.file", str(config), env={"LATITUDESH_AUTH_TOKEN": "k"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "latitudesh-exporter: config error: budgets[#1].amount: Input should be greater than 0"
    )


def test_a_budget_on_a_project_the_team_does_not_list_is_warned_about_at_start(
    fake_api: FakeApi, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "projects": [{"id": "proj_demo_web"}],
                "budgets": [{"project": "proj_elsewhere", "amount": 10}],
            }
        )
    )
    result = run_cli("--check-config", "--config.file", str(config), env=api_env(fake_api))
    assert "a budget names a project its team does not list" in result.stderr
    assert "project=proj_elsewhere" in result.stderr


def test_a_budget_naming_a_listed_project_by_its_slug_is_not_warned_about_at_start(
    fake_api: FakeApi, tmp_path: Path
) -> None:
    """A slug is unknown until the first poll: only an id can be checked at start."""
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "projects": [{"id": "proj_demo_web"}],
                "budgets": [{"project": "web-platform", "amount": 10}],
            }
        )
    )
    result = run_cli("--check-config", "--config.file", str(config), env=api_env(fake_api))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a budget names a project" not in result.stderr


# --- the daemon: the series, and SIGHUP --------------------------------------------------


def budget_samples(exporter: ExporterProcess) -> dict[tuple[str, str], float]:
    status, _, body = http_get(exporter.url + "/metrics")
    assert status == 200
    samples = parse_samples(body.decode())
    return {
        (dict(labels)["scope"], dict(labels).get("level", "")): value
        for (name, labels), value in samples.items()
        if name in ("latitudesh_budget_amount", "latitudesh_budget_level_ratio")
    }


@pytest.mark.timeout(300)  # its waits add up beyond the suite's default 120 s
def test_sighup_reads_the_budgets_again_and_refuses_a_broken_file(
    fake_api: FakeApi, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "budgets": [
                    {"project": "web-platform", "amount": 100},
                    {"tag": "nowhere", "amount": 1},
                ]
            }
        )
    )
    exporter = ExporterProcess(["--config.file", str(config)], env=api_env(fake_api), tmp=tmp_path)
    try:
        exporter.wait_ready()
        # a tag no server carries: told once the team was polled (the daemon's check)
        wait_for(
            lambda: "a budget names a tag its team does not have" in exporter.output(),
            timeout=120,  # the first refresh, then a check every 10 s
            message="the warning of a budget on nothing",
        )
        assert "tag=nowhere" in exporter.output()
        wait_for(
            lambda: (
                sample(exporter.scrape(), "latitudesh_budget_spent_ratio", scope="project")
                is not None
            ),
            message="the project budget's spend",
        )
        assert budget_samples(exporter)[("project", "")] == 100.0
        config.write_text(
            yaml.safe_dump(
                {"budgets": [{"amount": 900, "levels": [80]}, {"tag": "web", "amount": 5}]}
            )
        )
        exporter.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: ("team", "") in budget_samples(exporter), message="the new budgets served")
        figures = budget_samples(exporter)
        assert ("project", "") not in figures
        assert figures[("team", "")] == 900.0 and figures[("team", "80")] == 0.8
        assert figures[("tag", "100")] == 1.0
        config.write_text("budgets:\n  - amount: -1\n")
        exporter.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: sample(exporter.scrape(), "latitudesh_config_last_reload_successful") == 0.0,
            message="the reload refused",
        )
        assert budget_samples(exporter) == figures  # the budgets in use stay
        assert "config refused: the settings in use are kept" in exporter.output()
        assert "budgets[#1].amount" in exporter.output()
    finally:
        exporter.stop()


def test_an_unknown_scope_is_warned_about_once_its_team_was_polled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A tag or discovered project can only be missed once the team has something to
    measure; then one warning, not one a check, and again only if found and lost."""
    tag = Budget("prod", 10.0, LEVELS, "tag", "db")
    told = Budget("prod", 10.0, LEVELS, "project", "proj_typo")  # warned at start
    polled = view_of(tag, told, projects=PROJECTS[:1])  # proj_w: no server tagged db...
    polled = replace(
        polled,
        projects=(
            replace(
                polled.projects[0],
                usage=usage_of(
                    answer("proj_w", hourly("si_1", 100, 1, server("sv_1", "web"))), "proj_w", at=T0
                ),
            ),
        ),
    )
    waiting = replace(polled, teams=(replace(polled.teams[0], refreshed=False),))
    found = view_of(tag, told, projects=PROJECTS)  # ...proj_a's server is
    ready = replace(polled, teams=(replace(polled.teams[0], refreshed=True),))
    shown = [waiting]
    unknown = UnknownScopes(lambda: shown[0], warned=[told])

    def warnings() -> list[str]:
        return [
            r.getMessage() for r in caplog.records if r.getMessage().startswith("a budget names")
        ]

    with caplog.at_level(logging.WARNING, logger="exporter"):
        unknown.check()
        assert warnings() == []  # the team has not been polled yet
        shown[0] = ready
        unknown.check()
        unknown.check()
        assert warnings() == ["a budget names a tag its team does not have: nothing to measure"]
        shown[0] = found
        unknown.check()
        shown[0] = ready
        unknown.check()
        assert len(warnings()) == 2  # found, then lost again
