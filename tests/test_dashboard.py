"""The Grafana dashboard: generated as committed, valid against Grafana's published
schema, money in each currency's unit, never doubled by replicas, chained variables."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import IN_CI, ROOT

GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "latitudesh-billing.json"
SCHEMA_CHECK = GRAFANA / "schema-check"


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def exprs(panel: dict[str, Any]) -> str:
    return " ".join(t["expr"] for t in panel["targets"])


def test_the_committed_json_is_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("build_dashboard", GRAFANA / "build_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == DASHBOARD.read_text(), "run python grafana/build_dashboard.py"


def test_the_json_is_valid_against_grafanas_published_schema(tmp_path: Path) -> None:
    """Type-checked with tsc against the Dashboard type of @grafana/schema (npm): the
    schema Grafana itself publishes. `.ci/run` installs it (npm ci)."""
    tsc = SCHEMA_CHECK / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        reason = f"npm ci --prefix {SCHEMA_CHECK.relative_to(ROOT)} has not been run"
        if IN_CI:
            pytest.fail(f"{reason}; CI must have it")
        pytest.skip(reason)
    source = (
        (SCHEMA_CHECK / "check.ts.tmpl").read_text().replace("__DASHBOARD__", DASHBOARD.read_text())
    )
    checked = SCHEMA_CHECK / "check.ts"
    checked.write_text(source)
    try:
        result = subprocess.run(
            [
                str(tsc),
                "--noEmit",
                "--strict",
                "--moduleResolution",
                "bundler",
                "--module",
                "esnext",
                "--target",
                "es2022",
                str(checked),
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=SCHEMA_CHECK,
            timeout=120,
        )
    finally:
        checked.unlink()
    assert result.returncode == 0, result.stdout + result.stderr


def test_variables_chain_team_to_project_to_currency() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert list(variables) == ["DS_PROMETHEUS", "team", "project", "currency", "tag"]
    assert variables["project"]["query"]["query"] == (
        'label_values(latitudesh_project_info{team=~"$team"}, project_slug)'
    )
    assert "$project" in variables["currency"]["query"]["query"]
    assert all(v.get("multi") for v in variables.values() if v["type"] == "query")


@pytest.mark.parametrize("panel", panels(), ids=lambda p: p["title"])
def test_every_panel_has_a_description_and_the_variable_datasource(
    panel: dict[str, Any],
) -> None:
    assert len(panel["description"]) > 20
    assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
    assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])


MONEY = re.compile(
    r"latitudesh_billing_(price|threshold|available_credit|product_price|"
    r"server_price|tag_price)|billing_price:|sum_by_(plan|resource)"
)


@pytest.mark.parametrize(
    "panel",
    [
        p
        for p in panels()
        if (MONEY.search(exprs(p)) and "ratio" not in exprs(p) and p["type"] != "stat")
        or p["title"] in ("Spend so far", "Credit left")
    ],
    ids=lambda p: p["title"],
)
def test_money_panels_show_each_currency_in_its_unit(panel: dict[str, Any]) -> None:
    units = {
        override["matcher"]["options"]: prop["value"]
        for override in panel["fieldConfig"]["overrides"]
        for prop in override["properties"]
        if prop["id"] == "unit"
    }
    by_ref = {t["refId"]: t["expr"] for t in panel["targets"]}
    for ref, unit in units.items():
        code = unit.removeprefix("currency")
        assert f'currency="{code}"' in by_ref[ref], (ref, unit)
    assert {"currencyUSD", "currencyBRL"} <= set(units.values())


@pytest.mark.parametrize("panel", panels(), ids=lambda p: p["title"])
def test_every_series_is_taken_once_across_replicas(panel: dict[str, Any]) -> None:
    for target in panel["targets"]:
        expr = target["expr"]
        if expr.startswith("latitudesh:billing_price:sum_by_team"):
            continue  # the recording rule deduplicates already
        assert "without (instance, pod)" in expr, expr


def test_threshold_shares_are_green_orange_red_at_80_and_100_percent() -> None:
    shares = [p for p in panels() if "threshold_used" in exprs(p)]
    assert shares
    for panel in shares:
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [(s["color"], s["value"]) for s in steps] == [
            ("green", None),
            ("orange", 0.8),
            ("red", 1),
        ]
        assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"


def test_dashboard_covers_the_required_panels() -> None:
    text = " ".join(exprs(p) for p in panels())
    for needle in (
        "latitudesh_billing_price",
        "projected_end_of_period",
        "latitudesh_billing_threshold",
        "available_credit_balance",
        "topk(",
        "sum_by_plan",
        "sum_by_resource",
        "product_quantity",
        "latitudesh_up",
        "last_success_timestamp",
        "poll_errors_total",
        "api_requests_total",
        "sum_by_team",
        "billing_tag_price",
        "server_price",
        "server_tag_info",
        "product_bucket_info",
        '"__untagged__"',
        '"__unattributed__"',
        "latitudesh_budget_spent_ratio",
        "latitudesh_budget_projected_ratio",
        "latitudesh_budget_run_out_timestamp_seconds",
        "latitudesh:billing_run_rate:expected",
    ):
        assert needle in text, needle
    rows = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    assert {"Showback: servers and tags", "Budgets"} <= set(rows)


def test_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, panel["title"]
        assert grid["x"] + grid["w"] <= 24
        taken |= cells


def test_provisioning_points_at_the_dashboard() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/latitudesh.yml").read_text())
    assert provider["providers"][0]["type"] == "file"
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"
