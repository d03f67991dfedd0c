"""A reload (SIGHUP) never lowers protection silently: a file caught half-written is
refused and the settings in use stay; a valid file that drops TLS or every user is
applied with a warning naming what it removes; the outcome is exported."""

from __future__ import annotations

import base64
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import yaml

from exporter.daemon import protection_removed
from exporter.webconfig import WebConfigError, WebSettings, load_web_config
from testing.fakeapi import FakeApi
from testing.waits import wait_for
from tests.conftest import (
    ExporterProcess,
    api_env,
    http_get,
    parse_samples,
    run_cli,
    sample,
    tls_web_config,
)

PASSWORD = "s3cret-password"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
AUTH = {"Authorization": "Basic " + base64.b64encode(f"prom:{PASSWORD}".encode()).decode()}
PROTECTED = {"basic_auth_users": {"prom": HASH}}


def reloads(exporter: ExporterProcess, text: str) -> int:
    return exporter.output().count(text)


def hup_and_wait(exporter: ExporterProcess, text: str) -> None:
    seen = reloads(exporter, text)
    exporter.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: reloads(exporter, text) > seen, message=f"{text!r} after SIGHUP")


def reload_figures(exporter: ExporterProcess) -> tuple[float | None, float | None]:
    status, _, body = http_get(exporter.url + "/metrics", headers=AUTH)
    assert status == 200
    samples = parse_samples(body.decode())
    return (
        sample(samples, "latitudesh_config_last_reload_successful"),
        sample(samples, "latitudesh_config_last_reload_success_timestamp_seconds"),
    )


@pytest.fixture
def protected(fake_api: FakeApi, tmp_path: Path) -> Iterator[tuple[ExporterProcess, Path]]:
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump(PROTECTED))
    exporter = ExporterProcess(
        ["--web.config.file", str(web)], env=api_env(fake_api), cwd=tmp_path, tmp=tmp_path
    )
    exporter.wait_ready()
    yield exporter, web
    assert exporter.stop() == 0


@pytest.mark.parametrize(
    "broken",
    [
        "",  # truncated, not yet written again
        "# only a comment\n",
        "basic_auth_users:\n  prom: $2b$04$cut-in-the-mid",  # half written
        "basic_auth_users: [",  # not YAML
    ],
)
def test_a_file_caught_half_written_is_refused_and_auth_stays(
    protected: tuple[ExporterProcess, Path], broken: str
) -> None:
    exporter, web = protected
    assert reload_figures(exporter)[0] == 1.0
    web.write_text(broken)
    hup_and_wait(exporter, "web config refused")
    # Before: the empty file was applied as "no users", and /metrics answered 200 to
    # anyone until the next SIGHUP.
    assert http_get(exporter.url + "/metrics")[0] == 401
    successful, since = reload_figures(exporter)
    assert successful == 0.0 and since is not None
    assert "replace the file atomically" in exporter.output()
    # Once the file is whole again, the next SIGHUP applies it and says so.
    web.write_text(yaml.safe_dump(PROTECTED))
    hup_and_wait(exporter, "msg=reloaded")
    successful, after = reload_figures(exporter)
    assert successful == 1.0 and after is not None and after >= since
    assert http_get(exporter.url + "/metrics")[0] == 401


def test_a_valid_file_without_users_is_applied_with_a_warning(
    protected: tuple[ExporterProcess, Path], certs: dict[str, Path]
) -> None:
    exporter, web = protected
    web.write_text(yaml.safe_dump(tls_web_config(certs)))
    hup_and_wait(exporter, "msg=reloaded")
    output = exporter.output()
    assert "web config reload removes protection" in output
    assert "basic auth (every user: prom)" in output
    assert "level=warn" in output.split("web config reload removes protection")[0].splitlines()[-1]


def test_protection_removed_names_tls_and_the_users() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    both = WebSettings(ssl_context=context, users={"a": b"x", "b": b"y"})
    assert protection_removed(both, WebSettings()) == ["TLS", "basic auth (every user: a, b)"]
    assert protection_removed(both, WebSettings(users={"a": b"x"})) == ["TLS"]
    assert protection_removed(WebSettings(), both) == []
    assert protection_removed(both, both) == []


def test_an_empty_web_config_is_refused_at_start_too(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("")
    with pytest.raises(WebConfigError, match="the file is empty"):
        load_web_config(web)
    result = run_cli("--demo", "--check-config", "--web.config.file", str(web), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "write {} to mean that" in result.stderr
    web.write_text("{}\n")  # said explicitly: no TLS, no users
    assert load_web_config(web).users == {}


def test_the_reload_outcome_is_exported_from_the_start(fake_api: FakeApi, tmp_path: Path) -> None:
    exporter = ExporterProcess([], env=api_env(fake_api), cwd=tmp_path, tmp=tmp_path)
    try:
        exporter.wait_ready()
        samples = exporter.scrape()
        assert sample(samples, "latitudesh_config_last_reload_successful") == 1.0
        first = sample(samples, "latitudesh_config_last_reload_success_timestamp_seconds")
        assert first is not None and first > 1.7e9
        hup_and_wait(exporter, "msg=reloaded")
        samples = exporter.scrape()
        later = sample(samples, "latitudesh_config_last_reload_success_timestamp_seconds")
        assert later is not None and later >= first
    finally:
        assert exporter.stop() == 0
