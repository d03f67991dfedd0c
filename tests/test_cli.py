"""The command line as users run it: real processes, exit codes, output, signals."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import bcrypt
import pytest
import yaml

from exporter import __version__
from exporter.demo import DemoApi
from exporter.simulation import DemoAccount
from testing.fakeapi import FakeApi, Fault
from testing.waits import wait_for
from tests.conftest import (
    DEMO_PROJECTS,
    ROOT,
    TOKEN,
    ExporterProcess,
    api_env,
    http_get,
    parse_samples,
    require_binary,
    run_cli,
    sample,
    tls_web_config,
)


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"latitudesh-exporter {__version__}")


def test_bad_flag_exits_2_with_one_line() -> None:
    result = run_cli("--no-such-flag")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--no-such-flag" in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["--web.listen-address", "nonsense"],
            {},
            "web.listen-address: 'nonsense' is not HOST:PORT",
        ),
        (["--web.listen-address", ":99999"], {}, "web.listen-address: ':99999' is not"),
        (["--web.telemetry-path", "metrics"], {}, "web.telemetry-path: must start with /"),
        (
            ["--config.file", "/nonexistent.yaml"],
            {},
            "config.file: /nonexistent.yaml: no such file",
        ),
        (
            ["--web.config.file", "/nonexistent.yml"],
            {},
            "web.config.file: /nonexistent.yml: no such file",
        ),
        ([], {"LATITUDESH_EXPORTER_TEAMS": "[{"}, "LATITUDESH_EXPORTER_TEAMS: not valid JSON"),
        (
            [],
            {"LATITUDESH_EXPORTER_API__BASE_URL": "https://api:70000"},
            "LATITUDESH_EXPORTER_API__BASE_URL (api.base_url): is not a valid URL",
        ),
        ([], {"LATITUDESH_AUTH_TOKEN": "клю"}, "the API token holds non-ASCII characters"),
    ],
)
def test_bad_settings_exit_2_with_one_line(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = run_cli(*args, env={"LATITUDESH_AUTH_TOKEN": TOKEN, **env})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["healthcheck", "--url", "http://127.0.0.1:9/healthz"], 1),
        (["--config.file", "/nonexistent.yaml"], 2),
        (["hash-password", "--cost", "4"], 0),
    ],
    ids=["healthcheck", "config-error", "hash-password"],
)
def test_a_health_check_or_a_config_error_never_loads_the_running_parts(
    args: list[str], code: int
) -> None:
    """The image's HEALTHCHECK runs every 30 s: before, each run imported the whole
    daemon (0.7 CPU-s); a config error paid the same before its one line."""
    probe = textwrap.dedent(
        """
        import sys
        from exporter.cli import main
        code = main(sys.argv[1:])
        heavy = ("httpx", "apscheduler", "prometheus_client", "exporter.wiring")
        print(code, sorted(name for name in heavy if name in sys.modules))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *args],
        input="pw\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.stdout.splitlines()[-1] == f"{code} []", result.stdout + result.stderr


def test_bad_config_file_names_the_field(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("poll:\n  interval_seconds: -5\n")
    result = run_cli("--config.file", str(config), env={"LATITUDESH_AUTH_TOKEN": TOKEN})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "latitudesh-exporter: config error: poll.interval_seconds: "
        "Input should be greater than or equal to 1"
    )


def test_missing_token_says_how_to_set_it(tmp_path: Path) -> None:
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 2
    assert "set the LATITUDESH_AUTH_TOKEN environment variable or api.token_file" in result.stderr


