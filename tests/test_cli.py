"""The command line as users run it: real processes, exit codes, output, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter import __version__
from exporter.demo import DemoApi, Fault
from tests.conftest import (
    ROOT,
    TOKEN,
    ExporterProcess,
    parse_samples,
    require_binary,
    sample,
    wait_for,
)


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("LATITUDESH_EXPORTER_", "LATITUDESH_AUTH"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd or ROOT, timeout=timeout,
                          check=False)


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"latitudesh-exporter {__version__}")


def test_bad_flag_exits_2_with_one_line() -> None:
    result = run("--no-such-flag")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--no-such-flag" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--web.listen-address", "nonsense"], "web.listen-address: 'nonsense' is not HOST:PORT"),
        (["--web.telemetry-path", "metrics"], "web.telemetry-path: must start with /"),
        (["--config.file", "/nonexistent.yaml"], "config.file: /nonexistent.yaml: no such file"),
    ],
)
def test_bad_settings_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = run(*args, env={"LATITUDESH_AUTH_TOKEN": TOKEN})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr


def test_bad_config_file_names_the_field(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("poll:\n  interval_seconds: -5\n")
    result = run("--config.file", str(config), env={"LATITUDESH_AUTH_TOKEN": TOKEN})
    assert result.returncode == 2
    assert result.stderr.strip() == ("latitudesh-exporter: config error: poll.interval_seconds: "
                                     "Input should be greater than or equal to 1")


def test_missing_token_says_how_to_set_it(tmp_path: Path) -> None:
    result = run(cwd=tmp_path)
    assert result.returncode == 2
    assert "set the LATITUDESH_AUTH_TOKEN environment variable or api.token_file" in \
        result.stderr


def test_check_config_summarises_without_the_secret(tmp_path: Path) -> None:
    result = run("--check-config", env={"LATITUDESH_AUTH_TOKEN": TOKEN}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config OK")
    assert "LATITUDESH_AUTH_TOKEN environment variable" in result.stdout
    assert "every project of the team" in result.stdout
    assert TOKEN not in result.stdout + result.stderr


def test_demo_once_prints_valid_metrics() -> None:
    result = run("--demo", "--once")
    assert result.returncode == 0, result.stderr
    samples = parse_samples(result.stdout)
    for project in ("proj_demo_web", "proj_demo_gpu", "proj_demo_data", "proj_demo_dev"):
        assert sample(samples, "latitudesh_up", project_id=project) == 1.0
    promtool = require_binary("promtool")
    check = subprocess.run([promtool, "check", "metrics"], input=result.stdout.encode(),
                           capture_output=True, check=False)
    assert check.returncode == 0, check.stderr


@pytest.fixture
def api() -> Iterator[DemoApi]:
    from tests.conftest import frozen_account

    with DemoApi(frozen_account(), token=TOKEN) as demo:
        yield demo


def real_env(api: DemoApi, **extra: str) -> dict[str, str]:
    return {"LATITUDESH_AUTH_TOKEN": TOKEN, "LATITUDESH_EXPORTER_API__BASE_URL": api.url,
            "LATITUDESH_EXPORTER_API__REQUESTS_PER_MINUTE": "6000",
            "LATITUDESH_EXPORTER_API__MAX_RETRIES": "1", **extra}


def test_once_exits_1_when_a_project_fails(api: DemoApi, tmp_path: Path) -> None:
    api.inject(Fault("status", status=403), project="proj_demo_dev", times=None)
    result = run("--once", env=real_env(api), cwd=tmp_path)
    assert result.returncode == 1
    samples = parse_samples(result.stdout)
    assert sample(samples, "latitudesh_up", project_id="proj_demo_dev") == 0.0
    assert sample(samples, "latitudesh_up", project_id="proj_demo_web") == 1.0
    assert sample(samples, "latitudesh_poll_errors_total", project_id="proj_demo_dev",
                  reason="forbidden") == 1.0


def test_daemon_serves_exact_figures_from_the_api(api: DemoApi, tmp_path: Path) -> None:
    """The issue's end-to-end: fake API over sockets → daemon → /metrics → parser."""
    expected = api.account.usage(api.account.projects["proj_demo_gpu"])["data"]["attributes"]
    exporter = ExporterProcess([], env=real_env(api), cwd=tmp_path)
    try:
        exporter.wait_ready()
        samples = exporter.scrape()
        gpu = {"project_id": "proj_demo_gpu", "project_slug": "ml-training", "currency": "USD"}
        assert sample(samples, "latitudesh_billing_price", **gpu) == expected["price"] / 100
        assert sample(samples, "latitudesh_billing_threshold", **gpu) == 1300.0
        assert sample(samples, "latitudesh_billing_available_credit_balance", **gpu) == \
            expected["available_credit_balance"] / 100
        product = expected["products"][0]
        assert sample(samples, "latitudesh_billing_product_quantity",
                      project_id="proj_demo_gpu", product_id="si_gpu", unit="hour",
                      hostname="trainer-01", plan="g3-h100-large") == product["quantity"]
        assert sample(samples, "latitudesh_billing_product_discount_amount",
                      project_id="proj_demo_gpu", product_id="si_gpu") == 50.0
        assert sample(samples, "latitudesh_billing_threshold",
                      project_id="proj_demo_data") is None
        assert sample(samples, "latitudesh_api_requests_total", endpoint="/billing/usage",
                      code="200") == 4.0
        assert sample(samples, "latitudesh_last_success_timestamp_seconds",
                      project_id="proj_demo_gpu") == pytest.approx(time.time(), abs=60)
    finally:
        assert exporter.stop() == 0


