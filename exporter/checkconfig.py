"""`--check-config`: a summary of what the config says, then one request per key.

For a CI step or an init container: exit 0 when everything holds, 2 when the config is
bad or a key is refused, 1 when a key could not be checked (rate limited, timed out,
unreachable: nothing is wrong with the config itself). Never prints a secret.
"""

from __future__ import annotations

from exporter import errors, exitcodes
from exporter.client import LatitudeClient
from exporter.config import DEFAULT_CONFIG_FILE
from exporter.logs import Redactor
from exporter.ratelimit import RequestBudget
from exporter.wiring import Flags, Setup


def report(flags: Flags, setup: Setup, redactor: Redactor) -> int:
    """Print the summary and each key's verdict; the exit code."""
    settings = setup.settings
    web = setup.web
    print("config OK")
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
                sees = "at least one project" if found.sees_projects else "no project"
                verdict = (
                    f"accepted; sees {sees}"
                    f"; currency {team.currency or found.currency or 'unknown'}"
                    + (f"; team {found.team}" if found.team else "")
                )
        print(
            f"  team {team.label}: key from {source}, {team.requests_per_minute:g} "
            f"requests/minute, projects {projects}: {verdict}"
        )
    # A refused key is a bad config (2); one the API could not answer for is not (1).
    if rejected:
        return exitcodes.CONFIG
    return exitcodes.FAILED_POLL if unchecked else exitcodes.OK


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
