"""Signals handed to the main thread through a pipe, never acted on in a handler.

Two traps, both measured here: a Python handler runs on the main thread between two
bytecodes, possibly inside another handler, so one that takes a lock (setting a
`threading.Event`) deadlocked the main thread under a storm of SIGHUPs (2 of 16
daemons); and a signal the kernel delivers to another thread never interrupts a
main thread blocked in a read, so its Python handler does not run until something
else wakes that thread (the storm's later SIGHUPs were never acted on, 1 of 7 runs
under load). So the signal number is written to a pipe by CPython's C-level handler
(`signal.set_wakeup_fd`), from whichever thread received it; the main thread blocks
reading that pipe (`Inbox.wait`) and does the work, where taking locks is safe.
"""

from __future__ import annotations

import contextlib
import os
import signal
from types import FrameType

#: What `wake` writes: not a signal number.
_WAKE = b"\0"


class Inbox:
    """The signals received since the last `wait`, in order.

    Parameters:
        signums: the signals to catch; their handlers and the process's wake-up fd
            are installed at once (from the main thread) and left installed.
    """

    def __init__(self, signums: tuple[signal.Signals, ...]) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        for signum in signums:
            signal.signal(signum, _noted)

    def wake(self) -> None:
        """Make `wait` return; safe from any thread."""
        # A full pipe already holds a wake-up: dropping this byte loses nothing.
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write, _WAKE)

    def wait(self) -> list[signal.Signals]:
        """Block until a signal (or `wake`), then return every signal received since."""
        data = os.read(self._read, 4096)  # drains every pending byte at once
        return [signal.Signals(byte) for byte in data if byte]


def _noted(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: nothing to do, the C-level one wrote to the pipe."""
    del signum, frame
