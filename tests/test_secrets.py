"""The token never shows: not in logs at any level, errors, --check-config, / or /metrics."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from pydantic import SecretStr

from exporter.cli import Redactor, setup_logging
from exporter.demo import DemoApi
from tests.conftest import TOKEN, ExporterProcess, frozen_account, http_get, wait_for
from tests.test_cli import run
from tests.test_hardening import CHAOS


def test_debug_run_through_every_fault_never_prints_the_token(tmp_path: Path) -> None:
    with DemoApi(frozen_account(), token=TOKEN) as api:
        exporter = ExporterProcess(["--log.level", "debug"], env={
            "LATITUDESH_AUTH_TOKEN": TOKEN,
            "LATITUDESH_EXPORTER_API__BASE_URL": api.url,
            "LATITUDESH_EXPORTER_API__REQUESTS_PER_MINUTE": "6000",
            "LATITUDESH_EXPORTER_API__TIMEOUT_SECONDS": "1",
            "LATITUDESH_EXPORTER_API__MAX_RETRIES": "1",
            "LATITUDESH_EXPORTER_API__MAX_RETRY_WAIT_SECONDS": "0.1",
            "LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS": "1",
        }, cwd=tmp_path)
        pages = []
        try:
            exporter.wait_ready()
            # a 401 makes the exporter pause this key for minutes, so it goes last
            faults = sorted((f for f, _ in CHAOS if f.kind not in ("huge", "delay")),
                            key=lambda f: f.kind == "status" and f.status == 401)
            for fault in faults:
                api.inject(fault, project="proj_demo_gpu", times=None)
                served = api.request_count("/billing/usage", "proj_demo_gpu")
                wait_for(lambda s=served: api.request_count("/billing/usage", "proj_demo_gpu")
                         > s, timeout=30, message=f"a poll with {fault}")
                api.clear_faults()
            for path in ("/metrics", "/", "/readyz"):
                pages.append(http_get(exporter.url + path)[2].decode())
        finally:
            assert exporter.stop() == 0
        output = exporter.output()
    assert "level=debug" in output  # debug really was on
    assert "poll failed" in output
    assert TOKEN not in output
    for page in pages:
        assert TOKEN not in page


def test_check_config_never_prints_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    result = run("--check-config", env={"LATITUDESH_EXPORTER_API__TOKEN_FILE": str(token_file)},
                 cwd=tmp_path)
    assert result.returncode == 0
    assert "api.token_file" in result.stdout
    assert TOKEN not in result.stdout + result.stderr


def test_logs_redact_the_token_even_in_tracebacks_and_fields() -> None:
    stream = io.StringIO()
    redactor = Redactor()
    redactor.watch(lambda: SecretStr(TOKEN))
    setup_logging("debug", "logfmt", redactor, stream=stream)
    log = logging.getLogger("exporter.test")
    try:
        raise RuntimeError(f"boom with {TOKEN} inside")
    except RuntimeError:
        log.exception("failed", extra={"header": f"Authorization: {TOKEN}"})
    setup_logging("debug", "json", redactor, stream=stream)
    log.debug("again %s", TOKEN)
    text = stream.getvalue()
    assert "boom with <redacted> inside" in text
    assert "Authorization: <redacted>" in text
    assert TOKEN not in text
    logging.getLogger().handlers.clear()


def test_secrets_have_no_revealing_repr(tmp_path: Path) -> None:
    from exporter.config import TokenSource

    source = TokenSource(static=SecretStr(TOKEN))
    assert TOKEN not in repr(source.get()) and TOKEN not in str(source.get())
    assert TOKEN not in repr(vars(source))
