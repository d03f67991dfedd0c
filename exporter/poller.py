"""Schedules refreshes of one team, polls its projects with bounded concurrency, writes
outcomes to the store; knows nothing of Prometheus.

One `Poller` per API key: its own targets (configured or discovered), currency, request
budget (through its client), thread pool and schedule, so that one team's failure never
slows, pauses or blanks another's. A refresh polls every project once; the next one is
scheduled one effective interval after this one started (at once if it overran), so a
run is never skipped and the exported interval is the real one.

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
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from apscheduler.schedulers.background import BackgroundScheduler

from exporter import errors
from exporter.models import ProjectResource, UsageAttributes
from exporter.snapshot import DEFAULT_TEAM, Limits, SnapshotStore, build_usage

log = logging.getLogger(__name__)

T = TypeVar("T")
#: /projects answers at most this many projects a page (see client.PROJECTS_PAGE_SIZE).
PROJECTS_PER_PAGE = 100
#: A next refresh closer than this is run in the same job, not scheduled: a job can't
#: be scheduled to start before its own run has ended.
MIN_SCHEDULE_SECONDS = 1.0
#: What the one log line of a failed poll tells the operator to do, by reason.
HINTS = {
    "unauthorized": "the API rejected the token: set a valid LATITUDESH_AUTH_TOKEN or "
    "api.token_file (requests with this token pause for a while)",
    "forbidden": "the token may not read this project's billing",
    "not_found": "unknown project id: check projects[].id in the config",
    "rate_limited": "the API key is over its rate limit: lower api.requests_per_minute, "
    "or check what else uses this key",
    "server_error": "the Latitude.sh API failed; retried with backoff",
    "timeout": "the Latitude.sh API did not answer in api.timeout_seconds",
    "network": "could not reach the Latitude.sh API",
    "invalid_response": "the API answered with something that is not usable",
    "token_unreadable": "the token file is missing, empty or unreadable: check the "
    "mounted secret (it is read again at every request)",
}


class UsageSource(Protocol):
    def billing_usage(
        self, project_id: str, *, plan: str | None = None, products: Sequence[str] = ()
    ) -> UsageAttributes: ...

    def projects(self) -> list[ProjectResource]: ...


@dataclass(frozen=True, slots=True)
class Target:
    project_id: str
    plan: str | None = None
    products: tuple[str, ...] = ()
    slug: str | None = None
    name: str | None = None


def attempt(call: Callable[[], T]) -> T | errors.LatitudeError:
    """`call()`, or the error it ended in, as a `LatitudeError` with a reason.

    One of the exporter's two broad catches (the other is the HTTP handler): a poll or
    a discovery must never end without a counted reason, and a hostile answer that
    finds an exception nobody thought of is still a failed poll, not a frozen one.
    """
    try:
        return call()
    except errors.LatitudeError as exc:
        return exc
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)  # the traceback, at debug only
        return errors.Unexpected(f"unexpected {type(exc).__name__}")


class Poller:
    def __init__(
        self,
        source: UsageSource,
        store: SnapshotStore,
        *,
        team: str | None = None,
        targets: Sequence[Target] = (),
        currency: str | None = None,
        interval: float = 300.0,
        concurrency: int = 4,
        limits: Limits = Limits(),  # noqa: B008 (frozen)
        budget_seconds: Callable[[int], float] = lambda requests: 0.0,
        grace: float = 15.0,
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        scheduler: BackgroundScheduler | None = None,
    ) -> None:
        """With no `targets`, every refresh discovers the team's projects first. With no
        `team`, the team is named after its slug once /projects has answered."""
        self._source = source
        self._store = store
        self._team = team or DEFAULT_TEAM
        self._named = team is not None
        self._configured = tuple(targets)
        self._discover = not self._configured
        self._targets: tuple[Target, ...] = self._configured
        self._currency = currency
        self._currency_configured = currency is not None
        self._interval = interval
        self._limits = limits
        self._budget_seconds = budget_seconds
        self._grace = grace
        self._now = now
        self._monotonic = monotonic
        self._scheduler = scheduler
        self._stretched = False
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="poll")
        self._stopped = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        store.add_team(self._team)
        if self._configured:
            store.set_projects(self._team, ((t.project_id, "") for t in self._configured))

    @property
    def team(self) -> str:
        return self._team

    @property
    def job_id(self) -> str:
        return f"refresh-{id(self)}"

    def record_request(self, endpoint: str, code: str) -> None:
        """The client's `on_request`: every request counted under this team."""
        self._store.record_request(self._team, endpoint, code)

    def start(self) -> None:
        """Schedule refreshes, the first one now (the caller starts the scheduler)."""
        self._schedule(datetime.now(UTC))

    def stop(self, timeout: float = 4.0) -> bool:
        """Stop scheduling and wait up to `timeout` for a running refresh; True if idle."""
        self._stopped.set()
        if self._scheduler is not None and self._scheduler.get_job(self.job_id):
            self._scheduler.remove_job(self.job_id)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return self._idle.wait(timeout)

    def effective_interval(self) -> float:
        """The poll interval, stretched when the request budget can't fit a refresh:
        one request per project and every page of /projects a discovery reads."""
        requests = len(self._targets)
        if self._needs_project_list():
            requests += len(self._targets) // PROJECTS_PER_PAGE + 1
        return max(self._interval, self._budget_seconds(requests))

    def refresh(self) -> bool:
        """Poll every project once; True when discovery (if any) and every poll succeeded."""
        self._idle.clear()
        started = self._monotonic()
        try:
            discovered = self._refresh_project_list()
            effective = self.effective_interval()
            self._note_stretch(effective)
            self._store.record_refresh(self._team, duration=None, effective_interval=effective)
            ok = self._poll_all(deadline=started + effective + self._grace)
            self._store.record_refresh(
                self._team,
                duration=self._monotonic() - started,
                effective_interval=effective,
                currency=self._currency or "",
            )
            return ok and discovered
        finally:
            self._idle.set()

    def _poll_all(self, deadline: float) -> bool:
        with self._lock:
            targets = [t for t in self._targets if t.project_id not in self._in_flight]
            self._in_flight.update(t.project_id for t in targets)
        futures: list[tuple[Target, Future[bool]]] = []
        for target in targets:
            try:
                futures.append((target, self._pool.submit(self._poll_and_release, target)))
            except RuntimeError:  # the pool was shut down: the exporter is stopping
                self._release(target)
        ok = len(targets) == len(self._targets)
        for target, future in futures:
            # Not concurrent.futures.wait(): it is never woken for futures that
            # shutdown(cancel_futures=True) cancels, and would hang a stopping poller.
            try:
                ok = future.result(timeout=max(deadline - self._monotonic(), 0.0)) and ok
            except CancelledError:
                self._release(target)
                ok = False
            except FutureTimeout:
                # Still polling: it records its own outcome when it ends, and the next
                # refresh leaves it alone meanwhile. The others don't wait for it.
                log.warning(
                    "poll outlasts its refresh",
                    extra={"team": self._team, "project_id": target.project_id},
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
            attributes = self._source.billing_usage(
                target.project_id, plan=target.plan, products=target.products
            )
            usage = build_usage(
                target.project_id,
                attributes,
                currency=self._currency or "",
                limits=self._limits,
                slug=target.slug,
                name=target.name,
            )
            self._store.record_success(usage, duration=self._monotonic() - started, now=self._now())
            return True

        outcome = attempt(fetch)
        if not isinstance(outcome, errors.LatitudeError):
            return outcome
        if isinstance(outcome, errors.Cancelled):
            return False
        self._store.record_failure(
            target.project_id, outcome.reason, duration=self._monotonic() - started
        )
        log.warning(
            "poll failed",
            extra={
                "team": self._team,
                "project_id": target.project_id,
                "reason": outcome.reason,
                "error": str(outcome),
                "hint": HINTS.get(outcome.reason, ""),
            },
        )
        return False

    def _needs_project_list(self) -> bool:
        return self._discover or not self._currency or not self._named

    def _refresh_project_list(self) -> bool:
        """Discover projects (and the currency, and the team's name); False on failure."""
        if not self._needs_project_list():
            return True
        outcome = attempt(self._source.projects)
        if isinstance(outcome, errors.Cancelled):
            return False  # stopping: nothing to count
        if isinstance(outcome, errors.LatitudeError):
            self._store.record_discovery_failure(self._team, outcome.reason)
            log.warning(
                "project discovery failed",
                extra={
                    "team": self._team,
                    "reason": outcome.reason,
                    "error": str(outcome),
                    "hint": HINTS.get(outcome.reason, ""),
                    "known_projects": len(self._targets),
                },
            )
            return False
        projects = outcome
        if not self._currency_configured:
            self._currency = next((p.currency for p in projects if p.currency), self._currency)
        if not self._named:
            slug = next((p.team.slug for p in projects if p.team and p.team.slug), None)
            if slug and slug != self._team:
                self._store.rename_team(self._team, slug)
                self._team = slug
        by_id = {p.id: p for p in projects if p.id}
        if self._discover:
            found = tuple(Target(pid) for pid in by_id)
            if {t.project_id for t in found} != {t.project_id for t in self._targets}:
                log.info("projects discovered", extra={"team": self._team, "projects": len(found)})
            self._targets = found
        self._targets = tuple(
            Target(
                t.project_id,
                t.plan,
                t.products,
                slug=_attr(by_id, t.project_id, "slug"),
                name=_attr(by_id, t.project_id, "name"),
            )
            for t in self._targets
        )
        taken = set(
            self._store.set_projects(
                self._team, ((t.project_id, t.slug or "") for t in self._targets)
            )
        )
        refused = [t.project_id for t in self._targets if t.project_id not in taken]
        if refused:
            log.warning(
                "projects seen by another team's key are left to that team",
                extra={"team": self._team, "projects": ",".join(refused[:10])},
            )
            self._targets = tuple(t for t in self._targets if t.project_id in taken)
        self._store.record_discovery_success(self._team, self._now())
        return True

    def _note_stretch(self, effective: float) -> None:
        stretched = effective > self._interval
        if stretched and not self._stretched:
            log.warning(
                "request budget stretches the poll interval",
                extra={
                    "team": self._team,
                    "projects": len(self._targets),
                    "interval_seconds": self._interval,
                    "effective_interval_seconds": round(effective, 1),
                },
            )
        self._stretched = stretched

    def _schedule(self, when: datetime) -> None:
        if self._scheduler is None or self._stopped.is_set():
            return
        self._scheduler.add_job(
            self._run_scheduled,
            trigger="date",
            run_date=when,
            id=self.job_id,
            name=f"refresh {self._team}",
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            # 3.x defaults to 1 s and would silently drop a run that starts late.
            misfire_grace_time=max(1, int(self._interval)),
        )

    def _run_scheduled(self) -> None:
        """Refresh, then schedule the next one an effective interval after this one
        started; a refresh that overran is followed at once, in this same run."""
        while not self._stopped.is_set():
            started = self._monotonic()
            try:
                self.refresh()
            except Exception:  # the scheduled job's own catch: the schedule must go on
                log.exception("refresh crashed", extra={"team": self._team})
            wait = started + self.effective_interval() - self._monotonic()
            if wait >= MIN_SCHEDULE_SECONDS:
                self._schedule(datetime.now(UTC) + timedelta(seconds=wait))
                return
            if self._stopped.wait(max(wait, 0.0)):
                return


def _attr(by_id: dict[str, ProjectResource], project_id: str, name: str) -> str | None:
    project = by_id.get(project_id)
    if project is None or project.attributes is None:
        return None
    value = getattr(project.attributes, name)
    return value if isinstance(value, str) else None
