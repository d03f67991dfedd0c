"""A warm restart of a large account, end to end: no shipped alert fires, no hole.

The real Prometheus loads the shipped rules with every `for:` shortened to 0s, so an
alert that is true for one evaluation fires: a warm start that served stale figures as
fresh, ages the stored ones wrongly, claims an `up` it has not seen or lets series
vanish would fire something here, where the shipped `for:` would only hide it for a
while. The exporter runs twice on one state file: first with a budget that polls the
200 projects every few seconds, then (a restart) at the real API's 60 requests a
minute, which needs over three minutes to poll them all once again. Prometheus finds
the exporter through a file (rewritten with the new port) and names the target the
same before and after, as a Service does.

Not checked here: `LatitudeshExporterDown` and `LatitudeshExporterAbsent`, which the
restart's gap makes true for a few scrapes (that is what they are for; their shipped
`for:` of 5 and 15 minutes rides over a restart: the warm-restart case of
prometheus/rules.test.yml).
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing.largeapi import large_api
from testing.waits import wait_for
from tests.conftest import ROOT, ExporterProcess, http_get, require_binary
from tests.test_e2e import listening_port, shortened_rules

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.xdist_group("e2e-restart"),
]

PROJECTS = 200
PRODUCTS = 5
#: Alerts the restart's gap makes true, and whose shipped `for:` covers it.
GAP_ALERTS = "LatitudeshExporterDown|LatitudeshExporterAbsent"
#: Alerts about the exporter's own health, which a restart must not make true.
HEALTH_ALERTS = {
    "LatitudeshDataStale",
    "LatitudeshPollsFailing",
    "LatitudeshDiscoveryFailing",
    "LatitudeshTokenUnauthorized",
    "LatitudeshConfigReloadFailed",
}


@dataclass
class Prometheus:
    url: str
    targets: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        status, _, body = http_get(url)
        answer = json.loads(body)
        assert status == 200, answer
        result = answer["data"]["result"]
        if answer["data"]["resultType"] == "scalar":  # time(): [at, "value"]
            return [{"metric": {}, "value": result}]
        rows: list[dict[str, Any]] = result
        return rows

    def value(self, expr: str) -> float | None:
        try:
            rows = self.query(expr)
        except (OSError, ValueError, KeyError, AssertionError):
            return None
        return float(rows[0]["value"][1]) if rows else None

    def point_at(self, port: int) -> None:
        """Scrape the exporter on `port` from now on (written whole, then renamed)."""
        fresh = self.targets.with_suffix(".new")
        fresh.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"]}]))
        fresh.rename(self.targets)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    binary = require_binary("prometheus")
    shortened_rules(ROOT / "prometheus" / "rules.yml", tmp_path / "rules.yml")
    targets = tmp_path / "targets.json"
    targets.write_text("[]")
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": ["rules.yml"],
                "scrape_configs": [
                    {
                        "job_name": "latitudesh",
                        "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
                        # one name before and after the restart, as a Service gives
                        "relabel_configs": [
                            {"target_label": "instance", "replacement": "exporter"}
                        ],
                    }
                ],
            }
        )
    )
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                "--config.file=prometheus.yml",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                "--web.listen-address=127.0.0.1:0",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        port = listening_port("prometheus", process, log)
        yield Prometheus(f"http://127.0.0.1:{port}", targets)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def firing(prometheus: Prometheus, window: str) -> set[tuple[str, str]]:
    """(alert, project) of every alert that fired within `window`, the gap's aside."""
    rows = prometheus.query(f'count_over_time(ALERTS{{alertname!~"{GAP_ALERTS}"}}[{window}])')
    return {(r["metric"]["alertname"], r["metric"].get("project_id", "")) for r in rows}


def exporter(
    api_url: str, tmp_path: Path, requests_per_minute: int, interval: int = 2
) -> ExporterProcess:
    return ExporterProcess(
        [],
        env={
            "LATITUDESH_AUTH_TOKEN": "bench-0",
            "LATITUDESH_EXPORTER_API__BASE_URL": api_url,
            "LATITUDESH_EXPORTER_API__REQUESTS_PER_MINUTE": str(requests_per_minute),
            # a short interval: until the budget stretches it, staleness is measured
            # against 3 x 2 s, so a warm start that exported the bare interval would fire
            "LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS": str(interval),
            "LATITUDESH_EXPORTER_STATE__PATH": str(tmp_path / "state.db"),
        },
        tmp=tmp_path,
    )


def test_a_warm_restart_of_a_large_account_fires_nothing_and_leaves_no_hole(
    prometheus: Prometheus, tmp_path: Path
) -> None:
    with large_api(PROJECTS, PRODUCTS, moving=False) as (api_url, _):
        # one refresh of every project, at once: what a long-running exporter has
        first = exporter(api_url, tmp_path, requests_per_minute=60_000, interval=600)
        try:
            prometheus.point_at(first.port)
            wait_for(
                lambda: prometheus.value("count(latitudesh_billing_price)") == PROJECTS,
                timeout=90,
                message=f"Prometheus to see every project\n{first.output()[-3000:]}",
            )
            # what the account's figures make true (a steady bill over its threshold
            # and credit): every rule evaluated over all of it a few times, then every
            # alert that fired so far is the account's, and none about the exporter.
            # Counted in a recording's own samples (one an evaluation): a subquery over
            # the raw series said "complete" before the rules had run over it, and an
            # alert that a recording feeds fired only after the snapshot, under load.
            wait_for(
                lambda: (
                    prometheus.value(
                        "count(count_over_time("
                        "latitudesh:billing_price:projected_end_of_period[1m]) >= 5)"
                    )
                    == PROJECTS
                ),
                timeout=60,
                message="five rule evaluations over every project",
            )
            before = firing(prometheus, "15m")
            assert before
            assert not {name for name, _ in before} & HEALTH_ALERTS
        finally:
            assert first.stop() == 0

        second = exporter(api_url, tmp_path, requests_per_minute=60)
        try:
            prometheus.point_at(second.port)
            wait_for(
                lambda: 'msg="warm start"' in second.output(),
                timeout=30,
                message=f"a warm start\n{second.output()[-3000:]}",
            )
            assert f"projects={PROJECTS}" in second.output()
            # the new process scraped: its start time is what Prometheus now holds
            started = wait_for(
                lambda: prometheus.value(
                    'max(process_start_time_seconds{job="latitudesh"}) '
                    '> min(min_over_time(process_start_time_seconds{job="latitudesh"}[10m]))'
                ),
                timeout=60,
                message="Prometheus to scrape the restarted exporter",
            )

            # 15 rule evaluations against the restarted exporter: a recording rule
            # writes one sample per evaluation
            def evaluated() -> bool:
                seconds = int((prometheus.value("time()") or started) - started) + 1
                done = prometheus.value(
                    f"count_over_time(latitudesh:billing_price:sum_by_team[{seconds}s])"
                )
                return (done or 0) >= 15

            wait_for(evaluated, timeout=120, message="15 rule evaluations after the restart")
            window = int(prometheus.value("time()") or 0) - int(started) + 1
            polled = prometheus.value("count(latitudesh_up)") or 0
            assert polled < PROJECTS  # most projects have not been polled again yet...
            # ...yet every one of them was on /metrics at every scrape since the restart
            assert (
                prometheus.value(f"min_over_time(count(latitudesh_billing_price)[{window}s:1s])")
                == PROJECTS
            )
            after = firing(prometheus, f"{window}s")
            new = sorted(after - before)
            assert not new, f"fired across the restart: {new[:5]}\n{second.output()[-3000:]}"
        finally:
            assert second.stop() == 0
