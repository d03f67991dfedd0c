"""`--check-config`: a summary of what the config says, then what each key can do.

For a CI step or an init container, it checks what the exporter will really use, with
one request per endpoint and no retry: the billing of one configured project when
projects are listed, and `/projects` only when the team needs discovery (no projects
listed, or no currency). A key the API refuses on an endpoint the exporter needs is a
rejection (exit 2); an endpoint it does not need is never asked. Exit 0 when everything
holds, 2 when the config is bad or a key is refused, 1 when a key could not be checked
(rate limited, timed out, unreachable: nothing is wrong with the config itself). The
verdict comes last, so that no "OK" ever stands above a rejection. Never prints a secret.
"""

from __future__ import annotations

from collections.abc import Callable

from exporter import errors, exitcodes
from exporter.client import LatitudeClient
from exporter.config import TeamConfig
from exporter.discovery import discovery_needed
from exporter.flags import DEFAULT_CONFIG_FILE, Flags
from exporter.logs import Redactor
from exporter.models import PROJECTS_ENDPOINT, USAGE_ENDPOINT
from exporter.ratelimit import RequestBudget
from exporter.startup import Setup


def report(flags: Flags, setup: Setup, redactor: Redactor) -> int:
    """Print the summary and each key's checks, then the verdict; the exit code."""
    settings = setup.settings
    web = setup.web
    print("config: valid")
    default = DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else "none"
    print(f"  config file:       {flags.config_file or default}")
    print(
        f"  web config:        {web.path or 'none'} (tls: {web.ssl_context is not None}, "
        f"basic auth users: {len(web.users)})"
    )
    print(f"  api.base_url:      {setup.api.base_url}")
    print(
        f"  poll:              every {setup.interval:g}s, "
        f"{settings.poll.concurrency} at once per team"
    )
    print(f"  listen address:    {flags.listen}{flags.telemetry_path}")
    rejected: list[str] = []
    unchecked: list[str] = []
    for team in setup.teams:
        source = "the demo" if setup.demo else team.token.origin
        projects = f"{len(team.projects)} configured" if team.projects else "discovered"
        currency = team.currency or "from the API"
        print(
            f"  team {team.label}: key from {source}, {team.requests_per_minute:g} "
            f"requests/minute, projects {projects}, currency {currency}"
        )
        with LatitudeClient(
            token=team.token.get,
            budget=RequestBudget(team.requests_per_minute),
            api=setup.api,
        ) as client:
            for endpoint, check in _checks(team, client):
                try:
                    said = check()
                except errors.LatitudeError as exc:
                    refused = isinstance(exc, errors.Unauthorized | errors.Forbidden)
                    (rejected if refused else unchecked).append(team.label)
                    said = _verdict(exc, redactor)
                print(f"    {endpoint}: {said}")
    if rejected:
        print(f"result: REJECTED: the key of team {', '.join(dict.fromkeys(rejected))}")
        return exitcodes.CONFIG
    if unchecked:
        print(f"result: NOT CHECKED: team {', '.join(dict.fromkeys(unchecked))}; try again")
        return exitcodes.FAILED_POLL
    print("result: OK")
    return exitcodes.OK


def _checks(team: TeamConfig, client: LatitudeClient) -> list[tuple[str, Callable[[], str]]]:
    """(endpoint, check) for what the exporter will use with this key."""
    checks: list[tuple[str, Callable[[], str]]] = []
    if team.projects:
        first = team.projects[0]

        def usage() -> str:
            client.billing_usage(first.id, plan=first.plan, retries=0)
            return f"accepted; reads the billing of {first.id}"

        checks.append((f"GET {USAGE_ENDPOINT}", usage))
    if discovery_needed(configured=bool(team.projects), currency=team.currency):

        def projects() -> str:
            found = client.check_key()
            sees = "at least one project" if found.sees_projects else "no project"
            return (
                f"accepted; sees {sees}; currency {team.currency or found.currency or 'unknown'}"
                + (f"; team {found.team}" if found.team else "")
            )

        checks.append((f"GET {PROJECTS_ENDPOINT}", projects))
    else:
        checks.append(
            (f"GET {PROJECTS_ENDPOINT}", lambda: "not needed (projects and currency are listed)")
        )
    return checks


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
