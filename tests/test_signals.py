"""Signals: handed to the main thread through a pipe; a clean stop exits 0 whatever
arrives during it."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.signals import Inbox
from testing.waits import wait_for
from tests.conftest import ExporterProcess


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    """An Inbox for SIGUSR1/SIGUSR2, the previous handlers and wake-up fd put back."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    box = Inbox((signal.SIGUSR1, signal.SIGUSR2))
    yield box
    signal.set_wakeup_fd(-1)
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def test_signals_arrive_in_order_and_all_at_once(inbox: Inbox) -> None:
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGUSR2)
    os.kill(os.getpid(), signal.SIGUSR1)
    received: list[signal.Signals] = []

    def three() -> bool:
        received.extend(inbox.wait())
        return len(received) >= 3

    wait_for(three, message="3 signals")
    assert received == [signal.SIGUSR1, signal.SIGUSR2, signal.SIGUSR1]


def test_a_signal_sent_from_another_thread_wakes_the_waiting_main_thread(inbox: Inbox) -> None:
    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR2)).start()
    assert inbox.wait() == [signal.SIGUSR2]


def test_wake_returns_no_signal_and_never_blocks_when_the_pipe_is_full(inbox: Inbox) -> None:
    for _ in range(100_000):  # far beyond a pipe's 64 KiB: later wakes are dropped
        inbox.wake()
    assert inbox.wait() == []


@pytest.mark.slow
def test_signals_during_shutdown_never_change_a_clean_exit(tmp_path: Path) -> None:
    """Before: SIGHUPs arriving after SIGTERM made the process die of SIGHUP (129) in
    5 of 5 runs, after it had logged `stopped clean=True` (Python's finalization puts
    back the default action of every signal it handles)."""
    runs = [ExporterProcess(["--demo"], tmp=tmp_path) for _ in range(5)]
    try:
        for exporter in runs:
            exporter.wait_ready()
        for exporter in runs:
            exporter.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while any(e.proc.poll() is None for e in runs) and time.monotonic() < deadline:
            for exporter in runs:
                if exporter.proc.poll() is None:
                    for signum in (signal.SIGHUP, signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
                        exporter.proc.send_signal(signum)
        codes = [exporter.proc.wait(timeout=10) for exporter in runs]
    finally:
        for exporter in runs:
            exporter.stop()
    assert codes == [0] * 5, [e.output()[-500:] for e in runs]
    assert all("stopped clean=True" in e.output() for e in runs)
