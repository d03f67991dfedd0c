"""Section 16: closed periods in the state file (issue 32) at 1,000 x 50.

A state file as a year of polling leaves it: every project's current answer, its 13
closed periods (the most the file keeps) and a month of its spend curve (241 points,
one a 240th of the period), built directly with the SQLite backend.
Its size; the warm start from it with the API down (the first complete `/metrics`,
every project's last-period series included); and RSS after that warm start, against
the same start from a file of current answers alone (what the exporter kept before
closed periods existed). This tree's code only (closed periods are new).
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import Bench, Code
from benchmarks.modes import Mode
from benchmarks.report import Findings, Table, Target, sec
from benchmarks.scraping import PROMETHEUS, control, fetch
from benchmarks.sections.state import file_mib, warm_env
from exporter.models import read_usage
from exporter.snapshot import ClosedPeriod
from exporter.state import CLOSED_PERIODS_KEPT, StoredAnswer, StoredPoint
from exporter.state.sqlite import SqliteState
from exporter.usage import Limits, build_usage
from testing.largeapi import SEQ, project_body

#: Targets of issue 32.
WARM_START_SECONDS = 5.0
RSS_SHARE = 0.10
MONTH = 30 * 86400.0
#: When the current period of the built file starts (2026-11-01T00:00:00Z).
CURRENT_START = 1_793_491_200.0


@dataclass
class File:
    """One state file and the daemon's figures from it."""

    closed_periods: int
    mib: float = float("nan")
    warm_start: float = float("nan")
    rss: float = float("nan")
    previous_series: int = 0


@dataclass
class PeriodsRun:
    projects: int
    products: int
    build_seconds: float = float("nan")
    files: dict[str, File] = field(default_factory=dict)


#: Points of a whole period's curve: one every 240th of it, both ends included.
CURVE_POINTS = 241


def build(path: Path, projects: int, products: int, closed: int, points: int) -> None:
    """Every project's answers of `closed` past periods, then of the current one, each
    period in one write (so each closes the one before, as polling across a year does),
    and `points` of the current period's curve."""
    bodies = [
        project_body(0, index, products).replace(SEQ, b"100000000000") for index in range(projects)
    ]
    # what the exporter keeps beside each answer: its figures as a closed period
    limits = Limits(products=500, servers=500, tags_per_server=10)
    summaries = [
        ClosedPeriod.of(
            build_usage(
                f"proj_b00_{index:05d}",
                read_usage(f"proj_b00_{index:05d}", body),
                currency="USD",
                limits=limits,
                at=CURRENT_START,
            ),
            CURRENT_START,
        ).encode()
        for index, body in enumerate(bodies)
    ]
    for back in range(closed, -1, -1):
        start = CURRENT_START - back * MONTH
        state = SqliteState(path, on_status=lambda up, reason: None, max_body_bytes=1 << 26)
        state.load()
        state.start()
        for index, body in enumerate(bodies):
            state.keep(
                StoredAnswer(
                    "default",
                    f"proj_b00_{index:05d}",
                    body,
                    start + MONTH - 600,  # seen ten minutes before the period's end
                    "USD",
                    period_start=start,
                    summary=summaries[index],
                )
            )
            if back == 0:
                for step in range(points):
                    state.keep_point(
                        StoredPoint(
                            "default",
                            f"proj_b00_{index:05d}",
                            start,
                            start + step * MONTH / (CURVE_POINTS - 1),
                            10.0 * step,
                        )
                    )
        state.close(600)


def measure(bench: Bench, codes: Sequence[Code]) -> PeriodsRun:
    after = codes[0]
    projects, products = bench.mode.steady, bench.mode.products
    run = PeriodsRun(projects, products)
    api = bench.api(projects, products)
    files = (
        ("answers only", 0, 0),
        (f"{CLOSED_PERIODS_KEPT} closed periods, a month of curve", 13, CURVE_POINTS),
    )
    for name, closed, points in files:
        path = bench.path("periods") / "state.db"
        started = time.monotonic()
        build(path, projects, products, closed, points)
        if closed:
            run.build_seconds = time.monotonic() - started
        figures = run.files[name] = File(closed)
        figures.mib = file_mib(path)
        control(api, {"latency": 3600})  # the API hangs: everything served is from the file
        try:
            with bench.daemon(after, api, env=warm_env(path)) as daemon:
                figures.warm_start, body = daemon.wait_full(projects, timeout=120)
                figures.previous_series = gzip.decompress(body).count(
                    b"\nlatitudesh_billing_previous_period_price{"
                )
                # as a scraper sees it for a while: RSS once the start's garbage is gone
                # and past the minute's trim (`mode.tuning_settle` after the spawn)
                deadline = max(
                    time.monotonic() + bench.mode.phase,
                    daemon.child.started + bench.mode.tuning_settle,
                )
                while time.monotonic() < deadline:
                    fetch(daemon.url + "/metrics", PROMETHEUS, timeout=300)
                    time.sleep(1)
                figures.rss = daemon.rss()
        finally:
            control(api, {"latency": 0})
    return run


def report(run: PeriodsRun, mode: Mode) -> Findings:
    base, full = run.files.values()
    rss_share = full.rss / base.rss - 1
    table = Table(
        f"16. Closed periods: {run.projects:,} x {run.products}, state file and warm start",
        "Each file built with the SQLite backend (every period written at once, so each "
        "closes the one before); then a daemon started on it with the API hanging: the "
        "first /metrics showing every project, and RSS after scraping for a phase (and "
        "past the minute's malloc trim). "
        f"Building the {CLOSED_PERIODS_KEPT}-period file took {sec(run.build_seconds)} s.",
        ["state file", "size", "warm start (API down)", "last-period series", "RSS MiB"],
        [
            [
                name,
                f"{f.mib:.1f} MiB",
                sec(f.warm_start),
                f"{f.previous_series:,}",
                f"{f.rss:.0f}",
            ]
            for name, f in run.files.items()
        ],
    )
    targets = [
        Target(
            f"warm start with {CLOSED_PERIODS_KEPT} closed periods, API down ≤ "
            f"{WARM_START_SECONDS:g} s",
            sec(full.warm_start),
            full.warm_start <= WARM_START_SECONDS,
        ),
        Target(
            "every project's last period served at once",
            f"{full.previous_series:,} of {run.projects:,}",
            full.previous_series == run.projects,
        ),
        Target(
            f"RSS within {RSS_SHARE:.0%} of answers only",
            f"{rss_share:+.1%}",
            abs(rss_share) <= RSS_SHARE,
        ),
    ]
    return Findings([table], targets)
