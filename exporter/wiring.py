"""Wiring: a checked `Setup` (see `startup`) into the running parts of an `App`. The only
module that builds the others.

`build_app` builds one client, request budget, poller and schedule per team, the store,
the exposition and the watchdog; `App.close` stops them in order.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC
from functools import partial

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics

from exporter.budgets import CHECK_SECONDS, UnknownScopes
from exporter.client import BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS, LatitudeClient
from exporter.collector import TeamCollector
from exporter.config import (
    ApiSettings,
)
from exporter.demo import DemoApi
from exporter.downloads import Downloads
from exporter.exposition import Exposition
from exporter.httpserver import HttpServer
from exporter.poller import Poller, Target
from exporter.ratelimit import RequestBudget
from exporter.schedule import Schedule
from exporter.startup import Setup
from exporter.state import NoState, State
from exporter.state.sqlite import SqliteState
from exporter.store import SnapshotStore
from exporter.usage import Limits
from exporter.watchdog import Team as WatchedTeam
from exporter.watchdog import Watchdog
from exporter.webconfig import WebSettings

log = logging.getLogger("exporter")

#: How long a stop waits for polls in flight before it leaves them to their deadlines.
SHUTDOWN_SECONDS = 4.0
#: The longest a stop waits for the state's last write.
STATE_CLOSE_SECONDS = 1.0


@dataclass(slots=True)
class App:
    """Everything `build_app` starts, so it can be stopped in order."""

    store: SnapshotStore
    exposition: Exposition
    pollers: list[Poller]
    #: Each team's refreshes, and the check for budgets on nothing.
    schedules: list[Schedule]
    watchdog: Watchdog
    clients: list[LatitudeClient]
    scheduler: BackgroundScheduler
    stop: threading.Event
    demo: DemoApi | None = None
    server: HttpServer | None = None
    #: The web config in use (replaced by each successful reload).
    web: WebSettings = field(default_factory=WebSettings)
    state: State = field(default_factory=NoState)
    #: The finance files, read from `state`.
    downloads: Downloads = field(default_factory=lambda: Downloads(NoState()))

    def close(self) -> bool:
        """Stop everything; True when no poll was still running at the end."""
        self.stop.set()
        self.watchdog.stop()
        for schedule in self.schedules:
            schedule.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        for poller in self.pollers:  # every poller told to stop first, then waited for
            poller.stop(timeout=0)
        stopped = [
            poller.stop(timeout=max(deadline - time.monotonic(), 0)) for poller in self.pollers
        ]
        idle = all(stopped)
        # What the polls landed is written before the end (bounded: the exit deadline).
        self.state.close(timeout=max(min(deadline - time.monotonic(), STATE_CLOSE_SECONDS), 0.1))
        for client in self.clients:
            client.close()
        if self.server is not None:
            self.server.stop()
        if self.demo is not None:
            self.demo.stop()
        return idle


def build_app(setup: Setup) -> App:
    """The running parts, built and wired but not started."""
    stop = threading.Event()
    disable_created_metrics()  # type: ignore[no-untyped-call]
    store = SnapshotStore()
    store.record_reload(successful=True, now=time.time())  # the files were loaded
    store.set_budgets(setup.budgets)
    tail = CollectorRegistry(auto_describe=False)
    tail.register(TeamCollector(store.view))
    ProcessCollector(registry=tail)
    exposition = Exposition(tail)
    store.subscribe(exposition)
    settings = setup.settings
    api = setup.api
    limits = Limits(
        products=settings.max_products_per_project,
        servers=settings.max_servers_per_project,
        tags_per_server=settings.max_tags_per_server,
    )
    state: State = NoState()
    if setup.state_path is not None:
        state = SqliteState(
            setup.state_path,
            on_status=store.record_state,
            max_body_bytes=api.max_response_bytes,
        )
    pollers, schedules, clients, watched = [], [], [], []
    for rank, team in enumerate(setup.teams):
        budget = RequestBudget(team.requests_per_minute, stop=stop)
        # The team's key in the store never changes (discovery may rename its label),
        # so its requests are counted under it from the first one.
        origin = "the demo" if setup.demo else team.token.origin
        store.add_team(team.label, rank, key_origin=origin)
        client = LatitudeClient(
            token=team.token.get,
            budget=budget,
            api=api,
            on_request=partial(store.record_request, team.label),
            stop=stop,
            max_connections=settings.poll.concurrency,
        )
        poller = Poller(
            client,
            store,
            team=team.name,
            rank=rank,
            targets=[Target(p.id, plan=p.plan, products=tuple(p.products)) for p in team.projects],
            currency=team.currency,
            interval=setup.interval,
            concurrency=settings.poll.concurrency,
            limits=limits,
            budget_seconds=budget.seconds_for,
            budget_paused=budget.paused_between,
            requests_made=budget.grants,
            key_origin=origin,
            state=state,
            grace=api.timeout_seconds,
        )
        schedule = Schedule(team.label, poller.refresh, poller.effective_interval)
        pollers.append(poller)
        schedules.append(schedule)
        clients.append(client)
        watched.append(WatchedTeam(poller, schedule))
    watchdog = Watchdog(watched, store, margin=stall_margin(api))
    # Budgets on nothing are told once the teams were polled: on the monotonic clock, as
    # the refreshes (a step of the wall clock must not stall or burst it).
    unknown = UnknownScopes(store.view, setup.budgets_warned)
    schedules.append(Schedule("budgets", unknown.check, lambda: CHECK_SECONDS))
    answers = state.load()
    curves = state.load_points()
    served = sum(poller.restore(answers, curves) for poller in pollers)
    if setup.state_path is not None:
        log.info("warm start", extra={"state": str(setup.state_path), "projects": served})
    return App(
        store,
        exposition,
        pollers,
        schedules,
        watchdog,
        clients,
        BackgroundScheduler(timezone=UTC),
        stop,
        demo=setup.demo,
        web=setup.web,
        state=state,
        downloads=Downloads(state, on_skipped=store.record_download_skipped),
    )


def stall_margin(api: ApiSettings) -> float:
    """The longest one poll may legitimately take, beyond the span the budget allows
    its refresh, before it counts as stalled: every attempt at its timeout, and the
    backoff wait before each retry (at most `BACKOFF_CAP_SECONDS` each). A 429's wait is
    not in it: it pauses the budget, which the poller allows for (`budget_paused`)."""
    waits = sum(
        min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0**attempt)
        for attempt in range(api.max_retries)
    )
    return api.timeout_seconds * (1 + api.max_retries) + waits
