"""Files read with a bound: a FIFO, a directory or a hung read never holds a caller, and
a token file that turns into a FIFO never freezes the daemon's logs or its shutdown."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from exporter import files
from exporter.files import FileUnreadable, read_file
from testing.fakeapi import FakeApi
from testing.waits import wait_for
from tests.conftest import (
    TOKEN,
    ExporterProcess,
    api_env,
    http_get,
    parse_samples,
    sample,
)


def test_a_regular_file_is_read_and_one_over_the_limit_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"0123456789")
    assert read_file(path, max_bytes=100) == b"0123456789"
    assert read_file(path, max_bytes=10) == b"0123456789"  # exactly at the limit
    with pytest.raises(FileUnreadable, match="larger than 9 bytes"):
        read_file(path, max_bytes=9)


def test_a_fifo_without_a_writer_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(FileUnreadable, match="not a regular file"):
        read_file(fifo, max_bytes=100, timeout=30)
    assert time.monotonic() - started < 3  # at once, far from the 30 s bound


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), "not a regular file"),
        (lambda p: None, "no such file"),
    ],
)
def test_what_cannot_be_read_is_one_line_naming_the_file(
    tmp_path: Path, make: object, message: str
) -> None:
    path = tmp_path / "secret"
    make(path)  # type: ignore[operator]
    with pytest.raises(FileUnreadable, match=message) as caught:
        read_file(path, max_bytes=100)
    assert str(path) in str(caught.value)


def test_a_hung_read_is_refused_in_time_and_holds_one_thread_whoever_asks(
    tmp_path: Path,
) -> None:
    """A hung mount cannot be made in a test; the read itself is what hangs here."""
    release = threading.Event()
    path = tmp_path / "hung"
    started_reads: list[int] = []

    def hang() -> object:
        started_reads.append(1)
        release.wait(60)
        return b""

    def readers() -> int:
        # only this test's reads: another test's leftover thread may end meanwhile
        return sum(1 for t in threading.enumerate() if t.name == "read-file" and t.is_alive())

    before = readers()
    try:
        for _ in range(20):  # twenty callers: one stuck thread, each refused in time
            started = time.monotonic()
            with pytest.raises(FileUnreadable, match=r"not read within 0\.05s"):
                files._bounded(path, "read", hang, 0.05)
            assert time.monotonic() - started < 5
        assert len(started_reads) == 1  # one read for twenty callers
        assert readers() <= before + 1
    finally:
        release.set()
    wait_for(
        lambda: files._flights.get((str(path), "read")) is None, message="the stuck read to end"
    )
    # the path is free again once the read ended: a fresh read starts
    assert files._bounded(path, "read", lambda: b"ok", 5) == b"ok"
    assert len(started_reads) == 1


def test_callers_at_once_share_one_read(tmp_path: Path) -> None:
    calls = []
    gate = threading.Event()

    def slow() -> object:
        calls.append(1)
        gate.wait(10)
        return b"one read"

    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(files._bounded(tmp_path, "read", slow, 30)))
        for _ in range(5)
    ]
    for thread in threads:
        thread.start()

    def waiting() -> int:
        # every caller inside, waiting on the one read: released any earlier, a thread
        # that started late (a loaded machine) would find the read over and start anew
        flight = files._flights.get((str(tmp_path), "read"))
        return len(flight.done._cond._waiters) if flight else 0  # type: ignore[attr-defined]

    wait_for(lambda: waiting() == 5, message="all five callers waiting on one read")
    gate.set()
    for thread in threads:
        thread.join(10)
    assert results == [b"one read"] * 5
    assert len(calls) == 1


@pytest.mark.slow
def test_a_token_file_turned_fifo_keeps_logs_flowing_and_sigterm_working(
    fake_api: FakeApi, tmp_path: Path
) -> None:
    """A FIFO with no writer is what a stuck secret mount looks like: before, the poll
    that opened it held the token's lock, the log redactor waited on it, every log call
    after waited on the handler: 0 log lines from then on, SIGTERM ignored."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    env = api_env(
        fake_api,
        LATITUDESH_EXPORTER_API__TOKEN_FILE=str(token_file),
        LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS="1",
        LATITUDESH_EXPORTER_API__MAX_RETRIES="0",
    )
    del env["LATITUDESH_AUTH_TOKEN"]
    exporter = ExporterProcess([], env=env, cwd=tmp_path, tmp=tmp_path)
    try:
        exporter.wait_ready()
        token_file.unlink()
        os.mkfifo(token_file)

        def failures() -> int:
            return exporter.output().count("reason=token_unreadable")

        # Logging goes on: the failures of later refreshes keep being written.
        wait_for(lambda: failures() >= 2, timeout=30, message="token_unreadable logged")
        seen = failures()
        wait_for(lambda: failures() > seen, timeout=30, message="more lines after that")
        status, _, body = http_get(exporter.url + "/metrics")
        assert status == 200
        samples = parse_samples(body.decode())
        counted = sample(
            samples,
            "latitudesh_poll_errors_total",
            project_id="proj_demo_web",
            reason="token_unreadable",
        )
        assert counted is not None and counted >= 1
        started = time.monotonic()
        exporter.proc.send_signal(signal.SIGTERM)
        assert exporter.proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 5.0  # the README's promise
        assert "not a regular file" in exporter.output()
    finally:
        exporter.stop()
    assert TOKEN not in exporter.output()
