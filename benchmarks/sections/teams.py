"""Section 8: ten keys in one exporter, each under its own budget, each at its own floor."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.apilog import ApiLog
from benchmarks.harness import AFTER, Bench, Code
from benchmarks.measure import busiest_window, median
from benchmarks.modes import Mode
from benchmarks.report import Findings, Table, Target, ratio, sec, times


@dataclass(frozen=True, slots=True)
class Team:
    refreshes: int
    periods: list[float]  # seconds between starts of successive refreshes
    per_minute: int  # requests in the busiest 60 s (or the rate, in a shorter run)


@dataclass(frozen=True, slots=True)
class Teams:
    teams: list[Team]
    cpu: float  # seconds of daemon CPU since start


def measure(bench: Bench, codes: Sequence[Code]) -> Teams:
    """This tree only: the config of teams is this version's."""
    mode = bench.mode
    api = bench.api(mode.team_projects, mode.products, 0.02, mode.teams)
    config = "teams:\n" + "".join(
        f"  - name: team-{t}\n    token_env: BENCH_KEY_{t}\n"
        f"    requests_per_minute: {mode.team_rpm}\n"
        for t in range(mode.teams)
    )
    env = {f"BENCH_KEY_{t}": f"bench-{t}" for t in range(mode.teams)}
    with bench.daemon(AFTER, api, config=config, env=env) as daemon:
        daemon.wait_ready()
        start = time.monotonic()
        time.sleep(mode.team_seconds)
        end = time.monotonic()
        cpu = daemon.cpu()
    log = ApiLog.of(api)
    teams = []
    for t in range(mode.teams):
        cycles = log.refreshes(team=t)
        starts = [first for first, _ in cycles]
        window = [r for r in log.requests[f"bench-{t}"] if start <= r <= end]
        per_minute = (
            busiest_window(window, 60.0)
            if end - start >= 60
            else round(len(window) / (end - start) * 60)
        )
        periods = [b - a for a, b in itertools.pairwise(starts)]
        teams.append(Team(len(cycles), periods, per_minute))
    return Teams(teams, cpu)


def report(figures: Teams, mode: Mode) -> Findings:
    pages = -(-mode.team_projects // 100)
    floor = max(1.0, (mode.team_projects + pages) / mode.team_rpm * 60)  # 1 s: the interval
    rows = []
    worst = 0.0
    for t, team in enumerate(figures.teams):
        worst = max(worst, ratio(median(team.periods), floor))
        rows.append(
            [
                f"team-{t}",
                str(team.refreshes),
                sec(median(team.periods)),
                sec(floor),
                times(ratio(median(team.periods), floor)),
                str(team.per_minute),
                f"{mode.team_rpm:.0f}",
            ]
        )
    table = Table(
        f"8. Teams: {mode.teams} keys × {mode.team_projects} projects in one exporter",
        f"Each key under its own budget ({mode.team_rpm:.0f} a minute), 20 ms of API latency, "
        f"{mode.products} products per project. A team's floor is its requests per refresh "
        f"({mode.team_projects} projects + {pages} page) at its budget; the period is between "
        f"starts of successive refreshes. Daemon CPU since start: {figures.cpu:.1f} s.",
        ["team", "refreshes", "period s", "floor s", "× floor", "requests per 60 s", "budget"],
        rows,
    )
    target = Target(
        "every team's refresh within 1.3× its own floor", f"worst {times(worst)}", worst <= 1.3
    )
    return Findings([table], [target])
