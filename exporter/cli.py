"""Command line: flags, wiring the parts together, signals and exit codes.

The only module that knows every other one. Exit codes: 0 on a clean stop, 1 when
`--once` saw a failed poll, 2 for a bad flag, config or rejected key (one line on
stderr, no traceback), 130 when `--once` is interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import NoReturn

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics
from pydantic import SecretStr

from exporter import __version__, errors, runtime
from exporter.client import LatitudeClient
from exporter.collector import TeamCollector
from exporter.config import (
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
from exporter.demo import DEMO_TOKENS, DemoApi, default_accounts
from exporter.exposition import Exposition
from exporter.httpserver import HttpServer
from exporter.logs import Redactor, setup_logging
from exporter.poller import Poller, Target
from exporter.ratelimit import RequestBudget
from exporter.schedule import Schedule
from exporter.signals import Inbox
from exporter.store import SnapshotStore
from exporter.usage import Limits
from exporter.watchdog import Team as WatchedTeam
from exporter.watchdog import Watchdog
from exporter.web import WebApp
from exporter.webconfig import WebConfigError, WebSettings, load_web_config

log = logging.getLogger("exporter")

DEFAULT_LISTEN = ":10067"
#: In demo mode the simulated API is local and fast: refresh often so graphs move.
DEMO_INTERVAL_SECONDS = 10.0
#: The simulated API has no rate limit; a real key's budget would only slow start-up.
DEMO_REQUESTS_PER_MINUTE = 600.0
SHUTDOWN_SECONDS = 4.0
#: From SIGTERM to the process's end, whatever is stuck: under the README's 5 s.
EXIT_DEADLINE_SECONDS = 4.5
EXIT_FAILED_POLL = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, as every other config error: usage text is one --help away.
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="latitudesh-exporter",
        description="Prometheus exporter for the billing usage of Latitude.sh projects.",
    )
    parser.add_argument(
        "--config.file",
        dest="config_file",
        type=Path,
        default=None,
        help=f"YAML config file (default: {DEFAULT_CONFIG_FILE} if present)",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen",
        default=DEFAULT_LISTEN,
        help=f"address to serve metrics on (default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        help="path of the metrics (default /metrics)",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config",
        type=Path,
        default=None,
        help="exporter-toolkit web config: TLS and basic auth",
    )
    parser.add_argument(
        "--log.level", dest="log_level", default="info", choices=("debug", "info", "warn", "error")
    )
    parser.add_argument(
        "--log.format", dest="log_format", default="logfmt", choices=("logfmt", "json")
    )
    parser.add_argument(
        "--runtime.tuning",
        dest="runtime_tuning",
        default="on",
        choices=("on", "off"),
        help="tune CPython's garbage collector, switch interval and malloc for the daemon",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="poll a built-in simulated Latitude.sh API; needs no token",
    )
    parser.add_argument(
        "--once", action="store_true", help="poll every project once, print the metrics and exit"
    )
    parser.add_argument(
        "--check-config",
        dest="check_config",
        action="store_true",
        help="validate the config and web config, check each key with one "
        "request, print a summary and exit",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"latitudesh-exporter {__version__} (python {platform.python_version()})",
    )
    return parser


@dataclass(slots=True)
class Setup:
    """Everything the flags and files say, validated."""

    settings: Settings
    teams: list[TeamConfig]
    listen: tuple[str, int]
    web: WebSettings
    #: The `api` section, its base URL the demo's in demo mode.
    api: ApiSettings
    demo: DemoApi | None = None


@dataclass(slots=True)
class App:
    """Everything `main` starts, so it can stop it in order."""

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

    def close(self) -> bool:
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


def _recorder(box: list[Poller]) -> Callable[[str, str], None]:
    """Counts each request on the team's poller, built after the client it counts for."""

    def record(endpoint: str, code: str) -> None:
        box[0].record_request(endpoint, code)

    return record


