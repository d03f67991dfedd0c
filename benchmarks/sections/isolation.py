"""Section 9: two keys, a 429 storm on one must not slow the other."""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.apilog import ApiLog
from benchmarks.harness import AFTER, Bench, Code
from benchmarks.measure import median
from benchmarks.modes import Mode
from benchmarks.report import Findings, Table, Target, sec
from benchmarks.scraping import TEXT, control, fetch

RPM = 300
PHASES = ("calm", "429 storm on bench-0")


@dataclass(frozen=True, slots=True)
class Phase:
    phase: str
    key: str
    requests: int
    seconds: float
    refreshes: int
    period: float  # median seconds between starts of successive refreshes


@dataclass(frozen=True, slots=True)
class Isolation:
    projects: int
    phases: list[Phase]
    rate_limited: float  # polls of team-0 that failed as rate_limited


def measure(bench: Bench, codes: Sequence[Code]) -> Isolation:
    """This tree only: the config of teams is this version's."""
    mode = bench.mode
    projects = 50 if mode.steady > 100 else 5
    api = bench.api(projects, 10, 0.02, 2)
    config = "teams:\n" + "".join(
        f"  - name: team-{t}\n    token_env: BENCH_KEY_{t}\n    requests_per_minute: {RPM}\n"
        for t in range(2)
    )
    env = {f"BENCH_KEY_{t}": f"bench-{t}" for t in range(2)}
    with bench.daemon(AFTER, api, config=config, env=env) as daemon:
        daemon.wait_ready()
        calm_start = time.monotonic()
        time.sleep(mode.isolation_seconds)
        storm_start = time.monotonic()
        control(api, {"storm": ["bench-0"]})
        time.sleep(mode.isolation_seconds)
        storm_end = time.monotonic()
        control(api, {"storm": []})
        _, body, _ = fetch(daemon.url + "/metrics", TEXT)
    log = ApiLog.of(api)
    phases = []
    for phase, start, end in zip(
        PHASES, (calm_start, storm_start), (storm_start, storm_end), strict=True
    ):
        for t in range(2):
            key = f"bench-{t}"
            count = sum(1 for r in log.requests[key] if start <= r < end)
            cycles = log.refreshes(team=t, start=start, end=end)
            starts = [first for first, _ in cycles]
            period = median([b - a for a, b in itertools.pairwise(starts)])
            phases.append(Phase(phase, key, count, end - start, len(cycles), period))
    rate_limited = re.findall(  # team-0's projects are proj_b00_*
        rb'latitudesh_poll_errors_total\{project_id="proj_b00_[^"]*",reason="rate_limited"\} (\S+)',
        body,
    )
    return Isolation(projects, phases, sum(float(v) for v in rate_limited))


def report(figures: Isolation, mode: Mode) -> Findings:
    rows = [
        [
            p.phase,
            p.key,
            str(p.requests),
            f"{p.requests / p.seconds * 60:.0f}",
            str(RPM),
            str(p.refreshes),
            sec(p.period),
        ]
        for p in figures.phases
    ]
    table = Table(
        "9. Two keys, one in a 429 storm",
        f"Two teams of {figures.projects} projects, {RPM} requests a minute each; the fake API "
        f"answers every request of bench-0 with 429 (Retry-After: 2) for "
        f"{mode.isolation_seconds:.0f} s. Polls of team-0 that failed as rate_limited: "
        f"{figures.rate_limited:.0f}.",
        ["phase", "key", "requests", "per minute", "budget", "complete refreshes", "period s"],
        rows,
    )
    period = {(p.phase, p.key): p.period for p in figures.phases}
    calm, storm = (period[(phase, "bench-1")] for phase in PHASES)
    target = Target(
        "a 429 storm on one key does not delay the other",
        f"team-1 period {sec(calm)} s calm, {sec(storm)} s in the storm",
        None if math.isnan(calm) or math.isnan(storm) else storm <= calm * 1.1,
    )
    return Findings([table], [target])
