"""The token never shows: not in logs at any level, errors, --check-config, / or /metrics."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from exporter.config import TokenSource
from testing.fakeapi import CHAOS, FakeApi, Fault
from testing.waits import wait_for
from tests.conftest import (
    TOKEN,
    ExporterProcess,
    api_env,
    frozen_account,
    http_get,
    run_cli,
)


def test_debug_run_through_every_fault_never_prints_the_token(tmp_path: Path) -> None:
    with FakeApi(frozen_account(token=TOKEN)) as api:
        env = api_env(
            api,
            LATITUDESH_EXPORTER_API__TIMEOUT_SECONDS="1",
            LATITUDESH_EXPORTER_API__MAX_RETRY_WAIT_SECONDS="0.1",
            LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS="1",
        )
        exporter = ExporterProcess(["--log.level", "debug"], env=env, cwd=tmp_path, tmp=tmp_path)
        pages = []
        try:
            exporter.wait_ready()
            echo = Fault(
                "status",
                status=400,
                body='{"errors": [{"detail": "' + "x" * 190 + f'key {TOKEN} bad"}}]}}',
            )
            faults = [
                echo,
                *(f for f, _ in CHAOS if f.kind not in ("huge", "delay", "trickle", "tiny")),
            ]
            # Round-robin over the projects, one fault a request: a poll round serves
            # four. A 401 makes the exporter pause the key for minutes, so it goes last.
            unauthorized = [f for f in faults if f.kind == "status" and f.status == 401]
            projects = list(frozen_account().projects)
            for index, fault in enumerate(f for f in faults if f not in unauthorized):
                api.inject(fault, project=projects[index % len(projects)])
            wait_for(lambda: api.pending() == 0, timeout=60, message="every fault served")
            for fault in unauthorized:
                api.inject(fault, project="proj_demo_gpu")
                wait_for(lambda: api.pending() == 0, timeout=30, message=f"a poll with {fault}")
            for path in ("/metrics", "/", "/readyz"):
                pages.append(http_get(exporter.url + path)[2].decode())
        finally:
            assert exporter.stop() == 0
        output = exporter.output()
    assert "level=debug" in output  # debug really was on
    assert "poll failed" in output
    for size in (8, len(TOKEN)):
        for start in range(0, len(TOKEN) - size + 1, 4):
            assert TOKEN[start : start + size] not in output
    for page in pages:
        assert TOKEN not in page


def test_check_config_never_prints_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    with FakeApi(frozen_account(token=TOKEN)) as api:
        env = api_env(api, LATITUDESH_EXPORTER_API__TOKEN_FILE=str(token_file))
        del env["LATITUDESH_AUTH_TOKEN"]
        result = run_cli("--check-config", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"key from the file {token_file} (api.token_file)" in result.stdout
    assert TOKEN not in result.stdout + result.stderr


def test_secrets_have_no_revealing_repr() -> None:
    source = TokenSource(static=SecretStr(TOKEN))
    assert TOKEN not in repr(source.get()) and TOKEN not in str(source.get())
    assert TOKEN not in repr(source)