def build_app(setup: Setup) -> App:
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
    interval = settings.poll.interval_seconds
    if setup.demo and "interval_seconds" not in settings.poll.model_fields_set:
        interval = DEMO_INTERVAL_SECONDS
    pollers, schedules, clients, watched = [], [], [], []
    for rank, team in enumerate(setup.teams):
        budget = RequestBudget(team.requests_per_minute, stop=stop)
        poller_box: list[Poller] = []
        client = LatitudeClient(
            token=team.token.get,
            budget=budget,
            api=api,
            on_request=_recorder(poller_box),
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
            interval=interval,
            concurrency=settings.poll.concurrency,
            limits=limits,
            budget_seconds=budget.seconds_for,
            grace=api.timeout_seconds,
        )
        poller_box.append(poller)
        schedule = Schedule(team.label, poller.refresh, poller.effective_interval)
        pollers.append(poller)
        schedules.append(schedule)
        clients.append(client)
        watched.append(WatchedTeam(poller, schedule))
    watchdog = Watchdog(watched, store, margin=stall_margin(api))
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
    )


def stall_margin(api: ApiSettings) -> float:
    """What one poll may take beyond its interval before it counts as stalled: every
    attempt at its timeout."""
    return api.timeout_seconds * (1 + api.max_retries)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    redactor = Redactor()
    setup_logging(args.log_level, args.log_format, redactor)
    try:
        setup = _configure(args, redactor)
    except (ConfigError, WebConfigError) as exc:
        print(f"latitudesh-exporter: config error: {redactor(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        try:
            return _check(args, setup, redactor)
        finally:
            if setup.demo is not None:
                setup.demo.stop()
    app = build_app(setup)
    if args.once:
        return _run_once(app)
    return _serve(app, setup, args, redactor)


def _configure(args: argparse.Namespace, redactor: Redactor) -> Setup:
    explicit = args.config_file is not None
    settings = load_settings(args.config_file or DEFAULT_CONFIG_FILE, explicit=explicit)
    listen = parse_listen_address(args.listen)
    if not args.telemetry_path.startswith("/") or args.telemetry_path in (
        "/",
        "/healthz",
        "/readyz",
    ):
        raise ConfigError("web.telemetry-path: must start with / and not be /, /healthz or /readyz")
    web = load_web_config(args.web_config) if args.web_config else WebSettings()
    demo = None
    if args.demo:
        demo = DemoApi(default_accounts()).start()
        rate = (
            settings.api.requests_per_minute
            if "requests_per_minute" in settings.api.model_fields_set
            else DEMO_REQUESTS_PER_MINUTE
        )
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
        if base_url.startswith("http://") and not is_loopback(base_url):
            log.warning(
                "api.base_url is plain http: the API token travels unencrypted",
                extra={"base_url": base_url},
            )
    for key in web.unapplied:
        log.warning("web config key accepted but not applied", extra={"key": key})
    return Setup(settings, teams, listen, web, api, demo)


def _check(args: argparse.Namespace, setup: Setup, redactor: Redactor) -> int:
    """`--check-config`: the config summary, then one request per key."""
    settings = setup.settings
    web = setup.web
    print("config OK")
    default = DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else "none"
    print(f"  config file:       {args.config_file or default}")
    print(
        f"  web config:        {web.path or 'none'} (tls: {web.ssl_context is not None}, "
        f"basic auth users: {len(web.users)})"
    )
    print(f"  api.base_url:      {setup.api.base_url}")
    print(
        f"  poll:              every {settings.poll.interval_seconds:g}s, "
        f"{settings.poll.concurrency} at once per team"
    )
    print(f"  listen address:    {args.listen}{args.telemetry_path}")
    rejected = unchecked = False
    for team in setup.teams:
        source = (
            f"file {team.token.path}"
            if team.token.path
            else "demo"
            if setup.demo
            else "environment"
        )
        projects = f"{len(team.projects)} configured" if team.projects else "discovered"
        with LatitudeClient(
            token=team.token.get,
            budget=RequestBudget(team.requests_per_minute),
            api=setup.api,
        ) as client:
            try:
                found = client.check_key()
            except errors.LatitudeError as exc:
                refused = isinstance(exc, errors.Unauthorized | errors.Forbidden)
                rejected, unchecked = rejected or refused, unchecked or not refused
                verdict = _verdict(exc, redactor)
            else:
                verdict = (
                    f"accepted; sees {'at least one project' if found.sees_projects else 'no project'}"  # noqa: E501
                    f"; currency {team.currency or found.currency or 'unknown'}"
                    + (f"; team {found.team}" if found.team else "")
                )
        print(
            f"  team {team.label}: key from {source}, {team.requests_per_minute:g} "
            f"requests/minute, projects {projects}: {verdict}"
        )
    # A refused key is a bad config (2); one the API could not answer for is not (1).
    return EXIT_CONFIG if rejected else 1 if unchecked else 0


def _verdict(exc: errors.LatitudeError, redactor: Redactor) -> str:
    """What one failed check says: a key the API refused, or an answer that says
    nothing about the key (rate limited, timed out, unreachable)."""
    detail = redactor(str(exc))
    if isinstance(exc, errors.Unauthorized | errors.Forbidden):
        return f"REJECTED ({exc.reason}: {detail})"
    if isinstance(exc, errors.RateLimited):
        wait = f"; the API asks to wait {exc.retry_after:g}s" if exc.retry_after else ""
        return f"NOT CHECKED: rate limited{wait} ({detail}); try again later"
    if isinstance(exc, errors.Timeout):
        return f"NOT CHECKED: timed out ({detail})"
    if isinstance(exc, errors.NetworkError):
        return f"NOT CHECKED: the API is unreachable ({detail})"
    return f"NOT CHECKED: {exc.reason} ({detail})"


def _run_once(app: App) -> int:
    """Poll every team at once; print the exposition. Ctrl-C stops at once (130).

    SIGINT goes to an `Inbox` installed before any poll starts: a
    KeyboardInterrupt could land anywhere in the main thread (starting a thread, say),
    outside any `try`, and the exit would then wait for the polls in flight."""
    results: list[bool] = []
    done = threading.Event()
    inbox = Inbox((signal.SIGINT,))

    def run() -> None:
        outcomes: list[bool] = []
        threads = [
            threading.Thread(target=lambda p=p: outcomes.append(p.refresh()), daemon=True)
            for p in app.pollers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results.extend(outcomes)
        done.set()
        inbox.wake()

    threading.Thread(target=run, name="once", daemon=True).start()
    while not done.is_set():
        if inbox.wait():
            log.warning("interrupted")
            _exit_now(EXIT_INTERRUPTED)
    body = app.exposition.render()
    for chunk in body.chunks:
        sys.stdout.buffer.write(chunk)
    sys.stdout.flush()
    app.close()
    return 0 if results and all(results) else EXIT_FAILED_POLL


def _exit_now(code: int) -> NoReturn:
    """Exit without waiting for requests in flight (worker threads are joined at exit)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serve(app: App, setup: Setup, args: argparse.Namespace, redactor: Redactor) -> int:
    if args.runtime_tuning == "on":
        runtime.tune(app.scheduler)
    runtime.raise_file_limit()
    host, port = setup.listen
    web_app = WebApp(
        app.exposition, app.store.view, telemetry_path=args.telemetry_path, web=setup.web
    )
    try:
        app.server = HttpServer(web_app, host, port, web=setup.web)
    except OSError as exc:
        log.error("cannot listen", extra={"address": args.listen, "error": exc.strerror})
        app.close()
        return EXIT_CONFIG

    reloader = Reloader(lambda: _reload(app, web_app, args), app.stop)
    inbox = Inbox((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    app.server.start()
    log.info(
        "listening",
        extra={
            "address": f"{host}:{app.server.port}",
            "telemetry_path": args.telemetry_path,
            "version": __version__,
            "tls": setup.web.ssl_context is not None,
            "basic_auth": bool(setup.web.users),
            "demo": bool(app.demo),
            "teams": len(app.pollers),
        },
    )
    if app.demo is not None:
        log.info(
            "demo mode: polling the built-in simulated Latitude.sh API", extra={"api": app.demo.url}
        )
    reloader.start()
    for schedule in app.schedules:
        schedule.start()
    app.watchdog.start()
    app.scheduler.start()
    while not app.stop.is_set():
        for received in inbox.wait():
            if received == signal.SIGHUP:
                reloader.request()
            elif not app.stop.is_set():
                _exit_by(EXIT_DEADLINE_SECONDS)
                log.info("shutting down", extra={"signal": received.name})
                app.stop.set()
    reloader.request()  # wakes the reload thread, which sees the stop and ends
    idle = app.close()
    log.info("stopped", extra={"clean": idle})
    _ignore_signals()
    if not idle:
        # A request stuck in a socket read ends at its deadline; don't let it hold
        # the exit past the orchestrator's grace period.
        _exit_now(0)
    return 0


#: Signals whose default action ends the process.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _ignore_signals() -> None:
    """A clean stop exits 0 whatever arrives now. Python's finalization puts back the
    default action of every signal that has a Python handler (which for SIGHUP, SIGTERM
    and SIGINT ends the process: a SIGHUP during shutdown made a clean stop exit 129),
    but leaves ignored signals ignored."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _exit_by(seconds: float) -> None:
    """End the process `seconds` from now, whatever holds the shutdown: a thread of its
    own that takes no lock (a log call could wait on a stuck stderr, a read on a hung
    mount). The README promises an exit within 5 s of SIGTERM."""

    def end() -> None:
        time.sleep(seconds)
        os._exit(0)

    threading.Thread(target=end, name="exit-deadline", daemon=True).start()


class Reloader:
    """SIGHUP's work, one reload at a time in one thread.

    A request that arrives while a reload runs asks for one more after it; any number
    of them ask for just that one. So the newest file always wins (an older, slower
    reload can never finish after a newer one), and a storm of signals costs two
    reloads, not a thread each. Requests are counted under a lock, so none can be
    lost between the thread waking and starting its work; a reload that raises is
    logged and the thread goes on.
    """

    def __init__(self, work: Callable[[], None], stop: threading.Event) -> None:
        self._work = work
        self._stop = stop
        self._asked = 0
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="reload", daemon=True)
        #: Reloads done, for tests.
        self.done = 0

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        """Ask for a reload (from the main thread, never from a signal handler)."""
        with self._changed:
            self._asked += 1
            self._changed.notify()

    @property
    def pending(self) -> bool:
        """Whether a reload was asked for and has not started yet."""
        with self._changed:
            return self._asked > self._served

    _served = 0

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._asked > self._served or self._stop.is_set())
                if self._stop.is_set():
                    return
                self._served = self._asked  # every request so far is served by this run
            try:
                self._work()
            except Exception:  # a reload must never end reloading
                log.exception("reload failed")
            self.done += 1


