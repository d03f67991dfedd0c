"""Command line: flags, logging, wiring the parts together, signals and exit codes.

The only module that knows every other one. Exit codes: 0 on a clean stop, 1 when
`--once` saw a failed poll, 2 for a bad flag or config (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import signal
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics
from pydantic import SecretStr

from exporter import __version__
from exporter.client import LatitudeClient
from exporter.collector import BillingCollector, ExporterCollector
from exporter.config import (
    DEFAULT_CONFIG_FILE,
    TOKEN_ENV,
    ConfigError,
    Settings,
    TokenSource,
    WebConfig,
    load_settings,
    load_web_config,
)
from exporter.demo import DemoApi
from exporter.poller import Poller, Target
from exporter.ratelimit import RequestBudget
from exporter.server import (
    BasicAuth,
    Exposition,
    HttpServer,
    MetricsApp,
    ProjectRow,
    tls_context,
)
from exporter.snapshot import SnapshotStore

log = logging.getLogger("exporter")

DEFAULT_LISTEN = ":10067"
#: In demo mode the simulated API is local and fast: refresh often so graphs move.
DEMO_INTERVAL_SECONDS = 10.0
#: The simulated API has no rate limit; a real key's budget would only slow start-up.
DEMO_REQUESTS_PER_MINUTE = 600.0
SHUTDOWN_SECONDS = 4.0
EXIT_CONFIG = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, as every other config error: usage text is one --help away.
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="latitudesh-exporter",
        description="Prometheus exporter for the billing usage of Latitude.sh projects.",
    )
    parser.add_argument("--config.file", dest="config_file", type=Path, default=None,
                        help=f"YAML config file (default: {DEFAULT_CONFIG_FILE} if present)")
    parser.add_argument("--web.listen-address", dest="listen", default=DEFAULT_LISTEN,
                        help=f"address to serve metrics on (default {DEFAULT_LISTEN})")
    parser.add_argument("--web.telemetry-path", dest="telemetry_path", default="/metrics",
                        help="path of the metrics (default /metrics)")
    parser.add_argument("--web.config.file", dest="web_config", type=Path, default=None,
                        help="exporter-toolkit web config: TLS and basic auth")
    parser.add_argument("--log.level", dest="log_level", default="info",
                        choices=("debug", "info", "warn", "error"))
    parser.add_argument("--log.format", dest="log_format", default="logfmt",
                        choices=("logfmt", "json"))
    parser.add_argument("--demo", action="store_true",
                        help="poll a built-in simulated Latitude.sh API; needs no token")
    parser.add_argument("--once", action="store_true",
                        help="poll every project once, print the metrics and exit")
    parser.add_argument("--check-config", dest="check_config", action="store_true",
                        help="validate the config and token, print a summary and exit")
    parser.add_argument("--version", action="version",
                        version=f"latitudesh-exporter {__version__} "
                                f"(python {platform.python_version()})")
    return parser


# --- logging -----------------------------------------------------------------

_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class Redactor:
    """Replaces every secret it has seen with `<redacted>` in the final log text."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._sources: list[Callable[[], SecretStr]] = []

    def watch(self, source: Callable[[], SecretStr]) -> None:
        self._sources.append(source)

    def __call__(self, text: str) -> str:
        for source in self._sources:
            with contextlib.suppress(ConfigError):
                self._secrets.add(source().get_secret_value())
        for secret in self._secrets:
            if secret and secret in text:
                text = text.replace(secret, "<redacted>")
        return text


