"""A team's refreshes one effective interval apart, on the monotonic clock, in a thread of its own.

Why not APScheduler, which the exporter used before: APScheduler 3.x computes run
times from the wall clock and drops a run that starts later than `misfire_grace_time`.
A self-rescheduling job chain therefore ended for good after a pause of the process
(`SIGSTOP`, a suspended VM, `docker pause`), a step of the wall clock back made every
run wait an hour, and its shared ten-thread pool let ten slow teams starve the
eleventh. Here every team has its own thread, waits are on the monotonic clock (a
pause or a step of the wall clock changes timestamps, never the schedule), and a run
that is late, missed or would overlap the previous one runs now, once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Schedule:
    """Runs `job` again one `interval()` after each run *started*, or at once when the
    run overran, until stopped; never two runs of one schedule at once.

    Parameters:
        name: what the log lines call it (the team's label).
        job: one refresh. Its exceptions are logged and the schedule goes on.
        interval: seconds between two starts, asked after every run (the budget can
            stretch it as the number of projects changes).
        clock: the monotonic clock (injected by tests).
        sleep: waits that long, or less when the schedule is stopped (then True);
            tests pass one that moves their clock instead.
    """

    def __init__(
        self,
        name: str,
        job: Callable[[], object],
        interval: Callable[[], float],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], bool] | None = None,
    ) -> None:
        self.name = name
        self._job = job
        self._interval = interval
        self._clock = clock
        self._stopped = threading.Event()
        self._sleep = sleep or self._stopped.wait
        self._lock = threading.Lock()
        self._generation = 0
        self._thread: threading.Thread | None = None
        #: Monotonic time the schedule (re)started, and the last run started.
        self.started_at: float | None = None
        self.last_start: float | None = None
        self.restarts = 0

    def start(self) -> None:
        with self._lock:
            self._generation += 1
            self.started_at = self._clock()
            generation = self._generation
            self._thread = threading.Thread(
                target=self._run, args=(generation,), name=f"schedule-{self.name}", daemon=True
            )
            self._thread.start()

    def restart(self) -> None:
        """Start a new thread for the schedule. A run that is stuck in the old one is
        left to end on its own (its deadlines bound it); the old thread then exits."""
        with self._lock:
            self.restarts += 1
        self.start()

    def stop(self) -> None:
        self._stopped.set()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` for the current run to end; True when idle."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def due_since(self) -> float | None:
        """Monotonic time of the last start (or of the schedule's own start)."""
        return self.last_start if self.last_start is not None else self.started_at

    def run(self) -> None:
        """Run the schedule in the calling thread until stopped (tests)."""
        with self._lock:
            self._generation += 1
            self.started_at = self._clock()
            generation = self._generation
        self._run(generation)

    def _run(self, generation: int) -> None:
        while not self._stopped.is_set() and generation == self._generation:
            started = self._clock()
            self.last_start = started
            try:
                self._job()
            except Exception:  # the schedule's own catch: one crashed run must not end it
                log.exception("refresh crashed", extra={"team": self.name})
            if generation != self._generation:
                return  # restarted meanwhile: the new thread owns the schedule
            wait = started + self._interval() - self._clock()
            if wait > 0 and self._sleep(wait):
                return
