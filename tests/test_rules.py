"""Rules and configs: promtool's checks and unit tests, and their structure."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, require_binary

PROMETHEUS = ROOT / "prometheus"
README = (ROOT / "README.md").read_text()
#: Rules of minutes at a 1-minute evaluation, of a day at 5, of a week at 30 (cheaper).
RULE_TESTS = ("rules.test.yml", "rules.daily.test.yml", "rules.weekly.test.yml")


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        timeout=120,
    )


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_example_prometheus_config_is_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_alertmanager_config_is_valid() -> None:
    amtool = require_binary("amtool")
    result = subprocess.run(
        [amtool, "check-config", "alertmanager.yml"],
        capture_output=True,
        text=True,
        cwd=PROMETHEUS,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", RULE_TESTS)
def test_rule_tests_evaluate_every_group_in_a_fixed_order(name: str) -> None:
    """promtool takes groups in a random order unless told: an alert read before the
    recording it uses sees the last step's, absent beyond 5 minutes (a flaky test)."""
    order = yaml.safe_load((PROMETHEUS / name).read_text())["group_eval_order"]
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    assert order == [group["name"] for group in groups]


def test_every_alert_and_recording_rule_is_unit_tested() -> None:
    tests = [
        test
        for name in RULE_TESTS
        for test in yaml.safe_load((PROMETHEUS / name).read_text())["tests"]
    ]
    tested_alerts = {
        case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
    }
    assert tested_alerts == {rule["alert"] for rule in alerts()}
    fires = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if not case["exp_alerts"]
    }
    assert fires == tested_alerts, "every alert must be shown firing"
    assert quiet == tested_alerts, "every alert must be shown not firing"
    tested_records = {
        re.match(r"[\w:]+", case["expr"]).group(0)  # type: ignore[union-attr]
        for test in tests
        for case in test.get("promql_expr_test", [])
    }
    assert {rule["record"] for rule in rules() if "record" in rule} <= tested_records


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_alerts_carry_for_severity_and_annotations(rule: dict[str, Any]) -> None:
    assert "for" in rule
    assert rule["labels"]["severity"] in ("info", "warning", "critical")
    annotations = rule["annotations"]
    assert {"summary", "description", "runbook_url"} <= annotations.keys()
    anchor = annotations["runbook_url"].split("#", 1)[1]
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", README, re.MULTILINE)
    }
    assert anchor in headings, f"runbook {anchor} has no README section"


def test_multi_line_expressions_keep_their_line_breaks() -> None:
    """A folded YAML block (>) would join lines so a PromQL `#` comment eats the rest."""
    text = (PROMETHEUS / "rules.yml").read_text()
    assert not re.search(r"expr:\s*>", text)


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_per_key_alerts_carry_the_team(rule: dict[str, Any]) -> None:
    if rule["alert"] in ("LatitudeshTokenUnauthorized", "LatitudeshDiscoveryFailing"):
        assert "by (team)" in rule["expr"] or "team, reason" in rule["expr"]
        assert "$labels.team" in rule["annotations"]["summary"]


def test_the_prometheusrule_manifest_holds_exactly_these_rules() -> None:
    manifest = yaml.safe_load((ROOT / "deploy/kubernetes/base/prometheusrule.yaml").read_text())
    assert manifest["spec"] == yaml.safe_load((PROMETHEUS / "rules.yml").read_text())


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=LatitudeshThresholdExceeded"], "billing-pager"),
        (["severity=warning", "alertname=LatitudeshCreditLow"], "billing-team"),
        (["alertname=LatitudeshExporterDown"], "billing-team"),
    ],
)
def test_the_example_routes_send_each_alert_where_it_says(labels: list[str], receiver: str) -> None:
    amtool = require_binary("amtool")
    result = subprocess.run(
        [amtool, "config", "routes", "test", "--config.file=alertmanager.yml", *labels],
        capture_output=True,
        text=True,
        cwd=PROMETHEUS,
        check=False,
    )
    assert result.stdout.strip() == receiver, result.stdout + result.stderr


def test_an_exporter_down_silences_only_its_own_staleness() -> None:
    """Without `equal`, one replica down silenced the staleness alerts of every other."""
    config = yaml.safe_load((PROMETHEUS / "alertmanager.yml").read_text())
    (rule,) = [
        r
        for r in config["inhibit_rules"]
        if r["source_matchers"] == ['alertname="LatitudeshExporterDown"']
    ]
    assert "instance" in rule["equal"]
