"""Wiring: the flags and files turned into a checked `Setup`, and a `Setup` into the running
parts of an `App`. The only module that builds the others.

`configure` reads and checks everything before anything starts (a bad config is one
line and exit 2, never a half-started daemon), applying demo mode's overrides there, so
that `--check-config` reports what will really run. `build_app` builds one client,
request budget, poller and schedule per team, the store, the exposition and the
watchdog; `App.close` stops them in order.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC
from functools import partial
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics
from pydantic import SecretStr

from exporter.client import BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS, LatitudeClient
from exporter.collector import TeamCollector
from exporter.config import (
    API_REQUESTS_PER_MINUTE,
    DEFAULT_CONFIG_FILE,
    ApiSettings,
    ConfigError,
    Settings,
    TeamConfig,
    TokenSource,
    is_loopback,
    load_settings,
    resolve_teams,
)
from exporter.demo import DemoApi
from exporter.downloads import Downloads
from exporter.exposition import Exposition
from exporter.httpserver import HttpServer
from exporter.logs import Redactor
from exporter.poller import Poller, Target
from exporter.ratelimit import RequestBudget
from exporter.schedule import Schedule
from exporter.simulation import DEMO_TOKENS, default_accounts
from exporter.state import NoState, State
from exporter.state.sqlite import SqliteState
from exporter.store import SnapshotStore
from exporter.usage import Limits
from exporter.watchdog import Team as WatchedTeam
from exporter.watchdog import Watchdog
from exporter.webconfig import WebSettings, load_web_config

log = logging.getLogger("exporter")

#: In demo mode the simulated API is local and fast: refresh often so graphs move.
DEMO_INTERVAL_SECONDS = 10.0
#: The simulated API has no rate limit; a real key's budget would only slow start-up.
DEMO_REQUESTS_PER_MINUTE = 600.0
#: How long a stop waits for polls in flight before it leaves them to their deadlines.
SHUTDOWN_SECONDS = 4.0
#: Where the metrics are served: the port every exporter of this kind registers.
DEFAULT_LISTEN = ":10067"
#: The longest a stop waits for the state's last write.
STATE_CLOSE_SECONDS = 1.0
#: Paths the server answers itself: the metrics cannot live there.
RESERVED_PATHS = ("/", "/healthz", "/readyz")


@dataclass(frozen=True, slots=True)
class Flags:
    """The command line's flags (see `cli.build_parser`)."""

    config_file: Path | None = None
    listen: str = DEFAULT_LISTEN
    telemetry_path: str = "/metrics"
    web_config: Path | None = None
    log_level: str = "info"
    log_format: str = "logfmt"
    runtime_tuning: str = "on"
    demo: bool = False
    once: bool = False
    check_config: bool = False


@dataclass(slots=True)
class Setup:
    """Everything the flags and files say, validated, demo overrides applied."""

    settings: Settings
    teams: list[TeamConfig]
    listen: tuple[str, int]
    web: WebSettings
    #: The `api` section, its base URL the demo's in demo mode.
    api: ApiSettings
    #: Seconds between two refreshes: `poll.interval_seconds`, or the demo's.
    interval: float
    demo: DemoApi | None = None
    #: The state file, or None: off (`state.enabled: false`, `--once`, `--check-config`).
    state_path: Path | None = None


@dataclass(slots=True)
class App:
    """Everything `build_app` starts, so it can be stopped in order."""

    store: SnapshotStore
    exposition: Exposition
    pollers: list[Poller]
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


def parse_listen_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"web.listen-address: {value!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 (an exporter listens on all by default)
    return host, int(port)


def configure(flags: Flags, redactor: Redactor) -> Setup:
    """Read and check the config, the web config and every key source; in demo mode,
    start the simulated API and point at it. Raises `ConfigError` or `WebConfigError`."""
    explicit = flags.config_file is not None
    settings = load_settings(flags.config_file or DEFAULT_CONFIG_FILE, explicit=explicit)
    listen = parse_listen_address(flags.listen)
    if not flags.telemetry_path.startswith("/") or flags.telemetry_path in RESERVED_PATHS:
        raise ConfigError("web.telemetry-path: must start with / and not be /, /healthz or /readyz")
    web = load_web_config(flags.web_config) if flags.web_config else WebSettings()
    interval = settings.poll.interval_seconds
    demo = None
    if flags.demo:
        demo = DemoApi(default_accounts()).start()
        rate = (
            settings.api.requests_per_minute
            if "requests_per_minute" in settings.api.model_fields_set
            else DEMO_REQUESTS_PER_MINUTE
        )
        if "interval_seconds" not in settings.poll.model_fields_set:
            interval = DEMO_INTERVAL_SECONDS
        teams = [
            TeamConfig(account.team.slug, TokenSource(static=SecretStr(token)), rate, None, ())
            for account, token in zip(demo.accounts, DEMO_TOKENS, strict=True)
        ]
        api = settings.api.model_copy(update={"base_url": demo.url})
    else:
        teams = resolve_teams(settings)
        api = settings.api
        base_url = api.base_url
        for team in teams:
            redactor.watch(team.token.current)
            if (warning := team.token.permission_warning()) is not None:
                log.warning(
                    "token file is readable by every user",
                    extra={"path": str(warning.path), "mode": oct(warning.mode)},
                )
            if team.requests_per_minute > API_REQUESTS_PER_MINUTE:
                log.warning(
                    "requests_per_minute is above what the API allows a key: expect 429s, "
                    "which pause every request of the key",
                    extra={
                        "team": team.label,
                        "requests_per_minute": team.requests_per_minute,
                        "api_limit": API_REQUESTS_PER_MINUTE,
                    },
                )
        if base_url.startswith("http://") and not is_loopback(base_url):
            log.warning(
                "api.base_url is plain http: the API token travels unencrypted",
                extra={"base_url": base_url},
            )
    for key in web.unapplied:
        log.warning("web config key accepted but not applied", extra={"key": key})
    state_path = None
    if settings.state.enabled and not (flags.once or flags.check_config):
        state_path = settings.state.resolved_path(os.environ, demo=flags.demo)
    return Setup(settings, teams, listen, web, api, interval, demo, state_path)


def build_app(setup: Setup) -> App:
    """The running parts, built and wired but not started."""
    stop = threading.Event()
    disable_created_metrics()  # type: ignore[no-untyped-call]
    store = SnapshotStore()
    store.record_reload(successful=True, now=time.time())  # the files were loaded
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
        downloads=Downloads(state),
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
