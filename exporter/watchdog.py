"""Turns late polling into `latitudesh_up 0` (reason `stalled`); restarts a stuck schedule.

Without it, a team whose schedule stopped (a bug, a wedged thread) or a project whose
poll waits behind a hanging API kept `latitudesh_up 1` and its last figures forever:
data frozen while health says fine. The watchdog runs in a thread of its own, on the
monotonic clock, and judges each team and each project by its own effective interval:

- a team whose refresh has not started within its effective interval plus `margin`
  is stalled: its projects get `up 0` (counted once under `stalled`), `/readyz` says
  so, one line is logged, and its schedule is restarted;
- a project still without a poll outcome when the refresh it waits on is past its span
  plus `margin` is stalled the same way (one line per team and check, naming how
  many). The span is the one the request budget allows that refresh, which may spread
  its polls over the whole effective interval in any order; the budget's 429 pauses
  since the refresh started move the deadline too (see `Poller.overdue`). Never the
  time since a project's last outcome: that is two spans for a project polled first
  in one refresh and last in the next, and on time.

A pause of the whole process (`SIGSTOP`, a suspended VM) shows as the watchdog's own
wake-up coming late: it then waits one `margin` before judging, so that the schedules,
which resume at once, are not restarted for nothing, and the pause moves the deadline
of every refresh that started before it (polls paced by the budget resume at its pace).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from exporter.schedule import Schedule
from exporter.store import SnapshotStore

log = logging.getLogger(__name__)

#: How often the watchdog looks, in seconds, when nothing asks for another tick.
TICK_SECONDS = 1.0
#: A wake-up later than this beyond its tick means the process was paused.
PAUSE_SECONDS = 2.0
#: Process pauses remembered (for deadlines of refreshes that started before them).
PAUSES_KEPT = 1024


class Watched(Protocol):
    """What the watchdog needs of a team's poller."""

    @property
    def team(self) -> str: ...

    @property
    def key(self) -> str: ...

    def effective_interval(self) -> float: ...

    def overdue(self, now: float, margin: float, paused: Callable[[float], float]) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Team:
    poller: Watched
    schedule: Schedule


class Watchdog:
    """Looks at every team and project every `tick` seconds.

    Parameters:
        teams: each team's poller and schedule.
        store: where stalled projects and teams are recorded.
        margin: seconds beyond the span the budget allows a refresh before work counts
            as late: the longest one poll may take, every attempt at its timeout and
            the backoff waits between them (see `wiring.stall_margin`).
        tick: seconds between two looks.
        clock: the monotonic clock (injected by tests).
    """

    def __init__(
        self,
        teams: Sequence[Team],
        store: SnapshotStore,
        *,
        margin: float,
        tick: float = TICK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._teams = list(teams)
        self._store = store
        self._margin = margin
        self._tick = tick
        self._clock = clock
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._hold_until = -float("inf")
        self._last_look: float | None = None
        #: (when noticed, seconds) of each pause of the process the watchdog noticed.
        self._pauses: deque[tuple[float, float]] = deque(maxlen=PAUSES_KEPT)

    def start(self) -> None:
        self._last_look = self._clock()
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def check(self) -> None:
        """One look at every team and project (the thread calls this every tick)."""
        now = self._clock()
        if self._last_look is not None and now - self._last_look > self._tick + PAUSE_SECONDS:
            # The process was paused: every schedule resumes at once by itself; give
            # them a margin before anything counts as stalled, and every refresh that
            # started before the pause the time it lost.
            paused = now - self._last_look - self._tick
            log.info(
                "the process was paused; polling resumes",
                extra={"paused_seconds": round(paused, 1)},
            )
            self._pauses.append((now, paused))
            self._hold_until = now + self._margin
        self._last_look = now
        if now < self._hold_until:
            return
        for team in self._teams:
            self._check_team(team, now)

    def _check_team(self, team: Team, now: float) -> None:
        poller, schedule = team.poller, team.schedule
        interval = poller.effective_interval()
        since = schedule.due_since()
        if since is not None and now - since > interval + self._margin:
            stalled = self._store.record_team_stalled(poller.key)
            log.warning(
                "refresh stalled: restarting the team's schedule",
                extra={
                    "team": poller.team,
                    "seconds_since_last_start": round(now - since, 1),
                    "effective_interval_seconds": round(interval, 1),
                    "projects": stalled,
                    "hint": "polling did not start on time; the schedule is restarted",
                },
            )
            schedule.restart()
            return
        late = poller.overdue(now, self._margin, self.paused_since)
        if late:
            marked = self._store.record_stalled(poller.key, late)
            if marked:
                log.warning(
                    "polls overdue: marked stalled",
                    extra={
                        "team": poller.team,
                        "projects": marked,
                        "first": late[0],
                        "effective_interval_seconds": round(interval, 1),
                        "hint": "no poll outcome by the end of the span the request "
                        "budget allows its refresh plus the stall margin (the longest a "
                        "poll may take with its retries): the API may hang",
                    },
                )

    def paused_since(self, since: float) -> float:
        """Seconds the process was noticed paused after the monotonic time `since`
        (a pause noticed at the first look after `since` may have begun before it: it
        counts, lenient rather than a false stall)."""
        return sum(seconds for noticed, seconds in self._pauses if noticed > since)

    def _run(self) -> None:
        while not self._stopped.wait(self._tick):
            try:
                self.check()
            except Exception:  # the watchdog must outlive any bug it meets
                log.exception("watchdog check failed")
