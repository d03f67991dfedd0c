"""Schedules refreshes, polls projects with bounded concurrency, writes the store.

Knows nothing of Prometheus: outcomes go into the `SnapshotStore`, and the collector
reads them from there. One refresh polls every project once; APScheduler runs it every
effective interval with `max_instances=1` and `coalesce=True`, so a slow API can delay
refreshes but never stack them up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from exporter import errors
from exporter.models import ProjectResource, UsageAttributes
from exporter.snapshot import SnapshotStore, build_usage

log = logging.getLogger(__name__)

JOB_ID = "refresh"
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
    "invalid_response": "the API answered with something that is not usable billing usage",
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


class Poller:
    def __init__(
        self,
        source: UsageSource,
        store: SnapshotStore,
        *,
        targets: Sequence[Target] = (),
        currency: str | None = None,
        interval: float = 300.0,
        concurrency: int = 4,
        max_products: int = 1000,
        budget_seconds: Callable[[int], float] = lambda requests: 0.0,
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        scheduler: BackgroundScheduler | None = None,
    ) -> None:
        """With no `targets`, every refresh discovers the team's projects first."""
        self._source = source
        self._store = store
        self._configured = tuple(targets)
        self._discover = not self._configured
        self._targets: tuple[Target, ...] = self._configured
        self._currency = currency
        self._currency_configured = currency is not None
        self._interval = interval
        self._max_products = max_products
        self._budget_seconds = budget_seconds
        self._now = now
        self._monotonic = monotonic
        self._scheduler = scheduler
        self._scheduled_interval: float | None = None
        self._stretched = False
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="poll")
        self._idle = threading.Event()
        self._idle.set()
        if self._configured:
            store.set_projects(t.project_id for t in self._configured)

    def start(self) -> None:
        """Schedule refreshes, the first one now."""
        if self._scheduler is None:
            self._scheduler = BackgroundScheduler(timezone=UTC)
        self._scheduler.start()
        self._schedule(self.effective_interval(), first_run=datetime.now(UTC))

    def stop(self, timeout: float = 4.0) -> bool:
        """Stop scheduling and wait up to `timeout` for a running refresh; True if idle."""
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return self._idle.wait(timeout)

    def effective_interval(self) -> float:
        """The poll interval, stretched when the request budget can't fit every project."""
        requests = len(self._targets) + (1 if self._needs_project_list() else 0)
        return max(self._interval, self._budget_seconds(requests))

    def refresh(self) -> bool:
        """Poll every project once; True when every poll succeeded."""
        self._idle.clear()
        started = self._monotonic()
        try:
            self._refresh_project_list()
            effective = self.effective_interval()
            self._note_stretch(effective)
            self._store.record_refresh(duration=None, effective_interval=effective)
            futures = {self._pool.submit(self.poll, t): t for t in self._targets}
            ok = True
            for future, target in futures.items():
                # Not concurrent.futures.wait(): it is never woken for futures that
                # shutdown(cancel_futures=True) cancels, and would hang a stopping poller.
                try:
                    exc = future.exception()
                except CancelledError:
                    ok = False
                    continue
                if exc is not None:
                    ok = False
                    log.error("poll crashed", exc_info=exc,
                              extra={"project_id": target.project_id})
                    self._store.record_failure(target.project_id, "invalid_response",
                                               duration=0.0)
                elif not future.result():
                    ok = False
            self._store.record_refresh(
                duration=self._monotonic() - started, effective_interval=effective
            )
            running = self._scheduler is not None and self._scheduler.running
            if running and self._scheduled_interval not in (None, effective):
                self._schedule(effective)
            return ok and bool(self._targets)
        finally:
            self._idle.set()

    def poll(self, target: Target) -> bool:
        """Poll one project and record the outcome; True on success."""
        started = self._monotonic()
        try:
            attributes = self._source.billing_usage(
                target.project_id, plan=target.plan, products=target.products
            )
            usage = build_usage(
                target.project_id, attributes, currency=self._currency or "",
                max_products=self._max_products, slug=target.slug, name=target.name,
            )
        except errors.Cancelled:
            return False
        except errors.LatitudeError as exc:
            duration = self._monotonic() - started
            self._store.record_failure(target.project_id, exc.reason, duration=duration)
            log.warning(
                "poll failed",
                extra={"project_id": target.project_id, "reason": exc.reason,
                       "error": str(exc), "hint": HINTS.get(exc.reason, "")},
            )
            return False
        self._store.record_success(
            usage, duration=self._monotonic() - started, now=self._now()
        )
        return True

    def _needs_project_list(self) -> bool:
        return self._discover or not self._currency

    def _refresh_project_list(self) -> None:
        if not self._needs_project_list():
            return
        try:
            projects = self._source.projects()
        except errors.Cancelled:
            raise
        except errors.LatitudeError as exc:
            self._store.record_discovery_failure(exc.reason)
            log.warning(
                "project discovery failed",
                extra={"reason": exc.reason, "error": str(exc), "hint": HINTS.get(exc.reason, ""),
                       "known_projects": len(self._targets)},
            )
            return
        if not self._currency_configured:
            self._currency = next((p.currency for p in projects if p.currency), self._currency)
        by_id = {p.id: p for p in projects if p.id}
        if self._discover:
            found = tuple(Target(pid) for pid in by_id)
            if {t.project_id for t in found} != {t.project_id for t in self._targets}:
                log.info("projects discovered", extra={"projects": len(found)})
            self._targets = found
        self._targets = tuple(
            replace(t, slug=_attr(by_id, t.project_id, "slug"),
                    name=_attr(by_id, t.project_id, "name"))
            for t in self._targets
        )
        self._store.set_projects(t.project_id for t in self._targets)

    def _note_stretch(self, effective: float) -> None:
        stretched = effective > self._interval
        if stretched and not self._stretched:
            log.warning(
                "request budget stretches the poll interval",
                extra={"projects": len(self._targets), "interval_seconds": self._interval,
                       "effective_interval_seconds": round(effective, 1)},
            )
        self._stretched = stretched

    def _schedule(self, interval: float, first_run: datetime | None = None) -> None:
        if self._scheduler is None:
            return
        trigger = IntervalTrigger(seconds=interval, timezone=UTC)
        if self._scheduler.get_job(JOB_ID) is None:
            self._scheduler.add_job(
                self._run_scheduled, trigger=trigger, id=JOB_ID, name="refresh",
                max_instances=1, coalesce=True, next_run_time=first_run,
                # 3.x defaults to 1 s and would silently drop a run that starts late.
                misfire_grace_time=max(1, int(interval)),
            )
        else:
            self._scheduler.reschedule_job(JOB_ID, trigger=trigger)
        self._scheduled_interval = interval

    def _run_scheduled(self) -> None:
        # One of the two broad catches: a bug in one refresh must not kill the schedule.
        try:
            self.refresh()
        except errors.Cancelled:
            pass
        except Exception:
            log.exception("refresh crashed")


def _attr(by_id: dict[str, ProjectResource], project_id: str, name: str) -> str | None:
    project = by_id.get(project_id)
    if project is None or project.attributes is None:
        return None
    value = getattr(project.attributes, name)
    return value if isinstance(value, str) else None