def test_check_config_checks_the_key_with_one_request(fake_api: FakeApi, tmp_path: Path) -> None:
    result = run_cli("--check-config", env=api_env(fake_api), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config: valid")
    assert "team default: key from the environment variable LATITUDESH_AUTH_TOKEN" in result.stdout
    assert "accepted; sees at least one project; currency USD; team demo-us" in result.stdout
    assert result.stdout.endswith("result: OK\n")
    assert TOKEN not in result.stdout + result.stderr
    assert fake_api.request_count() == 1
    (request,) = fake_api.requests
    assert request.path == "/projects"


def test_check_config_with_a_rejected_key_exits_2(fake_api: FakeApi, tmp_path: Path) -> None:
    result = run_cli(
        "--check-config",
        env={**api_env(fake_api), "LATITUDESH_AUTH_TOKEN": "wrong-key-123"},
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "REJECTED (unauthorized" in result.stdout
    assert "wrong-key-123" not in result.stdout + result.stderr


def test_check_config_loads_the_web_config(fake_api: FakeApi, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {"bob": "$2b$10$" + "x" * 53}}))
    result = run_cli(
        "--check-config", "--web.config.file", str(web), env=api_env(fake_api), cwd=tmp_path
    )
    assert result.returncode == 2
    assert f"web.config.file: {web}: basic_auth_users: user 'bob'" in result.stderr
    good = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    web.write_text(yaml.safe_dump({"basic_auth_users": {"bob": good}}))
    result = run_cli(
        "--check-config", "--web.config.file", str(web), env=api_env(fake_api), cwd=tmp_path
    )
    assert result.returncode == 0
    assert "basic auth users: 1" in result.stdout


def test_plain_http_to_another_host_is_warned_about(fake_api: FakeApi, tmp_path: Path) -> None:
    env = {**api_env(fake_api), "LATITUDESH_EXPORTER_API__BASE_URL": "http://api.example:9"}
    result = run_cli("--check-config", env=env, cwd=tmp_path, timeout=60)
    assert "api.base_url is plain http: the API token travels unencrypted" in result.stderr
    quiet = run_cli("--check-config", env=api_env(fake_api), cwd=tmp_path)
    assert "plain http" not in quiet.stderr


