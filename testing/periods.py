"""A state file as an exporter that watched a billing period close leaves it: the
demo accounts' answers of the period before and of the current one, kept with the
SQLite backend. Shared by the tests, which start exporters on it, and by
`scripts/focus_files.py`, which writes the demo's finance files from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from functools import partial
from pathlib import Path

from exporter.simulation import PERIOD, DemoAccount
from exporter.state import StoredAnswer
from exporter.state.sqlite import SqliteState

#: How long before the end of its period the last answer of the period before was seen.
SEEN_BEFORE_END = 60.0


def period_before(account: DemoAccount) -> tuple[DemoAccount, float]:
    """`account` frozen `SEEN_BEFORE_END` seconds before its current period started,
    and that moment: its answers are the last ones of the period before."""
    start, _, _ = account.period()
    at = start - SEEN_BEFORE_END
    before = DemoAccount(
        list(account.projects.values()),
        speed=account.speed,
        team=account.team,
        clock=partial(float, at),
        start_elapsed=PERIOD - SEEN_BEFORE_END * account.speed,
    )
    return before, at


def answers(
    key: str,
    account: DemoAccount,
    source: DemoAccount,
    at: float,
    *,
    team_name: str | None = None,
) -> Iterator[StoredAnswer]:
    """Each of `account`'s projects as `source` answers for it, kept under the team
    `key` as received at `at`."""
    for project in account.projects.values():
        document = source.usage(project)
        began = document["data"]["attributes"]["period"]["start"]
        yield StoredAnswer(
            key,
            project.id,
            json.dumps(document).encode(),
            at,
            account.currency,
            project.slug,
            project.name,
            team_name,
            period_start=datetime.fromisoformat(began).timestamp(),
        )


def keep(path: Path, *batches: Iterable[StoredAnswer]) -> None:
    """Each batch kept and written before the next comes, as polls across a period's
    close do: a batch of a later period closes the one before."""
    for batch in batches:
        state = SqliteState(path, on_status=lambda up, reason: None, max_body_bytes=1 << 24)
        state.load()
        state.start()
        for answer in batch:
            state.keep(answer)
        state.close(10)
