"""The demo's finance files, for the official FOCUS validator (and for a look).

Writes into a folder: `focus-current.csv` and `focus-previous.csv` (the demo's two
teams, each project's current period and the period before it), and the showback
and OpenCost files of the current period, from a state file built the way a running
exporter keeps it. `scripts/focus-validator.sh` runs the validator on them.

    PYTHONPATH=. python scripts/focus_files.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from exporter.downloads import Downloads, File
from exporter.simulation import default_accounts
from exporter.state.sqlite import SqliteState
from testing import periods
from testing.periods import period_before

FILES = {
    "focus-current.csv": ("/focus.csv", ""),
    "focus-previous.csv": ("/focus.csv", "period=previous"),
    "showback-current.csv": ("/showback.csv", ""),
    "opencost-pricing.csv": ("/opencost/pricing.csv", ""),
}


def keep(path: Path) -> None:
    """Each demo project's last answer of the period before (a minute before its end),
    then one of the current period (ten minutes in), each written before the next."""
    teams = list(zip(("us", "br"), default_accounts(), strict=True))
    earlier = [(key, account, *period_before(account)) for key, account in teams]
    periods.keep(
        path,
        [
            answer
            for key, account, before, at in earlier
            for answer in periods.answers(key, account, before, at, team_name=account.team.slug)
        ],
        [
            answer
            for key, account in teams
            for answer in periods.answers(
                key, account, account, account.period()[0] + 600, team_name=account.team.slug
            )
        ],
    )


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