def test_demo_once_prints_valid_metrics_for_both_teams() -> None:
    result = run_cli("--demo", "--once")
    assert result.returncode == 0, result.stderr
    samples = parse_samples(result.stdout)
    for project in DEMO_PROJECTS:
        assert sample(samples, "latitudesh_up", project_id=project) == 1.0
    assert (
        sample(
            samples,
            "latitudesh_project_info",
            project_id="proj_demo_loja",
            team="demo-br",
            currency="BRL",
        )
        == 1.0
    )
    promtool = require_binary("promtool")
    check = subprocess.run(
        [promtool, "check", "metrics"],
        input=result.stdout.encode(),
        capture_output=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_once_exits_1_when_a_project_fails(fake_api: FakeApi, tmp_path: Path) -> None:
    fake_api.inject(Fault("status", status=403), project="proj_demo_dev", times=None)
    result = run_cli("--once", env=api_env(fake_api), cwd=tmp_path)
    assert result.returncode == 1
    samples = parse_samples(result.stdout)
    assert sample(samples, "latitudesh_up", project_id="proj_demo_dev") == 0.0
    assert sample(samples, "latitudesh_up", project_id="proj_demo_web") == 1.0
    assert (
        sample(
            samples, "latitudesh_poll_errors_total", project_id="proj_demo_dev", reason="forbidden"
        )
        == 1.0
    )


def test_once_never_crashes_on_unencodable_names(fake_api: FakeApi, tmp_path: Path) -> None:
    body = (
        '{"data": {"attributes": {"project": {"id": "proj_demo_web", "name": "x\\ud800"},'
        ' "price": 5, "products": [{"id": "s\\udfff", "name": "\\u0007", "price": 5}]}}}'
    )
    fake_api.inject(Fault("body", body=body), project="proj_demo_web", times=None)
    result = run_cli("--once", env=api_env(fake_api), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\ufffd" in result.stdout
    assert sample(parse_samples(result.stdout), "latitudesh_up", project_id="proj_demo_web") == 1.0


def test_ctrl_c_during_once_exits_130_at_once_without_a_traceback(
    fake_api: FakeApi, tmp_path: Path
) -> None:
    fake_api.inject(Fault("delay", delay=30), times=None)
    env = api_env(fake_api, LATITUDESH_EXPORTER_API__TIMEOUT_SECONDS="60")
    process = ExporterProcess(["--once"], env=env, cwd=tmp_path, tmp=tmp_path)
    wait_for(lambda: fake_api.arrivals > 0, timeout=20, message="a request in flight")
    started = time.monotonic()
    process.proc.send_signal(signal.SIGINT)
    # "At once": well before the 30 s answer (typically ~0.2 s; the bound is 10x that).
    assert process.proc.wait(timeout=10) == 130
    assert time.monotonic() - started < 10.0
    output = process.output()
    process.stop()
    assert "Traceback" not in output
    assert "msg=interrupted" in output


def test_daemon_serves_exact_figures_from_the_api(fake_api: FakeApi, tmp_path: Path) -> None:
    """Fake API over sockets → daemon → /metrics → parser."""
    account = fake_api.account
    expected = account.usage(account.projects["proj_demo_gpu"])["data"]["attributes"]
    exporter = ExporterProcess([], env=api_env(fake_api), cwd=tmp_path, tmp=tmp_path)
    try:
        exporter.wait_ready()
        samples = exporter.scrape()
        gpu = {"project_id": "proj_demo_gpu", "project_slug": "ml-training", "currency": "USD"}
        assert sample(samples, "latitudesh_billing_price", **gpu) == expected["price"] / 100
        assert sample(samples, "latitudesh_billing_threshold", **gpu) == 1300.0
        assert (
            sample(samples, "latitudesh_billing_available_credit_balance", **gpu)
            == expected["available_credit_balance"] / 100
        )
        product = expected["products"][0]
        assert (
            sample(
                samples,
                "latitudesh_billing_product_quantity",
                project_id="proj_demo_gpu",
                product_id="si_gpu",
                unit="hour",
                hostname="trainer-01",
                plan="g3-h100-large",
            )
            == product["quantity"]
        )
        assert (
            sample(
                samples,
                "latitudesh_billing_product_discount_amount",
                project_id="proj_demo_gpu",
                product_id="si_gpu",
            )
            == 50.0
        )
        assert sample(samples, "latitudesh_billing_threshold", project_id="proj_demo_data") is None
        assert (
            sample(
                samples,
                "latitudesh_api_requests_total",
                team="demo-us",
                endpoint="/billing/usage",
                code="200",
            )
            == 4.0
        )
        assert sample(
            samples, "latitudesh_last_success_timestamp_seconds", project_id="proj_demo_gpu"
        ) == pytest.approx(time.time(), abs=60)
    finally:
        assert exporter.stop() == 0


def test_sigterm_stops_promptly_and_cleanly(tmp_path: Path) -> None:
    exporter = ExporterProcess(["--demo"], tmp=tmp_path)
    exporter.wait_ready()
    started = time.monotonic()
    exporter.proc.send_signal(signal.SIGTERM)
    assert exporter.proc.wait(timeout=10) == 0  # typically ~0.3 s
    assert time.monotonic() - started < 10.0
    assert 'msg="shutting down" signal=SIGTERM' in exporter.output()
    exporter.stop()


def test_sigterm_during_a_slow_poll_exits_long_before_the_poll_ends(
    fake_api: FakeApi, tmp_path: Path
) -> None:
    env = api_env(
        fake_api,
        LATITUDESH_EXPORTER_API__TIMEOUT_SECONDS="60",
        LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS="1",
    )
    exporter = ExporterProcess([], env=env, cwd=tmp_path, tmp=tmp_path)
    exporter.wait_ready()
    fake_api.inject(Fault("delay", delay=30), times=None)
    arrived = fake_api.arrivals
    wait_for(lambda: fake_api.arrivals > arrived, timeout=20, message="a slow request in flight")
    started = time.monotonic()
    exporter.proc.send_signal(signal.SIGTERM)
    # Typically ~0.5 s; the poll would end at 30 s, Kubernetes kills at 30 s.
    assert exporter.proc.wait(timeout=15) == 0
    assert time.monotonic() - started < 15.0
    exporter.stop()


def test_sighup_rereads_the_token_file_and_web_config_keeping_data(
    fake_api: FakeApi, tmp_path: Path, certs: dict[str, Path]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    web = tmp_path / "web.yml"
    web.write_text("{}\n")
    env = api_env(fake_api, LATITUDESH_EXPORTER_API__TOKEN_FILE=str(token_file))
    del env["LATITUDESH_AUTH_TOKEN"]
    exporter = ExporterProcess(["--web.config.file", str(web)], env=env, cwd=tmp_path, tmp=tmp_path)
    try:
        exporter.wait_ready()
        before = exporter.scrape()
        web.write_text(yaml.safe_dump(tls_web_config(certs)))
        exporter.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "msg=reloaded" in exporter.output(), message="the reload")
        assert exporter.proc.poll() is None  # SIGHUP no longer kills the process
        with pytest.raises((ConnectionError, http.client.HTTPException)):  # TLS now
            http_get(exporter.url + "/healthz", timeout=3)
        web.write_text("tls_server_config: {cert_file: /nope}\n")  # a broken reload...
        exporter.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "web config refused" in exporter.output(), message="refusal")
        assert exporter.proc.poll() is None  # ...keeps the one in use
        assert sample(before, "latitudesh_up", project_id="proj_demo_web") == 1.0
    finally:
        assert exporter.stop() == 0
    assert TOKEN not in exporter.output()


def test_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    exporter = ExporterProcess(["--demo", "--log.format", "json"], tmp=tmp_path)
    exporter.wait_ready()
    exporter.stop()
    lines = [line for line in exporter.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert any(r["msg"] == "listening" and r["level"] == "info" for r in records)
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)


def test_logfmt_logs_quote_values_with_spaces(tmp_path: Path) -> None:
    exporter = ExporterProcess(["--demo"], tmp=tmp_path)
    exporter.wait_ready()
    exporter.stop()
    listening = next(line for line in exporter.output().splitlines() if "listening" in line)
    assert "level=info" in listening and "msg=listening" in listening
    assert "address=127.0.0.1:" in listening


def test_daemon_polls_again_on_schedule(fake_api: FakeApi, tmp_path: Path) -> None:
    env = api_env(fake_api, LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS="1")
    exporter = ExporterProcess([], env=env, cwd=tmp_path, tmp=tmp_path)
    try:
        exporter.wait_ready()
        wait_for(
            lambda: fake_api.request_count("/billing/usage", "proj_demo_web") >= 3,
            timeout=20,
            message="three polls of one project",
        )
        fake_api.inject(Fault("status", status=500), project="proj_demo_web", times=None)
        wait_for(
            lambda: sample(exporter.scrape(), "latitudesh_up", project_id="proj_demo_web") == 0.0,
            timeout=20,
            message="up to drop to 0",
        )
        samples = exporter.scrape()
        assert sample(samples, "latitudesh_billing_price", project_id="proj_demo_web") is not None
        assert sample(samples, "latitudesh_up", project_id="proj_demo_gpu") == 1.0
    finally:
        exporter.stop()


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        (Fault("rate_limited", retry_after=600, where="both"), "NOT CHECKED: rate limited"),
        (Fault("delay", delay=30), "NOT CHECKED: timed out"),
    ],
    ids=["slow-429", "hanging"],
)
def test_check_config_is_bounded_and_says_why_a_key_was_not_checked(
    fake_api: FakeApi, tmp_path: Path, fault: Fault, said: str
) -> None:
    """Before: a 429 asking ten minutes held the check 120 s and said REJECTED, as for
    a refused key. Now one request, no waiting out the answer, and the truth."""
    fake_api.inject(fault, project="/projects", times=None)
    env = {**api_env(fake_api), "LATITUDESH_EXPORTER_API__TIMEOUT_SECONDS": "1"}
    started = time.monotonic()
    result = run_cli("--check-config", env=env, cwd=tmp_path)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert said in result.stdout and "REJECTED" not in result.stdout
    assert took < 25, f"the check took {took:.0f}s"  # typically 1-2 s
    # One request, never retried (a delayed answer is logged only once it is sent).
    assert fake_api.request_count(path="/projects") == (fault.kind == "rate_limited")