def test_sigterm_stops_promptly_and_cleanly() -> None:
    exporter = ExporterProcess(["--demo"])
    exporter.wait_ready()
    started = time.monotonic()
    exporter.proc.send_signal(signal.SIGTERM)
    assert exporter.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5.0
    assert 'msg="shutting down" signal=SIGTERM' in exporter.output()
    exporter.stop()


def test_sigterm_during_a_slow_poll_still_exits_within_5_seconds(api: DemoApi,
                                                                  tmp_path: Path) -> None:
    env = real_env(api, LATITUDESH_EXPORTER_API__TIMEOUT_SECONDS="60",
                   LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS="1")
    exporter = ExporterProcess([], env=env, cwd=tmp_path)
    exporter.wait_ready()
    api.inject(Fault("delay", delay=30), times=None)
    answered = len(api.requests)
    arrived = api.arrivals
    wait_for(lambda: api.arrivals > arrived, timeout=20, message="a slow request in flight")
    assert len(api.requests) <= answered + 1  # the new one is stuck in the delay
    started = time.monotonic()
    exporter.proc.send_signal(signal.SIGTERM)
    assert exporter.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5.0
    exporter.stop()


def test_json_logs_are_one_object_per_line() -> None:
    exporter = ExporterProcess(["--demo", "--log.format", "json"])
    exporter.wait_ready()
    exporter.stop()
    lines = [line for line in exporter.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert any(r["msg"] == "listening" and r["level"] == "info" for r in records)
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)


def test_logfmt_logs_quote_values_with_spaces() -> None:
    exporter = ExporterProcess(["--demo"])
    exporter.wait_ready()
    exporter.stop()
    listening = next(line for line in exporter.output().splitlines() if "listening" in line)
    assert "level=info" in listening and 'msg=listening' in listening
    assert "address=127.0.0.1:" in listening


def test_daemon_polls_again_on_schedule(api: DemoApi, tmp_path: Path) -> None:
    env = real_env(api, LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS="1")
    exporter = ExporterProcess([], env=env, cwd=tmp_path)
    try:
        exporter.wait_ready()
        wait_for(lambda: api.request_count("/billing/usage", "proj_demo_web") >= 3, timeout=20,
                 message="three polls of one project")
        api.inject(Fault("status", status=500), project="proj_demo_web", times=None)
        wait_for(lambda: sample(exporter.scrape(), "latitudesh_up",
                                project_id="proj_demo_web") == 0.0,
                 timeout=20, message="up to drop to 0")
        samples = exporter.scrape()
        assert sample(samples, "latitudesh_billing_price", project_id="proj_demo_web") \
            is not None
        assert sample(samples, "latitudesh_up", project_id="proj_demo_gpu") == 1.0
    finally:
        exporter.stop()
