"""The demo's finance files, for the official FOCUS validator (and for a look).

Writes into a folder: `focus-current.csv` and `focus-previous.csv` (the demo's two
teams, each project's current period and the period before it), and the showback
and OpenCost files of the current period, from a state file built the way a running
exporter keeps it. `scripts/focus-validator.sh` runs the validator on them.

    python scripts/focus_files.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from functools import partial
from pathlib import Path

from exporter.downloads import Downloads, File
from exporter.simulation import PERIOD, DemoAccount, default_accounts
from exporter.state import StoredAnswer
from exporter.state.sqlite import SqliteState

FILES = {
    "focus-current.csv": ("/focus.csv", ""),
    "focus-previous.csv": ("/focus.csv", "period=previous"),
    "showback-current.csv": ("/showback.csv", ""),
    "opencost-pricing.csv": ("/opencost/pricing.csv", ""),
}


def keep(path: Path) -> None:
    """Each demo project's last answer of the period before (a minute before its end),
    then one of the current period (ten minutes in), each written before the next."""
    accounts = default_accounts()
    for current in (False, True):
        state = SqliteState(path, on_status=lambda up, reason: None, max_body_bytes=1 << 24)
        state.load()
        state.start()
        for key, account in zip(("us", "br"), accounts, strict=True):
            start, _, _ = account.period()
            source = account
            at = start + 600
            if not current:
                at = start - 60
                source = DemoAccount(
                    list(account.projects.values()),
                    speed=account.speed,
                    team=account.team,
                    clock=partial(float, at),
                    start_elapsed=PERIOD - 60 * account.speed,
                )
            for project in account.projects.values():
                document = source.usage(project)
                began = document["data"]["attributes"]["period"]["start"]
                state.keep(
                    StoredAnswer(
                        key,
                        project.id,
                        json.dumps(document).encode(),
                        at,
                        account.currency,
                        project.slug,
                        project.name,
                        account.team.slug,
                        period_start=datetime.fromisoformat(began).timestamp(),
                    )
                )
        state.close(10)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "state.db"
    path.unlink(missing_ok=True)
    keep(path)
    state = SqliteState(path, on_status=lambda up, reason: None, max_body_bytes=1 << 24)
    state.load()
    state.start()
    try:
        downloads = Downloads(state)
        for name, (route, query) in FILES.items():
            served = downloads.serve(route, query)
            assert isinstance(served, File), served
            (out / name).write_bytes(b"".join(served.chunks))
            print(out / name)
    finally:
        state.close(10)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
