"""Sections 6 and 7: true refresh intervals under a stretched budget, and the default budget
as the API counts it while scraped ten times a second."""

from __future__ import annotations

import itertools
import re
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.apilog import ApiLog
from benchmarks.harness import Bench, Code
from benchmarks.measure import busiest_window, median
from benchmarks.modes import Mode
from benchmarks.report import Findings, Table, Target, ratio, sec
from benchmarks.scraping import PROMETHEUS, TEXT, Scraper, fetch, scrape_loop
from testing.waits import wait_for

DEFAULT_RPM = 50  # the exporter's default budget


@dataclass
class Stretched:
    """Section 6: the exported interval against the real one."""

    exported: float = float("nan")
    periods: list[float] = field(default_factory=list)
    skipped: int = 0
    pages: int = 0


@dataclass
class Default:
    """Section 7: the requests the API counts at the default budget."""

    requests: int = 0
    busiest: int = 0
    gaps: list[float] = field(default_factory=list)
    per_project: tuple[int, int] = (0, 0)
    refreshes: int = 0
    scrapes: int = 0


def measure(bench: Bench, codes: Sequence[Code]) -> dict[str, tuple[Stretched, Default]]:
    """Per code, both at once (each in a daemon of its own, against an API of its own)."""
    results = {}
    for code in codes:
        interval_api = bench.api(bench.mode.interval_projects, 1)
        budget_api = bench.api(30, 1)
        stretched, default = Stretched(), Default()
        threads = [
            threading.Thread(target=_stretched, args=(bench, code, interval_api, stretched)),
            threading.Thread(target=_default_budget, args=(bench, code, budget_api, default)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results[code.label] = (stretched, default)
    return results


def _stretched(bench: Bench, code: Code, api: str, out: Stretched) -> None:
    mode = bench.mode
    probe = "proj_b00_00000"
    with bench.daemon(code, api, rpm=mode.interval_rpm) as daemon:
        daemon.wait_ready()
        wait_for(
            lambda: len(ApiLog.of(api).periods(probe)) >= mode.interval_periods + 1,
            60 * (mode.interval_periods + 2) * 2.5,
            "refresh periods",
            step=1 if mode.name != "smoke" else 0.1,
        )
        _, body, _ = fetch(daemon.url + "/metrics", TEXT, timeout=60)
        match = re.search(
            rb"\nlatitudesh_poll_effective_interval_seconds(?:\{[^}]*\})? (\S+)", body
        )
        out.exported = float(match.group(1)) if match else float("nan")
        out.skipped = daemon.log_count("maximum number of running instances")
    log = ApiLog.of(api)
    out.periods = log.periods(probe)[1:]  # the first one includes start-up
    out.pages = round(len(log.pages["bench-0"]) / max(1, len(log.periods(probe)) + 1))


def _default_budget(bench: Bench, code: Code, api: str, out: Default) -> None:
    with bench.daemon(code, api, rpm=DEFAULT_RPM) as daemon:
        daemon.wait_ready(timeout=60, path="/healthz")  # listening; polls begin
        out.scrapes = len(
            scrape_loop(
                [Scraper(daemon.url + "/metrics", PROMETHEUS)],
                bench.mode.budget_seconds,
                spacing=0.1,
            )[0].seconds
        )
    log = ApiLog.of(api)
    requests = sorted(log.requests["bench-0"])
    out.requests = len(requests)
    out.busiest = busiest_window(requests, 60.0)
    out.gaps = [b - a for a, b in itertools.pairwise(requests)]
    counts: dict[str, int] = defaultdict(int)
    for project, _, _ in log.served:
        counts[project] += 1
    out.per_project = (min(counts.values(), default=0), max(counts.values(), default=0))
    out.refreshes = len(log.refreshes())


def report(results: dict[str, tuple[Stretched, Default]], mode: Mode) -> Findings:
    intervals = Table(
        "6. True intervals",
        f"{mode.interval_projects} projects discovered at {mode.interval_rpm:.0f} requests per "
        "minute with a 1 s interval, so the budget stretches it: the exported "
        "`latitudesh_poll_effective_interval_seconds` against the real period (seconds "
        "between successive answers for one project, at the fake API), and the runs "
        'APScheduler skipped ("maximum number of running instances" in the log).',
        [
            "code",
            "projects",
            "/projects pages per refresh",
            "exported s",
            "periods",
            "real median s",
            "real vs exported",
            "skipped runs",
        ],
        [
            [
                label,
                str(mode.interval_projects),
                str(s.pages),
                sec(s.exported, 1),
                str(len(s.periods)),
                sec(median(s.periods), 1),
                f"{(ratio(median(s.periods), s.exported) - 1) * 100:+.1f} %",
                str(s.skipped),
            ]
            for label, (s, _) in results.items()
        ],
    )
    budget = Table(
        "7. The default budget at the API",
        f"30 projects with the default budget ({DEFAULT_RPM} requests a minute) for "
        f"{mode.budget_seconds:.0f} s while scraped 10× a second: what the API counts.",
        [
            "code",
            "requests",
            "most in any 60 s",
            "limit",
            "median gap s",
            "min gap s",
            "scrapes",
            "complete refreshes",
            "answers per project",
        ],
        [
            [
                label,
                str(d.requests),
                str(d.busiest),
                str(DEFAULT_RPM),
                sec(median(d.gaps), 3),
                sec(min(d.gaps, default=float("nan")), 3),
                str(d.scrapes),
                str(d.refreshes),
                f"{d.per_project[0]}–{d.per_project[1]}",
            ]
            for label, (_, d) in results.items()
        ],
    )
    stretched, default = results["after"]
    deviation = abs(ratio(median(stretched.periods), stretched.exported) - 1)
    targets = [
        Target(
            "real refresh period within 5 % of the exported interval",
            f"{deviation * 100:.1f} %, {stretched.skipped} runs skipped",
            deviation <= 0.05 and stretched.skipped == 0,
        ),
        Target(
            "never more than the budget in any 60 s",
            f"{default.busiest} of {DEFAULT_RPM}",
            default.busiest <= DEFAULT_RPM,
        ),
    ]
    return Findings([intervals, budget], targets)