def _reload(app: App, web_app: WebApp, args: argparse.Namespace) -> None:
    """SIGHUP: reload the web config, keeping all data (token files are read again at
    every request). A file that cannot be loaded is refused: the settings in use stay,
    one error line says why, and `latitudesh_config_last_reload_successful` turns 0. A
    valid file that drops TLS or every user is applied, with a warning naming what it
    removes: protection is never lowered silently."""
    if args.web_config is None:
        app.store.record_reload(successful=True, now=time.time())
        log.info("reloaded", extra={"web_config": False})
        return
    try:
        web = load_web_config(args.web_config)
    except WebConfigError as exc:
        app.store.record_reload(successful=False, now=time.time())
        log.error(
            "web config refused: the settings in use are kept",
            extra={
                "error": str(exc),
                "hint": "replace the file atomically (write it elsewhere, then rename it "
                "into place), then send SIGHUP again",
            },
        )
        return
    removed = protection_removed(app.web, web)
    if removed:
        log.warning(
            "web config reload removes protection",
            extra={"removed": ", ".join(removed), "path": str(args.web_config)},
        )
    web_app.configure(web)
    if app.server is not None:
        app.server.reload(web)
    app.web = web
    app.store.record_reload(successful=True, now=time.time())
    log.info(
        "reloaded",
        extra={
            "web_config": True,
            "tls": web.ssl_context is not None,
            "basic_auth_users": len(web.users),
        },
    )


def protection_removed(before: WebSettings, after: WebSettings) -> list[str]:
    """What a new web config takes away of the old one's protection, in words."""
    removed = []
    if before.ssl_context is not None and after.ssl_context is None:
        removed.append("TLS")
    if before.users and not after.users:
        removed.append(f"basic auth (every user: {', '.join(sorted(before.users))})")
    return removed
