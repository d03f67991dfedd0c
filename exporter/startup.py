"""Start-up: the flags and files turned into a checked `Setup`, before anything runs.

`configure` reads and checks everything before anything starts (a bad config is one
line and exit 2, never a half-started daemon), applying demo mode's overrides there, so
that `--check-config` reports what will really run. Apart from `wiring` (which builds
the running parts from a `Setup`) so that a config error is told before the libraries
of the running parts load (see `cli`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from exporter.budgets import from_settings
from exporter.config import (
    API_REQUESTS_PER_MINUTE,
    ApiSettings,
    BudgetSettings,
    ConfigError,
    Settings,
    TeamConfig,
    TokenSource,
    is_loopback,
    load_settings,
    resolve_teams,
)
from exporter.demo import DemoApi
from exporter.flags import DEFAULT_CONFIG_FILE, Flags
from exporter.logs import Redactor
from exporter.models import PROJECT_ID_PREFIX
from exporter.simulation import DEMO_TOKENS, default_accounts, demo_budgets
from exporter.snapshot import Budget
from exporter.webconfig import WebSettings, load_web_config

log = logging.getLogger("exporter")

#: In demo mode the simulated API is local and fast: refresh often so graphs move.
DEMO_INTERVAL_SECONDS = 10.0
#: The simulated API has no rate limit; a real key's budget would only slow start-up.
DEMO_REQUESTS_PER_MINUTE = 600.0
#: Paths the server answers itself: the metrics cannot live there.
RESERVED_PATHS = ("/", "/healthz", "/readyz")


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
    #: The budgets in force: the config's (in demo mode, the demo's when it has none).
    budgets: tuple[Budget, ...] = ()
    #: Budgets already warned about at start (a project the team's config does not list).
    budgets_warned: frozenset[Budget] = frozenset()


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
        if not settings.budgets:
            made = [BudgetSettings(**budget) for budget in demo_budgets(demo.accounts)]
            settings = settings.model_copy(update={"budgets": made})
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
    budgets = from_settings(settings)
    warned = _warn_of_unknown_projects(budgets, teams)
    return Setup(settings, teams, listen, web, api, interval, demo, state_path, budgets, warned)


def _warn_of_unknown_projects(
    budgets: tuple[Budget, ...], teams: list[TeamConfig]
) -> frozenset[Budget]:
    """A budget naming by its id a project its team does not list is told at once when
    the team lists its projects. One naming a project by its slug (unknown until the
    first poll), a discovered project or a tag is told once polled
    (`budgets.UnknownScopes`). The budgets told of."""
    listed = {team.label: {p.id for p in team.projects} for team in teams if team.projects}
    warned = set()
    for budget in budgets:
        ids = listed.get(budget.team)
        if (
            budget.scope == "project"
            and budget.target.startswith(PROJECT_ID_PREFIX)
            and ids is not None
            and budget.target not in ids
        ):
            warned.add(budget)
            log.warning(
                "a budget names a project its team does not list: nothing to measure",
                extra={"team": budget.team, "project": budget.target},
            )
    return frozenset(warned)