def test_old_shape_buckets_are_never_servers(tmp_path: Path) -> None:
    """The old shape puts a bucket's id in `metadata.id`: before, `--once` against it
    exported `server_id="bkt_lake"` and counted its spend as untagged server spend."""
    with DemoApi(DemoAccount(token=TOKEN, shape="old")) as api:
        env = {
            "LATITUDESH_AUTH_TOKEN": TOKEN,
            "LATITUDESH_EXPORTER_API__BASE_URL": api.url,
            "LATITUDESH_EXPORTER_API__REQUESTS_PER_MINUTE": "6000",
        }
        result = run_cli("--once", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    samples = parse_samples(result.stdout)
    servers = {
        dict(labels)["server_id"]
        for name, labels in samples
        if name == "latitudesh_billing_server_price"
    }
    assert servers and not {s for s in servers if s.startswith("bkt_")}
    buckets = {
        dict(labels)["bucket_id"] for name, labels in samples if name.endswith("bucket_info")
    }
    assert {"bkt_lake", "bkt_backups"} <= buckets
    project = "proj_demo_data"  # buckets only: all of it belongs to no server
    assert sample(
        samples, "latitudesh_billing_tag_price", project_id=project, tag="__untagged__"
    ) in (
        None,
        0.0,
    )
    assert sample(
        samples, "latitudesh_billing_tag_price", project_id=project, tag="__unattributed__"
    ) == sample(samples, "latitudesh_billing_price", project_id=project)
    assert sample(samples, "latitudesh_billing_amount", project_id=project) is not None


def test_runtime_tuning_can_be_switched_off(tmp_path: Path) -> None:
    """The off switch of the daemon's CPython tuning: a bad value is a bad flag (2);
    `off` serves as usual."""
    bad = run_cli("--runtime.tuning", "maybe", cwd=tmp_path)
    assert bad.returncode == 2 and "--runtime.tuning" in bad.stderr
    exporter = ExporterProcess(["--demo", "--runtime.tuning", "off"], tmp=tmp_path)
    try:
        exporter.wait_ready()
        assert sample(exporter.scrape(), "latitudesh_up", project_id="proj_demo_web") is not None
    finally:
        assert exporter.stop() == 0


def test_check_config_with_listed_projects_checks_their_billing_not_discovery(
    fake_api: FakeApi, tmp_path: Path
) -> None:
    """The runbook's fix for a key that may not list projects (`forbidden` discovery):
    list them and set the currency. Before, --check-config still asked /projects and
    printed REJECTED (exit 2), blocking a deployment that works."""
    fake_api.inject(Fault("status", status=403), project="/projects", times=None)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"currency": "USD", "projects": [{"id": "proj_demo_gpu"}]}))
    result = run_cli("--check-config", "--config.file", str(config), env=api_env(fake_api))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GET /billing/usage: accepted; reads the billing of proj_demo_gpu" in result.stdout
    assert "GET /projects: not needed" in result.stdout
    assert fake_api.request_count(path="/projects") == 0
    assert fake_api.request_count(path="/billing/usage") == 1
    # A key that may not read the listed project's billing is refused where it matters.
    fake_api.inject(Fault("status", status=403), project="proj_demo_gpu", times=None)
    refused = run_cli("--check-config", "--config.file", str(config), env=api_env(fake_api))
    assert refused.returncode == 2
    assert "GET /billing/usage: REJECTED (forbidden" in refused.stdout


