"""Rules, configs and dashboard: promtool's checks and unit tests, and their structure."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, require_binary

PROMETHEUS = ROOT / "prometheus"
DASHBOARD = ROOT / "grafana" / "dashboards" / "latitudesh-billing.json"
README = (ROOT / "README.md").read_text()


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("promtool"), *args], capture_output=True, text=True,
                          cwd=cwd, check=False, timeout=120)


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", "rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_example_prometheus_config_is_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_alertmanager_config_is_valid() -> None:
    amtool = require_binary("amtool")
    result = subprocess.run([amtool, "check-config", "alertmanager.yml"], capture_output=True,
                            text=True, cwd=PROMETHEUS, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_and_recording_rule_is_unit_tested() -> None:
    tests = yaml.safe_load((PROMETHEUS / "rules.test.yml").read_text())["tests"]
    tested_alerts = {case["alertname"] for test in tests
                     for case in test.get("alert_rule_test", [])}
    assert tested_alerts == {rule["alert"] for rule in alerts()}
    fires = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
             if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
             if not case["exp_alerts"]}
    assert fires == tested_alerts, "every alert must be shown firing"
    assert quiet == tested_alerts, "every alert must be shown not firing"
    tested_records = {re.match(r"[\w:]+", case["expr"]).group(0)  # type: ignore[union-attr]
                      for test in tests for case in test.get("promql_expr_test", [])}
    assert {rule["record"] for rule in rules() if "record" in rule} <= tested_records


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_alerts_carry_for_severity_and_annotations(rule: dict[str, Any]) -> None:
    assert "for" in rule
    assert rule["labels"]["severity"] in ("warning", "critical")
    annotations = rule["annotations"]
    assert {"summary", "description", "runbook_url"} <= annotations.keys()
    anchor = annotations["runbook_url"].split("#", 1)[1]
    headings = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", README, re.MULTILINE)}
    assert anchor in headings, f"runbook {anchor} has no README section"


def test_multi_line_expressions_keep_their_line_breaks() -> None:
    """A folded YAML block (>) would join lines so a PromQL `#` comment eats the rest."""
    text = (PROMETHEUS / "rules.yml").read_text()
    assert not re.search(r"expr:\s*>", text)


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_dashboard_has_the_datasource_project_and_currency_variables() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["project"]["multi"] is True
    assert "latitudesh_project_info" in variables["project"]["definition"]
    assert "currency" in variables["currency"]["definition"]


@pytest.mark.parametrize("panel", panels(), ids=lambda p: p["title"])
def test_every_panel_has_a_description_and_uses_the_variable_datasource(
        panel: dict[str, Any]) -> None:
    assert len(panel["description"]) > 20
    assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
    assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])


def test_money_panels_name_the_currency() -> None:
    for panel in panels():
        exprs = " ".join(t["expr"] for t in panel["targets"])
        if "billing_price" in exprs or "credit" in exprs:
            assert "($currency)" in panel["title"] or "ratio" in exprs, panel["title"]


def test_dashboard_covers_the_required_panels() -> None:
    exprs = " ".join(t["expr"] for p in panels() for t in p["targets"])
    for needle in ("latitudesh_billing_price", "projected_end_of_period",
                   "latitudesh_billing_threshold", "available_credit_balance",
                   "topk(", "sum_by_plan", "sum_by_resource", "product_quantity",
                   "latitudesh_up", "last_success_timestamp", "poll_errors_total",
                   "api_requests_total"):
        assert needle in exprs, needle


def test_provisioning_points_at_the_dashboard() -> None:
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/latitudesh.yml")
                              .read_text())
    assert provider["providers"][0]["type"] == "file"
    datasource = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml")
                                .read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"
