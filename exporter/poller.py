"""One team's refresh: discovery, then every project polled with bounded concurrency and deadlines.

One `Poller` per API key: its own targets (see `discovery.py`), currency, request
budget (through its client) and thread pool, so that one team's failure never slows,
pauses or blanks another's. `Schedule` runs its refreshes; the `Watchdog` asks it which
projects are overdue. Knows nothing of Prometheus.

Overdue is judged against the schedule the budget allows, never against the time since
a project's last outcome: a refresh that starts at S may spread its requests over its
whole span (its effective interval), in whatever order discovery lists the projects,
so a project polled first in one refresh and last in the next goes two spans between
outcomes and is on time. A project waits on the refresh that started while it had no
poll pending (or that sent its poll); it is overdue when it has had no outcome since
and the time is past S + span + margin, the span stretched by the requests the
refresh really made (retries, redirects) and the deadline moved by the budget's 429
pauses and the process's own pauses since S.

This module is the poll boundary: whatever goes wrong in a poll or a discovery, typed
error or not, ends as one counted reason, `latitudesh_up 0` for what it affects, the last
good data kept and one log line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from exporter import errors
from exporter.config import DEFAULT_TEAM
from exporter.discovery import Discovery, Target, UsageSource
from exporter.models import PayloadError, read_usage
from exporter.snapshot import ClosedPeriod, UsageSnapshot
from exporter.state import NoState, State, StoredAnswer, StoredCurve, StoredPoint
from exporter.store import Restored, SnapshotStore
from exporter.usage import Limits, build_usage

log = logging.getLogger(__name__)

__all__ = ["Poller", "Target", "UsageSource"]


class _Round:
    """One refresh, as the watchdog judges the projects that wait on it."""

    __slots__ = ("closed", "requests", "span", "start")

    def __init__(self, start: float, span: float, requests: int) -> None:
        #: Monotonic time the refresh started.
        self.start = start
        #: The span the budget allows it: its effective interval (after discovery).
        self.span = span
        #: The team's request count when it started, and when the next one started
        #: (None while it is the latest): the requests made in between are its own.
        self.requests = requests
        self.closed: int | None = None


@dataclass(slots=True)
class _Pending:
    """A project as the watchdog sees it: the refresh it waits on for an outcome,
    None once its last poll has one. One attribute, written whole: read without a lock."""

    waiting: _Round | None


def _no_pause(since: float) -> float:
    return 0.0


class Poller:
    """Refreshes one team: its discovery and a poll of each of its projects.

    Parameters:
        source: the API (`LatitudeClient`).
        store: where outcomes go.
        team: the `team` label, or None to take the team's slug from /projects.
        rank: the team's place in the config (it decides who owns a shared project).
        targets: the configured projects; none discovers the team's.
        currency: the configured currency, or None to take the team's.
        interval: `poll.interval_seconds`.
        concurrency: `poll.concurrency`, the projects polled at once.
        limits: the cardinality guards.
        budget_seconds: how long N requests take at the key's budget.
        budget_paused: the budget's `paused_between(since, until)`: how long its 429
            pauses held its requests back between two moments (the watchdog allows
            for them).
        requests_made: the key's requests so far (the budget's `grants`: every
            request, retry and redirect hop takes a slot), for the span of a refresh
            whose retries took more requests than its projects.
        key_origin: where the team's key comes from, for the hints of log lines.
        state: where each successful answer is kept for a warm start (none: nowhere).
        grace: how long a refresh waits for its polls beyond its interval.
        now: the wall clock, for timestamps.
        monotonic: the clock of durations and deadlines.
    """

    def __init__(
        self,
        source: UsageSource,
        store: SnapshotStore,
        *,
        team: str | None,
        interval: float,
        concurrency: int,
        limits: Limits,
        budget_seconds: Callable[[int], float],
        grace: float,
        rank: int | None = None,
        targets: Sequence[Target] = (),
        currency: str | None = None,
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        budget_paused: Callable[[float, float], float] = lambda since, until: 0.0,
        requests_made: Callable[[], int] = lambda: 0,
        key_origin: str = "the configured key",
        state: State | None = None,
    ) -> None:
        self._source = source
        self._store = store
        store.add_team(team or DEFAULT_TEAM, rank, key_origin=key_origin)
        self._discovery = Discovery(
            source,
            store,
            team=team or DEFAULT_TEAM,
            named=team is not None,
            targets=targets,
            currency=currency,
            now=now,
            hint=lambda reason: errors.hint(reason, key_origin),
        )
        self._interval = interval
        self._limits = limits
        self._budget_seconds = budget_seconds
        self._budget_paused = budget_paused
        self._requests_made = requests_made
        self._key_origin = key_origin
        self._state: State = state or NoState()
        self._grace = grace
        self._now = now
        self._monotonic = monotonic
        self._stretched = False
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="poll")
        self._discoverer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="discover")
        self._discovering: Future[bool] | None = None
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        #: The latest refresh; until the first, the poller's creation stands for one.
        self._round = _Round(monotonic(), self.effective_interval(), requests_made())
        self._birth = self._round
        #: What each target waits on, for the watchdog. Replaced whole, never changed
        #: in place, so that the watchdog reads it without a lock.
        self._pending: dict[str, _Pending] = {}
        self._track(self.targets, self._round, {t.project_id for t in self.targets})
        self._running = 0
        self._idle = threading.Event()
        self._idle.set()

    @property
    def team(self) -> str:
        """The team's name, the `team` label (its slug once discovery learns it)."""
        return self._discovery.team

    @property
    def key(self) -> str:
        """The team's key in the store, for good (its configured name, or `default`)."""
        return self._discovery.key

    @property
    def targets(self) -> tuple[Target, ...]:
        return self._discovery.targets

    def stop(self, timeout: float = 4.0) -> bool:
        """Cancel queued polls and wait up to `timeout` for running ones; True if idle."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._discoverer.shutdown(wait=False, cancel_futures=True)
        return self._idle.wait(timeout)

    def effective_interval(self) -> float:
        """The poll interval, stretched when the request budget can't fit a refresh:
        one request per project and every page of /projects a discovery reads."""
        requests = len(self.targets) + self._discovery.requests()
        return max(self._interval, self._budget_seconds(requests))

    def overdue(
        self, now: float, margin: float, paused: Callable[[float], float] = _no_pause
    ) -> list[str]:
        """Projects still without an outcome past the time their refresh allowed them.

        A project waiting on a refresh that started at S, with span E, is overdue once
        `now` > S + max(E, the budget's time for the requests that refresh made) +
        `margin` + the time the budget's pauses held its requests back since S +
        `paused(S)` (the seconds the process was stopped since S, which the watchdog
        measures). Takes no lock: the watchdog never waits on the poller.
        """
        pending = self._pending
        requests = self._requests_made()
        due: dict[_Round, float] = {}
        late = []
        for project_id, state in pending.items():
            waiting = state.waiting
            if waiting is None:
                continue
            if waiting not in due:
                made = (requests if waiting.closed is None else waiting.closed) - waiting.requests
                due[waiting] = (
                    waiting.start
                    + max(waiting.span, self._budget_seconds(made))
                    + margin
                    + self._budget_paused(waiting.start, now)
                    + paused(waiting.start)
                )
            if now > due[waiting]:
                late.append(project_id)
        return late

    def refresh(self) -> bool:
        """Poll every project once; True when discovery (if any) and every poll succeeded.

        Bounded: discovery and polls get until the next refresh is due plus `grace`;
        what is still running then records its own outcome when it ends, and is not
        started twice meanwhile.
        """
        with self._lock:
            self._running += 1
            self._idle.clear()
        started = self._monotonic()
        try:
            effective = self.effective_interval()
            this = self._begin(started, effective)
            self._store.record_refresh(self.key, duration=None, effective_interval=effective)
            deadline = started + effective + self._grace
            discovered = self._discover(deadline)
            if discovered and self._discovery.needed:
                self._state.keep_only(self.key, [t.project_id for t in self.targets])
            effective = self.effective_interval()
            # The projects discovery found are the budget's to pace: the watchdog gives
            # them the span they take.
            this.span = max(this.span, effective)
            self._note_stretch(effective)
            ok = self._poll_all(deadline, this)
            self._store.record_refresh(
                self.key,
                duration=self._monotonic() - started,
                effective_interval=effective,
                currency=self._discovery.currency or "",
                healthy=ok and discovered,
            )
            return ok and discovered
        finally:
            with self._lock:
                self._running -= 1
                if not self._running:
                    self._idle.set()

    def _begin(self, started: float, effective: float) -> _Round:
        """A new refresh: the previous one's requests are counted, and every project
        with no poll pending waits on this one from now on."""
        with self._lock:
            made = self._requests_made()
            self._round.closed = made
            self._round = _Round(started, effective, made)
            targets = self.targets
            idle = {t.project_id for t in targets if t.project_id not in self._in_flight}
            self._track(targets, self._round, idle)
            return self._round

    def _track(self, targets: Sequence[Target], waiting: _Round, polled: set[str]) -> None:
        """Publish what each target waits on (under the lock): a new target, and a
        target of `polled` whose last poll had its outcome (or that was never polled
        yet), wait on `waiting`; one still waiting keeps the older refresh it waits on
        (a refresh that never sent its poll is late from its own start)."""
        before = self._pending
        pending = {}
        for target in targets:
            state = before.get(target.project_id)
            if state is None:
                state = _Pending(waiting)
            elif target.project_id in polled and state.waiting in (None, self._birth):
                state.waiting = waiting
            pending[target.project_id] = state
        self._pending = pending

    def restore(self, answers: Sequence[StoredAnswer], curves: Sequence[StoredCurve] = ()) -> int:
        """Serve what the state kept of this team, before any poll: each project still
        configured (or, with discovery, each kept until discovery says otherwise) gets
        its figures and the time they were received, and its curve's points of that
        answer's period; its answer is read again by the live path. Returns the
        projects served."""
        mine = [a for a in answers if a.team == self.key]
        current = [a for a in mine if not a.closed]
        latest = max(current, key=lambda a: a.received_at, default=None)
        targets = self._discovery.restore(
            [Target(a.project_id, slug=a.slug, name=a.name) for a in current],
            currency=latest.currency if latest else None,
            team_name=latest.team_name if latest else None,
        )
        kept = {t.project_id for t in targets}
        read: dict[str, dict[bool, tuple[UsageSnapshot, float]]] = {}
        summaries: dict[str, ClosedPeriod] = {}
        for answer in mine:
            if answer.project_id not in kept:
                continue
            if answer.closed and answer.summary is not None:
                summary = ClosedPeriod.decode(answer.summary)
                if summary is not None:
                    summaries[answer.project_id] = summary
                    continue
            try:
                attributes = read_usage(answer.project_id, answer.body)
            except PayloadError as exc:
                log.warning(
                    "a stored answer no longer reads: not served",
                    extra={"team": self.team, "project_id": answer.project_id, "error": str(exc)},
                )
                continue
            usage = build_usage(
                answer.project_id,
                attributes,
                currency=answer.currency,
                limits=self._limits,
                at=answer.received_at,
                slug=answer.slug,
                name=answer.name,
            )
            read.setdefault(answer.project_id, {})[answer.closed] = (usage, answer.received_at)
        kept_curves = {c.project_id: c.curve for c in curves if c.team == self.key}
        restored: list[Restored] = []
        for project_id in read.keys() | summaries.keys():
            kinds = read.get(project_id, {})
            last, closed = kinds.get(False), kinds.get(True)
            kept_curve = kept_curves.get(project_id)
            restored.append(
                Restored(
                    project_id,
                    last[0] if last else None,
                    last[1] if last else 0.0,
                    summaries.get(project_id) or (ClosedPeriod.of(*closed) if closed else None),
                    kept_curve
                    if last and kept_curve and kept_curve.period_start == last[0].period_start
                    else None,
                )
            )
        self._store.record_restored(self.key, restored)
        self._state.keep_only(self.key, kept)
        return sum(1 for r in restored if r.usage is not None)

    def _discover(self, deadline: float) -> bool:
        if not self._discovery.needed:
            return True
        with self._lock:
            if self._discovering is None or self._discovering.done():
                try:
                    self._discovering = self._discoverer.submit(self._discovery.run)
                except RuntimeError:  # the executor was shut down: stopping
                    return False
            future = self._discovering
        try:
            return future.result(timeout=max(deadline - self._monotonic(), 0.0))
        except CancelledError:
            return False
        except FutureTimeout:
            log.warning(
                "project discovery outlasts its refresh: polling the projects known",
                extra={"team": self.team, "known_projects": len(self.targets)},
            )
            return False

    def _poll_all(self, deadline: float, this: _Round) -> bool:
        targets = self.targets
        with self._lock:
            fresh = [t for t in targets if t.project_id not in self._in_flight]
            self._in_flight.update(t.project_id for t in fresh)
            # A project polled now waits on this refresh (unless it waits on an older
            # one); one whose poll is still running keeps waiting on its own.
            self._track(targets, this, {t.project_id for t in fresh})
        futures: list[tuple[Target, Future[bool]]] = []
        for target in fresh:
            try:
                futures.append((target, self._pool.submit(self._poll_and_release, target)))
            except RuntimeError:  # the pool was shut down: the exporter is stopping
                self._release(target)
        ok = len(fresh) == len(targets)
        for target, future in futures:
            # Not concurrent.futures.wait(): it is never woken for futures that
            # shutdown(cancel_futures=True) cancels, and would hang a stopping poller.
            try:
                ok = future.result(timeout=max(deadline - self._monotonic(), 0.0)) and ok
            except CancelledError:
                self._release(target)
                ok = False
            except FutureTimeout:
                # Still polling (or queued behind polls that are): it records its own
                # outcome when it ends, and the next refresh leaves it alone meanwhile.
                log.warning(
                    "poll outlasts its refresh",
                    extra={"team": self.team, "project_id": target.project_id},
                )
                ok = False
        return ok

    def _poll_and_release(self, target: Target) -> bool:
        try:
            return self.poll(target)
        finally:
            self._release(target)

    def _release(self, target: Target) -> None:
        with self._lock:
            self._in_flight.discard(target.project_id)

    def poll(self, target: Target) -> bool:
        """Poll one project and record the outcome; True on success."""
        started = self._monotonic()

        def fetch() -> bool:
            answer = self._source.billing_usage(
                target.project_id, plan=target.plan, products=target.products
            )
            currency = self._discovery.currency or ""
            now = self._now()
            usage = build_usage(
                target.project_id,
                answer.attributes,
                currency=currency,
                limits=self._limits,
                at=now,
                slug=target.slug,
                name=target.name,
            )
            self._outcome(target)
            landed = self._store.record_success(
                self.key, usage, duration=self._monotonic() - started, now=now
            )
            self._state.keep(
                StoredAnswer(
                    self.key,
                    target.project_id,
                    answer.body,
                    now,
                    currency,
                    target.slug,
                    target.name,
                    self.team,
                    period_start=usage.period_start,
                    # what this answer will say as a closed period, read at a warm start
                    summary=ClosedPeriod.of(usage, now).encode(),
                )
            )
            if landed.point is not None and usage.period_start is not None:
                self._state.keep_point(
                    StoredPoint(self.key, target.project_id, usage.period_start, *landed.point)
                )
            closed = landed.closed
            if closed is not None:
                log.info(
                    "billing period closed",
                    extra={
                        "team": self.team,
                        "project_id": target.project_id,
                        "price": closed.price,
                        "currency": closed.currency,
                        "observed_before_end_seconds": None
                        if closed.period_end is None
                        else round(closed.period_end - closed.observed_at),
                    },
                )
            return True

        outcome = errors.attempt(fetch)
        if not isinstance(outcome, errors.LatitudeError):
            return outcome
        if isinstance(outcome, errors.Unexpected):
            log.debug("unexpected error in a poll", exc_info=outcome.__cause__)
        if isinstance(outcome, errors.Cancelled):
            return False
        self._outcome(target)
        self._store.record_failure(
            self.key, target.project_id, outcome.reason, duration=self._monotonic() - started
        )
        log.warning(
            "poll failed",
            extra={
                "team": self.team,
                "project_id": target.project_id,
                "reason": outcome.reason,
                "error": str(outcome),
                "hint": errors.hint(outcome.reason, self._key_origin),
            },
        )
        return False

    def _outcome(self, target: Target) -> None:
        state = self._pending.get(target.project_id)
        if state is not None:
            state.waiting = None  # its poll is in flight: no refresh marks it meanwhile

    def _note_stretch(self, effective: float) -> None:
        stretched = effective > self._interval
        if stretched and not self._stretched:
            log.warning(
                "request budget stretches the poll interval",
                extra={
                    "team": self.team,
                    "projects": len(self.targets),
                    "interval_seconds": self._interval,
                    "effective_interval_seconds": round(effective, 1),
                },
            )
        self._stretched = stretched