def test_with_projects_and_currency_listed_no_discovery_is_made_or_missed(
    fake_api: FakeApi, tmp_path: Path
) -> None:
    """The runbook's fix for `forbidden` discovery works: before, /projects was still
    asked every refresh, counted as a discovery error (LatitudeshDiscoveryFailing fired
    for ever) and `--once` exited 1 although every project's `up` was 1."""
    fake_api.inject(Fault("status", status=403), project="/projects", times=None)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "currency": "USD",
                "projects": [{"id": "proj_demo_gpu"}, {"id": "proj_demo_web"}],
                "api": {"requests_per_minute": 100},
            }
        )
    )
    result = run_cli("--once", "--config.file", str(config), env=api_env(fake_api))
    assert result.returncode == 0, result.stderr
    samples = parse_samples(result.stdout)
    assert sample(samples, "latitudesh_up", project_id="proj_demo_gpu") == 1.0
    assert all(
        value == 0
        for (name, _), value in samples.items()
        if name == "latitudesh_discovery_errors_total"
    )
    assert fake_api.request_count(path="/projects") == 0
    assert 'team="default"' in result.stdout
    # A budget above what the API allows a key is said once, at start.
    assert "requests_per_minute is above what the API allows a key" in result.stderr


def test_demo_check_config_tells_the_interval_the_demo_really_polls_at() -> None:
    """Before: `--demo --check-config` printed `poll: every 300s` while the demo polls
    every 10 s (its override was applied only when the daemon was built)."""
    result = run_cli("--demo", "--check-config")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every 10s" in result.stdout and "300" not in result.stdout
    assert "key from the demo" in result.stdout
