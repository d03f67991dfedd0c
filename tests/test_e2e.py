"""exporter → Prometheus → rules → Alertmanager → webhook, with the real servers.

One stack per module: the fake API with two teams (USD and BRL, one key each; in this
process, so faults can be injected), two replicas of the exporter as processes, both
serving both teams (the README's HA set-up: every series comes twice, so rules and
panels must neither fail to match nor double the money), Prometheus loading the
shipped rules (their `for:` shortened to 0s so a provoked alert arrives in seconds, not
hours), and Alertmanager routing to a webhook receiver run here. Everything listens on
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.simulation import DemoAccount, DemoTeam, brazil_projects
from testing import periods
from testing.fakeapi import FakeApi, Fault
from testing.periods import period_before
from testing.waits import wait_for
from tests.conftest import (
    ROOT,
    ExporterProcess,
    http_get,
    require_binary,
)

KEY_US = "e2e-key-us-0123456789"
KEY_BR = "e2e-key-br-9876543210"

# one worker runs the module: its stack of servers is started once
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.xdist_group("e2e"),
]

DASHBOARD = ROOT / "grafana" / "dashboards" / "latitudesh-billing.json"


@dataclass
class Receiver:
    """The webhook Alertmanager notifies: keeps every alert it was sent."""

    alerts: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def find(self, status: str, **labels: str) -> dict[str, Any] | None:
        with self.lock:
            for alert in self.alerts:
                if alert["status"] == status and labels.items() <= alert["labels"].items():
                    return alert
        return None


def start_receiver(receiver: Receiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with receiver.lock:
                receiver.alerts.extend(body["alerts"])
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Stack:
    api: FakeApi
    exporters: list[ExporterProcess]
    prometheus_url: str
    receiver: Receiver
    logs: dict[str, Path]

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        status, _, body = http_get(url)
        answer = json.loads(body)
        assert status == 200, answer
        result = answer["data"]["result"]
        return result if isinstance(result, list) else [result]

    def diagnostics(self) -> str:
        return "\n".join(
            f"--- {name}\n{path.read_text(errors='replace')[-3000:]}"
            for name, path in self.logs.items()
        )


#: The line in which Prometheus and Alertmanager (exporter-toolkit's web server) say
#: the address they bound: with port 0, the port the kernel gave them.
_LISTENING_ON = re.compile(rb'msg="Listening on" address=[\w.:\[\]]*:(\d+)')


def listening_port(name: str, process: subprocess.Popen[bytes], log: Path) -> int:
    """The port a Prometheus server (started with `--web.listen-address=...:0`) bound,
    read from its log. Port 0: the server binds a free port itself, so nothing can take
    it between a pick and the bind (picking a free port for it to bind later was a race
    that parallel tests lost now and then)."""

    def bound() -> int | None:
        match = _LISTENING_ON.search(log.read_bytes())
        if match:
            return int(match.group(1))
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            pytest.fail(f"{name} exited with {process.returncode}:\n{tail}")
        return None

    port: int = wait_for(bound, 60, f"{name} to say the port it listens on")
    return port


def shortened_rules(source: Path, target: Path) -> None:
    document = yaml.safe_load(source.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "0s"
    target.write_text(yaml.safe_dump(document, sort_keys=False))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = require_binary("prometheus")
    alertmanager_bin = require_binary("prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("e2e")
    processes: list[subprocess.Popen[bytes]] = []
    logs: dict[str, Path] = {}

    def spawn(name: str, argv: list[str]) -> int:
        """Start `name` listening on port 0; the port it bound, from its log."""
        logs[name] = tmp / f"{name}.log"
        with logs[name].open("wb") as log:  # the child keeps its own descriptor
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        processes.append(process)
        return listening_port(name, process, logs[name])

    def stop_processes() -> None:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()

    # Whatever fails on the way up, what was started is stopped (in reverse order).
    with contextlib.ExitStack() as started:
        receiver = Receiver()
        receiver_server = start_receiver(receiver)
        started.callback(receiver_server.server_close)
        started.callback(receiver_server.shutdown)
        us = DemoAccount(speed=1.0, token=KEY_US)
        api = FakeApi(
            [
                us,
                DemoAccount(
                    brazil_projects(),
                    speed=1.0,
                    token=KEY_BR,
                    team=DemoTeam("demo-br", "Demo Brasil", "BRL"),
                ),
            ]
        ).start()
        started.callback(api.stop)
        exporters: list[ExporterProcess] = []
        for index in range(2):
            state_home = tmp / f"state-{index}"
            seed_closed_periods(api, state_home / "latitudesh-exporter" / "state.db")
            exporter = ExporterProcess(
                [],
                env={
                    "LATITUDESH_EXPORTER_TEAMS": json.dumps(
                        [
                            {"name": "us", "token_env": "KEY_US", "requests_per_minute": 6000},
                            {"name": "br", "token_env": "KEY_BR", "requests_per_minute": 6000},
                        ]
                    ),
                    "LATITUDESH_EXPORTER_BUDGETS": json.dumps([web_budget(us)]),
                    "KEY_US": KEY_US,
                    "KEY_BR": KEY_BR,
                    "LATITUDESH_EXPORTER_API__BASE_URL": api.url,
                    "LATITUDESH_EXPORTER_API__MAX_RETRIES": "0",
                    "LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS": "1",
                    "XDG_STATE_HOME": str(state_home),
                },
                cwd=tmp,
                tmp=tmp,
            )
            started.callback(exporter.stop)
            exporters.append(exporter)
            logs[f"exporter-{index}"] = exporter.log_path
        started.callback(stop_processes)

        (tmp / "alertmanager.yml").write_text(
            yaml.safe_dump(
                {
                    "route": {
                        "receiver": "webhook",
                        "group_by": ["alertname", "project_id", "reason", "team"],
                        "group_wait": "0s",
                        "group_interval": "1s",
                        "repeat_interval": "1h",
                    },
                    "receivers": [
                        {
                            "name": "webhook",
                            "webhook_configs": [
                                {
                                    "url": f"http://127.0.0.1:{receiver_server.server_address[1]}/",
                                    "send_resolved": True,
                                }
                            ],
                        }
                    ],
                }
            )
        )
        am_port = spawn(
            "alertmanager",
            [
                alertmanager_bin,
                "--config.file=alertmanager.yml",
                f"--storage.path={tmp / 'am-data'}",
                "--web.listen-address=127.0.0.1:0",
                "--cluster.listen-address=",
            ],
        )

        shortened_rules(ROOT / "prometheus" / "rules.yml", tmp / "rules.yml")
        alertmanagers = [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
        exporter_targets = [f"127.0.0.1:{exporter.port}" for exporter in exporters]
        (tmp / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": ["rules.yml"],
                    "alerting": {"alertmanagers": alertmanagers},
                    "scrape_configs": [
                        {
                            "job_name": "latitudesh",
                            "static_configs": [{"targets": exporter_targets}],
                        }
                    ],
                }
            )
        )
        prom_port = spawn(
            "prometheus",
            [
                prometheus_bin,
                "--config.file=prometheus.yml",
                f"--storage.tsdb.path={tmp / 'prom-data'}",
                "--web.listen-address=127.0.0.1:0",
            ],
        )

        built = Stack(api, exporters, f"http://127.0.0.1:{prom_port}", receiver, logs)
        for exporter in exporters:
            exporter.wait_ready()
        wait_for(
            lambda: len(_results(built, 'up{job="latitudesh"} == 1')) == len(exporters),
            timeout=60,
            message="Prometheus to scrape both exporters",
        )
        yield built


def seed_closed_periods(api: FakeApi, path: Path) -> None:
    """A state file as an exporter that watched the last period close leaves it: each
    project's last answer of the period before (a minute before its end), then one of
    this period, so that the last-period panels have data from the first scrape."""
    teams = list(zip(("us", "br"), api.accounts, strict=True))
    earlier = [(key, account, *period_before(account)) for key, account in teams]
    periods.keep(
        path,
        [
            a
            for key, account, before, at in earlier
            for a in periods.answers(key, account, before, at)
        ],
        [a for key, account in teams for a in periods.answers(key, account, account, time.time())],
    )


def _results(stack: Stack, query: str) -> list[dict[str, Any]]:
    """What `query` returns now; nothing while Prometheus cannot answer it yet."""
    try:
        return stack.query(query)
    except (OSError, ValueError, KeyError, AssertionError):
        return []


def _any_answers(stack: Stack, queries: list[str]) -> bool:
    return any(_results(stack, query) for query in queries)


def dashboard_panels() -> list[dict[str, Any]]:
    document = json.loads(DASHBOARD.read_text())
    return [panel for panel in document["panels"] if panel.get("targets")]


def substitute(expr: str) -> str:
    return (
        expr.replace("$project", ".*")
        .replace("$currency", ".*")
        .replace("$team", ".*")
        .replace("$tag", ".*")
        .replace("$__rate_interval", "1m")
    )


def web_budget(account: DemoAccount) -> dict[str, Any]:
    """A budget of web-platform 80 % spent (it barely moves at the real clock's speed):
    its 50 % level fires, its 90 % does not."""
    _, _, hours = account.period()
    spent = account.price_at("proj_demo_web", hours) / 100
    return {"team": "us", "project": "web-platform", "amount": spent / 0.8, "levels": [50, 90]}


#: Recordings that need history a fresh Prometheus has not got: the same hour a day and a
#: week ago (the promtool cases of rules.weekly.test.yml cover them).
NEED_HISTORY = ("latitudesh:billing_run_rate:seasonal", "latitudesh:billing_tag_run_rate:seasonal")


def test_every_recording_rule_yields_data(stack: Stack) -> None:
    records = [
        rule["record"]
        for group in yaml.safe_load((ROOT / "prometheus" / "rules.yml").read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule and rule["record"] not in NEED_HISTORY
    ]
    for record in records:
        wait_for(
            partial(stack.query, record),
            timeout=60,
            message=f"recording rule {record} to have data\n{stack.diagnostics()}",
        )


def test_every_dashboard_panel_returns_data_in_both_currencies(stack: Stack) -> None:
    """Each panel shows something; a money panel's USD and BRL queries both do, since
    the stack bills one team in each (EUR, GBP and the rest stay empty here)."""
    for panel in dashboard_panels():
        queries = {t["refId"]: substitute(t["expr"]) for t in panel["targets"]}
        wait_for(
            partial(_any_answers, stack, list(queries.values())),
            timeout=60,
            message=f"panel {panel['title']!r}: {queries}",
        )
        for expr in queries.values():
            if 'currency="USD"' in expr or (
                'currency="BRL"' in expr and "tag" not in expr and "bucket" not in expr
            ):
                wait_for(
                    partial(stack.query, expr),
                    timeout=60,
                    message=f"panel {panel['title']!r}: {expr}",
                )


def readme_examples() -> list[str]:
    """The queries of the README's ```promql block, each under its `#` comment."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"### Example PromQL\n.*?```promql\n(.*?)```", readme, re.S)
    assert block is not None
    queries = [
        " ".join(line for line in chunk.splitlines() if not line.startswith("#"))
        for chunk in block.group(1).split("\n\n")
    ]
    return [query.strip() for query in queries if query.strip()]


def test_every_readme_example_returns_data(stack: Stack) -> None:
    examples = readme_examples()
    assert len(examples) == 10
    for query in examples:
        wait_for(
            partial(_any_answers, stack, [query]),
            timeout=60,
            message=f"README example to return data: {query}",
        )


def test_dashboard_counts_each_project_once_across_replicas(stack: Stack) -> None:
    """Both replicas export every project: the spend stat must not add them up."""
    (panel,) = [p for p in dashboard_panels() if p["title"] == "Spend so far"]
    (spend_query,) = [t["expr"] for t in panel["targets"] if 'currency="USD"' in t["expr"]]
    per_replica = {
        row["metric"]["instance"]: float(row["value"][1])
        for row in stack.query('sum by (instance) (latitudesh_billing_price{currency="USD"})')
    }
    (total,) = stack.query(substitute(spend_query))
    assert len(per_replica) == 2
    # The replicas poll a moment apart, so their figures differ by a hair; doubled
    # money would be twice either of them.
    assert float(total["value"][1]) == pytest.approx(max(per_replica.values()), rel=0.01)


def test_dashboard_variables_find_values(stack: Stack) -> None:
    document = json.loads(DASHBOARD.read_text())
    for variable in document["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
        assert match is not None
        selector, label = substitute(match.group(1)), match.group(2)
        url = f"{stack.prometheus_url}/api/v1/label/{label}/values?" + urllib.parse.urlencode(
            {"match[]": selector}
        )
        values = json.loads(http_get(url)[2])["data"]
        assert values, variable["name"]
        if label == "project_slug":
            assert {
                "web-platform",
                "ml-training",
                "data-lake",
                "dev-sandbox",
                "loja-online",
            } <= set(values)
        if label == "team":
            assert set(values) == {"us", "br"}


def test_threshold_alert_reaches_the_receiver_and_resolves(stack: Stack) -> None:
    gpu = {"alertname": "LatitudeshThresholdExceeded", "project_slug": "ml-training"}
    assert stack.receiver.find("firing", **gpu) is None  # at 96 %, not yet over
    stack.api.inject(Fault("scale", factor=3.0), project="proj_demo_gpu", times=None)
    alert = wait_for(
        lambda: stack.receiver.find("firing", **gpu),
        timeout=60,
        message=f"the threshold alert\n{stack.diagnostics()}",
    )
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["project_id"] == "proj_demo_gpu"
    assert alert["labels"]["currency"] == "USD"
    assert alert["annotations"]["summary"] == "ml-training has passed its billing threshold"
    assert alert["annotations"]["runbook_url"].endswith("#latitudeshthresholdexceeded")
    stack.api.clear_faults()
    wait_for(
        lambda: stack.receiver.find("resolved", **gpu),
        timeout=60,
        message="the threshold alert to resolve",
    )


def test_a_budget_level_alert_reaches_the_receiver_with_its_level(stack: Stack) -> None:
    """web-platform's budget is 80 % spent: its 50 % level reaches the receiver, labelled
    so that a route can tell it from the 90 % one, which does not fire."""
    reached = {"alertname": "LatitudeshBudgetLevelReached", "team": "us"}
    alert = wait_for(
        lambda: stack.receiver.find("firing", **reached),
        timeout=60,
        message=f"the budget alert\n{stack.diagnostics()}",
    )
    labels = alert["labels"]
    assert (labels["level"], labels["scope"], labels["project_id"]) == (
        "50",
        "project",
        "proj_demo_web",
    )
    assert labels["severity"] == "warning" and labels["currency"] == "USD"
    assert alert["annotations"]["summary"] == "Budget of project proj_demo_web passed 50 %"
    assert alert["annotations"]["runbook_url"].endswith("#latitudeshbudgetlevelreached")
    assert stack.receiver.find("firing", level="90") is None
    assert stack.receiver.find("firing", alertname="LatitudeshBudgetExceeded") is None


def test_failing_polls_alert_reaches_the_receiver_and_resolves(stack: Stack) -> None:
    failing = {
        "alertname": "LatitudeshPollsFailing",
        "project_id": "proj_demo_dev",
        "reason": "server_error",
    }
    stack.api.inject(Fault("status", status=503), project="proj_demo_dev", times=None)
    alert = wait_for(
        lambda: stack.receiver.find("firing", **failing),
        timeout=60,
        message=f"the polls-failing alert\n{stack.diagnostics()}",
    )
    assert alert["labels"]["project_slug"] == "dev-sandbox"
    assert alert["labels"]["severity"] == "warning"
    assert "dev-sandbox" in alert["annotations"]["summary"]
    stack.api.clear_faults()
    wait_for(
        lambda: stack.receiver.find("resolved", **failing),
        timeout=60,
        message="the polls-failing alert to resolve",
    )


def test_spend_per_team_is_recorded_in_each_currency(stack: Stack) -> None:
    rows = wait_for(
        lambda: (
            len(stack.query("latitudesh:billing_price:sum_by_team")) == 2
            and stack.query("latitudesh:billing_price:sum_by_team")
        ),
        timeout=60,
        message="spend of both teams",
    )
    assert {(r["metric"]["team"], r["metric"]["currency"]) for r in rows} == {
        ("us", "USD"),
        ("br", "BRL"),
    }


def test_a_revoked_key_alerts_for_its_team_only(stack: Stack) -> None:
    revoked = {"alertname": "LatitudeshTokenUnauthorized", "team": "br"}
    stack.api.accounts[1].token = "revoked-elsewhere"
    try:
        alert = wait_for(
            lambda: stack.receiver.find("firing", **revoked),
            timeout=90,
            message=f"the token alert of team br\n{stack.diagnostics()}",
        )
        assert alert["labels"]["severity"] == "critical"
        assert "team br" in alert["annotations"]["summary"]
        assert (
            stack.receiver.find("firing", alertname="LatitudeshTokenUnauthorized", team="us")
            is None
        )
        us = stack.query(
            "min(latitudesh_up * on (instance, project_id) group_left (team) "
            'latitudesh_project_info{team="us"})'
        )
        assert float(us[0]["value"][1]) == 1.0  # the other team stays fresh
    finally:
        stack.api.accounts[1].token = KEY_BR