class _StructuredFormatter(logging.Formatter):
    def __init__(self, redact: Callable[[str], str], as_json: bool) -> None:
        super().__init__()
        self._redact = redact
        self._json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
                  .replace("+00:00", "Z"),
            "level": record.levelname.lower().replace("warning", "warn"),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                fields[key] = value
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self._json:
            return self._redact(json.dumps(fields, default=str, ensure_ascii=False))
        return self._redact(" ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items()))


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text and not any(ch in text for ch in ' ="\\\n\t'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped.replace(chr(9), chr(92) + "t")}"'


def setup_logging(level: str, fmt: str, redact: Callable[[str], str],
                  stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_StructuredFormatter(redact, as_json=fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
               "error": logging.ERROR}[level]
    root.setLevel(numeric)
    # httpx logs every request and APScheduler 3.x every job run at INFO.
    for chatty in ("httpx", "httpcore", "apscheduler"):
        logging.getLogger(chatty).setLevel(numeric if level == "debug" else logging.WARNING)


# --- wiring ------------------------------------------------------------------


@dataclass(slots=True)
class App:
    """Everything `main` starts, so it can stop it in order."""

    settings: Settings
    store: SnapshotStore
    poller: Poller
    client: LatitudeClient
    exposition: Exposition
    stop: threading.Event
    demo: DemoApi | None = None
    server: HttpServer | None = None

    def close(self) -> bool:
        idle = self.poller.stop(timeout=SHUTDOWN_SECONDS)
        self.client.close()
        if self.server is not None:
            self.server.stop()
        if self.demo is not None:
            self.demo.stop()
        return idle


def parse_listen_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"web.listen-address: {value!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 (an exporter listens on all by default)
    return host, int(port)


def build_app(
    settings: Settings, token: Callable[[], SecretStr], *, demo: DemoApi | None = None
) -> App:
    stop = threading.Event()
    store = SnapshotStore()
    api = settings.api
    requests_per_minute = api.requests_per_minute
    if demo and "requests_per_minute" not in api.model_fields_set:
        requests_per_minute = DEMO_REQUESTS_PER_MINUTE
    budget = RequestBudget(requests_per_minute, stop=stop)
    client = LatitudeClient(
        token=token, budget=budget, base_url=demo.url if demo else api.base_url,
        timeout=api.timeout_seconds, max_retries=api.max_retries,
        max_retry_wait=api.max_retry_wait_seconds, max_response_bytes=api.max_response_bytes,
        on_request=store.record_request, stop=stop,
        max_connections=settings.poll.concurrency,
    )
    targets = () if demo else tuple(
        Target(p.id, plan=p.plan, products=tuple(p.products)) for p in settings.projects
    )
    interval = settings.poll.interval_seconds
    if demo and "interval_seconds" not in settings.poll.model_fields_set:
        interval = DEMO_INTERVAL_SECONDS
    poller = Poller(
        client, store, targets=targets, currency=settings.currency, interval=interval,
        concurrency=settings.poll.concurrency, max_products=settings.max_products_per_project,
        budget_seconds=budget.seconds_for,
    )
    exposition = build_exposition(store)
    return App(settings, store, poller, client, exposition, stop, demo=demo)


def build_exposition(store: SnapshotStore) -> Exposition:
    """The three parts of /metrics, each on its own registry and cache key."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    billing = CollectorRegistry(auto_describe=False)
    billing.register(BillingCollector(store.view))
    health = CollectorRegistry(auto_describe=False)
    health.register(ExporterCollector(store.view))
    process = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=process)
    return Exposition([
        (billing, lambda: store.view().data_version),
        (health, lambda: store.view().version),
        (process, None),  # CPU and memory change all the time
    ])


def project_rows(store: SnapshotStore) -> Callable[[], list[ProjectRow]]:
    def rows() -> list[ProjectRow]:
        return [
            ProjectRow(p.project_id, p.usage.project_slug if p.usage else "", p.up, p.polled,
                       p.last_success, p.last_error)
            for p in store.view().projects
        ]
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    redactor = Redactor()
    setup_logging(args.log_level, args.log_format, redactor)
    try:
        settings, token, listen = _configure(args, redactor)
    except ConfigError as exc:
        print(f"latitudesh-exporter: config error: {redactor(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(_summary(args, settings, token))
        return 0

    if args.once:
        demo = DemoApi().start() if args.demo else None
        return _run_once(build_app(settings, token.get, demo=demo))
    try:
        web = load_web_config(args.web_config) if args.web_config else WebConfig()
        ssl_context = _ssl_context(web)
    except ConfigError as exc:
        print(f"latitudesh-exporter: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    demo = DemoApi().start() if args.demo else None
    app = build_app(settings, token.get, demo=demo)
    return _serve(app, listen, args, web, ssl_context)


def _ssl_context(web: WebConfig) -> ssl.SSLContext | None:
    tls = web.tls_server_config
    if tls is None:
        return None
    try:
        return tls_context(
            str(tls.cert_file), str(tls.key_file),
            client_ca_file=str(tls.client_ca_file) if tls.client_ca_file else None,
            client_auth_type=tls.client_auth_type, min_version=tls.min_version,
            max_version=tls.max_version,
        )
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"web.config.file: tls_server_config: {exc}") from None


def _configure(
    args: argparse.Namespace, redactor: Redactor
) -> tuple[Settings, TokenSource, tuple[str, int]]:
    explicit = args.config_file is not None
    settings = load_settings(args.config_file or DEFAULT_CONFIG_FILE, explicit=explicit)
    listen = parse_listen_address(args.listen)
    if not args.telemetry_path.startswith("/") or args.telemetry_path in ("/", "/healthz",
                                                                         "/readyz"):
        raise ConfigError("web.telemetry-path: must start with / and not be /, /healthz or /readyz")
    if args.demo:
        token = TokenSource(static=SecretStr("demo-token"))
    else:
        token = TokenSource.from_environment(settings)
        redactor.watch(token.get)
        if (warning := token.permission_warning()) is not None:
            log.warning("token file is readable by every user",
                        extra={"path": str(warning.path), "mode": oct(warning.mode)})
    return settings, token, listen


def _summary(args: argparse.Namespace, settings: Settings, token: TokenSource) -> str:
    source = ("demo (built-in simulated API)" if args.demo else
              f"api.token_file {token.path}" if token.path else f"{TOKEN_ENV} environment variable")
    projects = (f"{len(settings.projects)} configured" if settings.projects
                else "every project of the team (discovered via /projects)")
    return "\n".join([
        "config OK",
        f"  config file:       {args.config_file or (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else 'none')}",  # noqa: E501
        f"  api.base_url:      {settings.api.base_url}",
        f"  token:             set, from {source}",
        f"  projects:          {projects}",
        f"  poll:              every {settings.poll.interval_seconds:g}s, "
        f"{settings.poll.concurrency} at once",
        f"  request budget:    {settings.api.requests_per_minute:g} requests/minute",
        f"  currency:          {settings.currency or 'the team currency'}",
        f"  listen address:    {args.listen}{args.telemetry_path}",
    ])


def _run_once(app: App) -> int:
    ok = app.poller.refresh()
    chunks, _ = app.exposition.render("", compress=False)
    sys.stdout.write(b"".join(chunks).decode())
    sys.stdout.flush()
    app.close()
    return 0 if ok else 1


def _serve(app: App, listen: tuple[str, int], args: argparse.Namespace, web: WebConfig,
           ssl_context: ssl.SSLContext | None) -> int:
    host, port = listen
    users = {name: hashed.get_secret_value().encode()
             for name, hashed in web.basic_auth_users.items()}
    wsgi = MetricsApp(app.exposition, ready=lambda: app.store.view().ready,
                      projects=project_rows(app.store), telemetry_path=args.telemetry_path,
                      auth=BasicAuth(users) if users else None,
                      headers=list(web.http_server_config.headers.items()))
    try:
        app.server = HttpServer(wsgi, host, port, ssl_context=ssl_context)
    except OSError as exc:
        log.error("cannot listen", extra={"address": args.listen, "error": exc.strerror})
        app.close()
        return EXIT_CONFIG

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        app.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app.server.start()
    log.info("listening", extra={"address": f"{host}:{app.server.port}",
                                 "telemetry_path": args.telemetry_path, "version": __version__,
                                 "tls": ssl_context is not None, "basic_auth": bool(users),
                                 "demo": bool(app.demo)})
    if app.demo is not None:
        log.info("demo mode: polling the built-in simulated Latitude.sh API",
                 extra={"api": app.demo.url})
    app.poller.start()
    app.stop.wait()
    idle = app.close()
    log.info("stopped", extra={"clean": idle})
    if not idle:
        # A request stuck in a socket read cannot be interrupted; don't let it hold
        # the exit past the orchestrator's grace period.
        logging.shutdown()
        os._exit(0)
    return 0
