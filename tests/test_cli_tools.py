"""The command line's smaller tools, as users run them: `hash-password`, `healthcheck`,
a closed pipe, and `--once`'s progress on a terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest
import yaml

from tests.conftest import ROOT, ExporterProcess, run_cli, tls_web_config


def shell(command: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}"],
        capture_output=True,
        text=True,
        cwd=tmp,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("flag", ["--once", "--check-config"])
def test_a_reader_that_goes_away_ends_it_quietly(tmp_path: Path, flag: str) -> None:
    """Before: `--once | head -1` printed a BrokenPipeError traceback."""
    exe = f"{sys.executable} -m exporter --demo {flag}"
    result = shell(f"{exe} 2>err.log | head -c 1 >/dev/null; echo ${{PIPESTATUS[0]}}", tmp_path)
    errors = (tmp_path / "err.log").read_text()
    assert "Traceback" not in errors and "BrokenPipe" not in errors, errors
    assert result.stdout.strip() in ("0", "141")  # 141 when it was still writing


def test_once_shows_progress_on_a_terminal_and_none_when_piped(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--demo", "--once"],
        stdout=subprocess.DEVNULL,
        stderr=slave,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=30) == 0
    assert b"polled 5 of 5 projects" in seen
    piped = run_cli("--demo", "--once", cwd=tmp_path)
    assert piped.returncode == 0 and "polled" not in piped.stderr


def test_hash_password_from_standard_input_makes_a_hash_the_web_config_takes(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "hash-password", "--cost", "4"],
        input="correct horse\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    hashed = result.stdout.strip()
    assert bcrypt.checkpw(b"correct horse", hashed.encode())
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prom": hashed}}))
    assert run_cli("--demo", "--check-config", "--web.config.file", str(web)).returncode == 0


def test_hash_password_refuses_empty_and_overlong_passwords() -> None:
    for given in ("\n", "x" * 73 + "\n"):
        result = subprocess.run(
            [sys.executable, "-m", "exporter", "hash-password", "--cost", "4"],
            input=given,
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.count("\n") == 1


def test_hash_password_on_a_terminal_asks_twice_without_echo() -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of its own, as a person at a shell
        os.execv(sys.executable, [sys.executable, "-m", "exporter", "hash-password"])
    seen = b""
    try:
        for answer in (b"one password\n", b"another one\n"):
            while b"assword" not in seen.rsplit(b"\n", 1)[-1]:
                ready, _, _ = select.select([fd], [], [], 30)
                assert ready, seen
                seen += os.read(fd, 1024)
            os.write(fd, answer)
            seen += b"\n"
        while True:
            ready, _, _ = select.select([fd], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 2
    assert b"the two passwords differ" in seen
    assert b"one password" not in seen  # never echoed


@pytest.mark.parametrize("tls", [False, True])
def test_the_health_check_follows_the_listen_address_and_tls(
    tmp_path: Path, certs: dict[str, Path], tls: bool
) -> None:
    """The image's HEALTHCHECK: before, a fixed http://127.0.0.1:10067 turned the
    container unhealthy under TLS or on another port."""
    args: list[str] = []
    if tls:
        web = tmp_path / "web.yml"
        web.write_text(yaml.safe_dump(tls_web_config(certs)))
        args = ["--web.config.file", str(web)]
    exporter = ExporterProcess(["--demo", *args], tmp=tmp_path)
    try:
        exporter.port  # noqa: B018 (listening)
        result = run_cli("healthcheck", "--pid", str(exporter.proc.pid), timeout=30)
        scheme = "https" if tls else "http"
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{scheme}://127.0.0.1:{exporter.port}/healthz: HTTP 200" in result.stdout
    finally:
        exporter.stop()
    gone = run_cli("healthcheck", "--url", f"http://127.0.0.1:{exporter.port}/healthz")
    assert gone.returncode == 1 and "ConnectionRefusedError" in gone.stdout
