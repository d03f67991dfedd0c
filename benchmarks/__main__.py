"""`python -m benchmarks`: the exporter measured in the state it lives in.

The daemon runs as `python -m exporter`, polling a fast fake Latitude API whose every
answer changes the data (so polls land while scrapes arrive, as in production), and is
measured from outside: scrape latency side by side with a minimal server of the same
bytes (the floor) in the same run, refresh time with and without scrapers, CPU per
polled project, RSS settled and at its peak, freshness, start-up, the real refresh
period against the exported one, the request budget as the API counts it, teams, and
the hostile answers, slow clients and trickles of the hardening work.

`--compare PATH` runs every section that only needs the command line against the code
at PATH too (a worktree of an earlier commit: `git worktree add /tmp/old REV`), so one
run reports before and after. `--quick` shortens every phase; `--smoke` runs toy sizes
in seconds (for the test suite: it proves the script works and asserts nothing about
speed). Prints each table and writes benchmarks/RESULTS.md (or `--out`).
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import itertools
import json
import math
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.harness import (
    OPENMETRICS,
    PROMETHEUS,
    ROOT,
    TEXT,
    ApiLog,
    Bench,
    Code,
    Mode,
    Report,
    Scraper,
    Scrapes,
    concurrent_scrapes,
    fetch,
    ms,
    ratio,
    scrape_loop,
    sec,
    spans,
    times,
    wait_until,
)
from benchmarks.measure import (
    busiest_window,
    median,
    status_kib,
)
from testing.largeapi import SEQ, project_body

ALL_HOSTILE = (
    "gzip bomb, two layers",
    "millions of tiny products",
    "millions of tiny values",
    "nesting 100,000 deep",
    "10,000 products, the cap",
    "10,001 products",
)
FULL = Mode(
    steady=1000,
    big=5000,
    products=50,
    phase=40.0,
    scrapers=8,
    big_seconds=120.0,
    scrape_interval=15.0,
    scrape_timeout=10.0,
    warm_scrapes=40,
    gauges=100,
    interval_projects=250,
    interval_rpm=600,
    interval_periods=4,
    budget_seconds=130.0,
    teams=10,
    team_projects=100,
    team_rpm=600,
    team_seconds=75.0,
    isolation_seconds=40.0,
    hostile=ALL_HOSTILE,
    slow_connections=1000,
    churn_cycles=500,
    startups=5,
)
MODES = {
    "full": FULL,
    # the same sizes, shorter phases
    "quick": replace(
        FULL,
        phase=15.0,
        big_seconds=45.0,
        warm_scrapes=15,
        interval_periods=2,
        budget_seconds=65.0,
        team_seconds=40.0,
        isolation_seconds=25.0,
        churn_cycles=150,
        startups=3,
    ),
    "smoke": Mode(
        steady=20,
        big=40,
        products=3,
        phase=0.5,
        scrapers=2,
        big_seconds=2.0,
        scrape_interval=1.0,
        scrape_timeout=10.0,
        warm_scrapes=3,
        gauges=5,
        interval_projects=120,
        interval_rpm=6000,
        interval_periods=2,
        budget_seconds=2.0,
        teams=2,
        team_projects=5,
        team_rpm=600,
        team_seconds=2.0,
        isolation_seconds=1.0,
        hostile=("nesting 100,000 deep",),
        slow_connections=20,
        churn_cycles=3,
        startups=1,
    ),
}


def warm_cache(bench: Bench, codes: Sequence[Code], report: Report) -> None:
    """The figure earlier runs reported: scrapes of a cache nobody touches (no polls)."""
    mode = bench.mode
    rows: list[list[str]] = []
    for projects in sorted({mode.gauges, mode.steady}):
        _, api = bench.workload("api", projects, mode.products, 0)
        for code in codes:
            with bench.daemon(code, api, interval=86400) as daemon:
                _, body = daemon.wait_full(projects)
                floor_file = bench.path("warm.om.gz")
                floor_file.write_bytes(body)
                _, floor_port = bench.workload("floor", floor_file, "gzip")
                ours, floor = scrape_loop(
                    [
                        Scraper(daemon.url + "/metrics", PROMETHEUS),
                        Scraper(f"http://127.0.0.1:{floor_port}/metrics", PROMETHEUS),
                    ],
                    rounds=mode.warm_scrapes,
                )
                size = len(gzip.decompress(body)) / 1e6
                rows.append(
                    [
                        f"{projects} × {mode.products}",
                        code.label,
                        f"{size:.1f}",
                        str(len(ours.seconds)),
                        ms(ours.p50),
                        ms(ours.p99),
                        ms(floor.p50),
                        ms(floor.p99),
                        times(ratio(ours.p50, floor.p50)),
                    ]
                )
        if projects == mode.gauges:
            _, port = bench.workload("gauges", projects, mode.products)
            gauges = scrape_loop(
                [Scraper(f"http://127.0.0.1:{port}/metrics", TEXT)],
                rounds=min(mode.warm_scrapes, 10),
            )[0]
            rows.append(
                [
                    f"{projects} × {mode.products}",
                    "labelled Gauges (reference)",
                    f"{gauges.size / 1e6:.1f}",
                    str(len(gauges.seconds)),
                    ms(gauges.p50),
                    ms(gauges.p99),
                    "",
                    "",
                    "(plain text)",
                ]
            )
    report.table(
        "1. Warm cache (no polls land): what earlier runs reported",
        "Scraped as Prometheus does (OpenMetrics, gzip), one scraper, interleaved with the "
        "floor: the same compressed bytes from a minimal server. Not the steady state: the "
        "daemon polls nearly all the time (section 2). The last row is the same samples in "
        "labelled Gauges behind prometheus_client's own server, how hand-written exporters "
        "do it.",
        [
            "projects × products",
            "code",
            "MB (plain)",
            "scrapes",
            "p50 ms",
            "p99 ms",
            "floor p50 ms",
            "floor p99 ms",
            "p50 × floor",
        ],
        rows,
    )


#: API latency that, with 4 polls at once, lands about ten polls a second: ten keys at
#: Latitude's full budget, all invalidating what the last scrape saw.
STEADY_LATENCY = 0.4


@dataclass
class SteadyFigures:
    startup: float = float("nan")
    steady: dict[int, tuple[Scrapes, Scrapes]] = field(default_factory=dict)
    stress: dict[int, tuple[Scrapes, Scrapes]] = field(default_factory=dict)
    polls_per_second: float = float("nan")
    stress_polls_per_second: float = float("nan")
    refresh_idle: list[float] = field(default_factory=list)
    refresh_many: list[float] = field(default_factory=list)
    cpu_per_project: float = float("nan")
    rss_formats: float = float("nan")
    peak: float = float("nan")
    lags: list[float] = field(default_factory=list)


def steady_state(bench: Bench, codes: Sequence[Code], report: Report) -> None:
    """Scrapes while polls land: at ten a second (the steady state of a busy exporter)
    and back to back (the stress: what polls cost, and whether scrapes slow them)."""
    mode = bench.mode
    projects = mode.steady
    _, api = bench.workload("api", projects, mode.products, 0)
    figures: dict[str, SteadyFigures] = {}
    for code in codes:
        fig = figures[code.label] = SteadyFigures()
        with bench.daemon(code, api) as daemon:
            fig.startup, body = daemon.wait_full(projects)
            floor_file = bench.path("steady.om.gz")
            floor_file.write_bytes(body)
            _, floor_port = bench.workload("floor", floor_file, "gzip")
            floor_url = f"http://127.0.0.1:{floor_port}/metrics"
            metrics = daemon.url + "/metrics"

            # stress: polls alone, then beside one scraper, then beside several
            idle_start, cpu_start = time.monotonic(), daemon.cpu()
            time.sleep(mode.phase)
            idle_end, cpu_end = time.monotonic(), daemon.cpu()
            fig.stress[1] = _beside_floor(metrics, floor_url, 1, mode.phase)
            many_start = time.monotonic()
            fig.stress[mode.scrapers] = _beside_floor(metrics, floor_url, mode.scrapers, mode.phase)
            many_end = time.monotonic()

            # steady: ten polls a second, each changing what the next scrape sends
            _post(api, {"latency": STEADY_LATENCY})
            time.sleep(2 * STEADY_LATENCY)
            steady_start = time.monotonic()
            probe = FreshnessProbe(
                metrics, [0, projects // 2, projects - 1], every=2.0 if mode.phase >= 10 else 0.3
            )
            probe.start()
            fig.steady[1] = _beside_floor(metrics, floor_url, 1, mode.phase)
            probe.stop()
            for headers in (TEXT, OPENMETRICS, PROMETHEUS):
                fetch(metrics, headers, timeout=300)
            time.sleep(1)
            fig.rss_formats = daemon.rss()
            fig.steady[mode.scrapers] = _beside_floor(metrics, floor_url, mode.scrapers, mode.phase)
            steady_end = time.monotonic()
            fig.peak = daemon.peak()
            _post(api, {"latency": 0})
        log = ApiLog.of(api)
        fig.refresh_idle = spans(log.refreshes(start=idle_start, end=idle_end))
        fig.refresh_many = spans(log.refreshes(start=many_start, end=many_end))
        answers = log.answers(idle_start, idle_end)
        fig.stress_polls_per_second = answers / (idle_end - idle_start)
        fig.cpu_per_project = (cpu_end - cpu_start) / answers if answers else float("nan")
        fig.polls_per_second = log.answers(steady_start, steady_end) / (steady_end - steady_start)
        fig.lags = probe.lags(log)

    def rows(state: str) -> list[list[str]]:
        out = []
        for label, fig in figures.items():
            scraped = fig.steady if state == "steady" else fig.stress
            rate = fig.polls_per_second if state == "steady" else fig.stress_polls_per_second
            for scrapers, (ours, floor) in scraped.items():
                out.append(
                    [
                        label,
                        f"{rate:.0f}",
                        str(scrapers),
                        str(len(ours.seconds)),
                        str(ours.failures),
                        ms(ours.p50),
                        ms(ours.p99),
                        ms(max(ours.seconds, default=float("nan"))),
                        f"{ours.rate:.1f}",
                        ms(floor.p50),
                        ms(floor.p99),
                        times(ratio(ours.p50, floor.p50)),
                        times(ratio(ours.p99, floor.p99)),
                    ]
                )
        return out

    header = [
        "code",
        "polls/s",
        "scrapers",
        "scrapes",
        "failed",
        "p50 ms",
        "p99 ms",
        "max ms",
        "scrapes/s",
        "floor p50 ms",
        "floor p99 ms",
        "p50 × floor",
        "p99 × floor",
    ]
    method = (
        "Scraped as Prometheus does (OpenMetrics, gzip). The floor is the same bytes, "
        "pre-compressed, from a minimal server beside the same poller: one scraper "
        "alternates between the two, several scrapers hammer each in turn."
    )
    report.table(
        f"2. Steady state: scrapes while polls land, {projects} × {mode.products}",
        "About ten polls a second (API latency 0.4 s, 4 polls at once: ten keys at "
        "Latitude's full budget), every answer changing the data, so every scrape sends "
        f"what the polls since the last one changed. {method}",
        header,
        rows("steady"),
    )
    report.table(
        f"3. Stress: polls back to back, {projects} × {mode.products}",
        "An open budget and a fake API without latency: polls as fast as the daemon can "
        "make them (hundreds a second, far beyond any key's budget), on the same two "
        f"cores as the scrapers. {method} Then the refresh time (first to last answer of "
        f"one refresh, at the fake API) alone and beside {mode.scrapers} scrapers.",
        header,
        rows("stress"),
    )
    report.table(
        f"3b. Refresh of {projects} projects, alone and beside {mode.scrapers} scrapers",
        "",
        [
            "code",
            "refreshes (alone)",
            "median s (alone)",
            "refreshes (scraped)",
            "median s (scraped)",
            "× alone",
        ],
        [
            [
                label,
                str(len(f.refresh_idle)),
                sec(median(f.refresh_idle)),
                str(len(f.refresh_many)),
                sec(median(f.refresh_many)),
                times(ratio(median(f.refresh_many), median(f.refresh_idle))),
            ]
            for label, f in figures.items()
        ],
    )
    report.table(
        "4. Poll cost, memory, freshness, start-up",
        f"CPU of the daemon per project polled while polls run back to back without "
        f"scrapers ({mode.products} products; `json.loads` of the same answer takes "
        f"{_json_loads_ms(mode.products):.2f} ms). RSS settled after one text, one "
        "OpenMetrics and one gzip scrape in the steady state; peak = VmHWM since start, "
        "after every phase. Freshness: how long a newer answer had been served by the API "
        "when a scrape began that did not show it yet (steady state, three projects). "
        "Start-up: spawn to the first /metrics with every project (open budget).",
        [
            "code",
            "CPU ms per project",
            "RSS MiB",
            "peak MiB",
            "freshness probes",
            "lag p50 s",
            "lag max s",
            "start-up s",
        ],
        [
            [
                label,
                sec(f.cpu_per_project * 1000),
                sec(f.rss_formats, 1),
                sec(f.peak, 1),
                str(len(f.lags)),
                sec(median(f.lags)),
                sec(max(f.lags, default=float("nan"))),
                sec(f.startup),
            ]
            for label, f in figures.items()
        ],
    )

    # Targets that serve users (the API's budget, one request a second per key, makes
    # per-poll CPU and "x a static file server" moot): Prometheus's scrape timeout is
    # 10 s by default, and a dashboard refresh should never wait on the exporter.
    after = figures["after"]
    for scrapers, (ours, floor) in after.steady.items():
        worst = max(ours.seconds, default=float("nan"))
        report.target(
            f"every scrape ≤ 250 ms while polls land ({scrapers} scraper(s))",
            f"max {ms(worst)} ms",
            worst <= 0.25,
        )
        report.target(
            f"scrape p50 ≤ 3× the same bytes from a minimal server ({scrapers} scraper(s))",
            times(ratio(ours.p50, floor.p50)),
            ratio(ours.p50, floor.p50) <= 3,
        )
    worst_lag = max(after.lags, default=float("nan"))
    report.target(
        "a poll's result in /metrics within 5 s", f"max {sec(worst_lag)} s", worst_lag <= 5
    )
    report.target(
        f"RSS ≤ 200 MiB at {projects} × {mode.products} after text, OpenMetrics, gzip",
        f"{after.rss_formats:.0f} MiB",
        after.rss_formats <= 200,
    )
    report.target(
        f"peak ≤ 250 MiB under {mode.scrapers} scrapers while polling",
        f"{after.peak:.0f} MiB",
        after.peak <= 250,
    )


def _beside_floor(url: str, floor: str, scrapers: int, seconds: float) -> tuple[Scrapes, Scrapes]:
    """Scrapes of the exporter and of the floor in the same conditions."""
    if scrapers == 1:
        ours, base = scrape_loop([Scraper(url, PROMETHEUS), Scraper(floor, PROMETHEUS)], seconds)
        return ours, base
    ours = concurrent_scrapes(url, PROMETHEUS, scrapers, seconds)
    return ours, concurrent_scrapes(floor, PROMETHEUS, scrapers, seconds / 2)


def _json_loads_ms(products: int) -> float:
    body = project_body(0, 0, products).replace(SEQ, b"100000000001")
    started = time.perf_counter()
    for _ in range(200):
        json.loads(body)
    return (time.perf_counter() - started) / 200 * 1000


_PRICE = re.compile(rb'project_id="(proj_b\d\d_\d+)"[^}\n]*\} (\S+)')


class FreshnessProbe:
    """Scrapes every few seconds and notes which answer each probed project shows."""

    def __init__(self, url: str, indexes: Sequence[int], every: float) -> None:
        self.url = url
        self.every = every
        self.projects = {f"proj_b00_{i:05d}" for i in indexes}
        self.seen: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            started = time.monotonic()
            try:
                status, body, _ = fetch(self.url, PROMETHEUS, timeout=120)
            except OSError:
                continue
            if status != 200:
                continue
            text = gzip.decompress(body)
            start = text.find(b"\nlatitudesh_billing_price{")
            end = text.find(b"\n# ", start + 1)
            for match in _PRICE.finditer(text, start, end):
                project = match.group(1).decode()
                if project in self.projects:
                    self.seen.append((started, project, round(float(match.group(2)) * 100)))

    def lags(self, log: ApiLog) -> list[float]:
        served: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for project, seq, at in log.served:
            if project in self.projects:
                served[project].append((seq, at))
        lags = []
        for started, project, shown in self.seen:
            newer = [at for seq, at in served[project] if seq > shown]
            lags.append(max(0.0, started - newer[0]) if newer else 0.0)
        return lags


def prometheus_like(bench: Bench, codes: Sequence[Code], report: Report) -> None:
    """A big account scraped on Prometheus' schedule while polls land."""
    mode = bench.mode
    projects = mode.big
    _, api = bench.workload("api", projects, mode.products, 0)
    rows = []
    verdict: tuple[str, bool] | None = None
    for code in codes:
        with bench.daemon(code, api) as daemon:
            ready = daemon.wait_ready()
            start = time.monotonic()
            result = scrape_loop(
                [Scraper(daemon.url + "/metrics", PROMETHEUS, timeout=mode.scrape_timeout)],
                mode.big_seconds,
                spacing=mode.scrape_interval,
            )[0]
            end = time.monotonic()
            rss, peak = daemon.rss(), daemon.peak()
        refreshes = len(ApiLog.of(api).refreshes(start=0, end=end))
        within = sum(1 for s in result.seconds if s <= 1)
        total = len(result.seconds) + result.failures
        rows.append(
            [
                code.label,
                sec(ready),
                str(total),
                str(within),
                str(result.failures),
                ms(result.p50),
                ms(max(result.seconds, default=float("nan"))),
                str(refreshes),
                sec(end - start, 0),
                sec(rss, 0),
                sec(peak, 0),
            ]
        )
        if code.label == "after":
            verdict = (
                f"{within} of {total} ≤ 1 s, max "
                f"{ms(max(result.seconds, default=float('nan')))} ms",
                within == total and total > 0,
            )
    report.table(
        f"5. Prometheus-like at {projects} × {mode.products}",
        f"One scraper every {mode.scrape_interval:.0f} s with a {mode.scrape_timeout:.0f} s "
        "timeout (Prometheus' defaults), OpenMetrics with gzip, while refreshes run back to "
        "back (open budget, no API latency).",
        [
            "code",
            "ready s",
            "scrapes",
            "≤ 1 s",
            "timed out / failed",
            "p50 ms",
            "max ms",
            "refreshes done",
            "window s",
            "RSS MiB",
            "peak MiB",
        ],
        rows,
    )
    if verdict:
        report.target(f"every scrape ≤ 1 s at {projects} × {mode.products}", *verdict)


@dataclass
class Pacing:
    exported: float = float("nan")
    periods: list[float] = field(default_factory=list)
    skipped: int = 0
    pages: int = 0
    busiest: int = 0
    gaps: list[float] = field(default_factory=list)
    per_project: tuple[int, int] = (0, 0)
    refreshes: int = 0
    scrapes: int = 0


def pacing(bench: Bench, codes: Sequence[Code], report: Report) -> None:
    """True intervals under a stretched budget; the default budget as the API counts it,
    with ten scrapes a second that must not cause a single request."""
    mode = bench.mode
    results: dict[str, tuple[Pacing, Pacing]] = {}
    for code in codes:
        interval_api = bench.workload("api", mode.interval_projects, 1, 0)[1]
        budget_api = bench.workload("api", 30, 1, 0)[1]
        stretched, default = Pacing(), Pacing()
        threads = [
            threading.Thread(target=_stretched, args=(bench, code, interval_api, stretched)),
            threading.Thread(target=_default_budget, args=(bench, code, budget_api, default)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results[code.label] = (stretched, default)

    rows = []
    for label, (stretched, _) in results.items():
        real = median(stretched.periods)
        rows.append(
            [
                label,
                str(mode.interval_projects),
                str(stretched.pages),
                sec(stretched.exported, 1),
                str(len(stretched.periods)),
                sec(real, 1),
                f"{(ratio(real, stretched.exported) - 1) * 100:+.1f} %",
                str(stretched.skipped),
            ]
        )
    report.table(
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
        rows,
    )
    rows = []
    for label, (_, default) in results.items():
        rows.append(
            [
                label,
                str(default.pages),
                str(default.busiest),
                "50",
                sec(median(default.gaps), 3),
                sec(min(default.gaps, default=float("nan")), 3),
                str(default.scrapes),
                str(default.refreshes),
                f"{default.per_project[0]}–{default.per_project[1]}",
            ]
        )
    report.table(
        "7. The default budget at the API",
        f"30 projects with the default budget (50 requests a minute) for "
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
        rows,
    )
    after = results["after"][0]
    deviation = abs(ratio(median(after.periods), after.exported) - 1)
    report.target(
        "real refresh period within 5 % of the exported interval",
        f"{deviation * 100:.1f} %, {after.skipped} runs skipped",
        deviation <= 0.05 and after.skipped == 0,
    )
    budget = results["after"][1]
    report.target(
        "never more than the budget in any 60 s", f"{budget.busiest} of 50", budget.busiest <= 50
    )


def _stretched(bench: Bench, code: Code, api: str, out: Pacing) -> None:
    mode = bench.mode
    with bench.daemon(code, api, rpm=mode.interval_rpm) as daemon:
        daemon.wait_ready()
        probe = "proj_b00_00000"

        def enough() -> bool:
            return len(ApiLog.of(api).periods(probe)) >= mode.interval_periods + 1

        wait_until(enough, 60 * (mode.interval_periods + 2) * 2.5, "refresh periods", step=1)
        _, body, _ = fetch(daemon.url + "/metrics", TEXT, timeout=60)
        match = re.search(
            rb"\nlatitudesh_poll_effective_interval_seconds(?:\{[^}]*\})? (\S+)", body
        )
        out.exported = float(match.group(1)) if match else float("nan")
        out.skipped = daemon.log_count("maximum number of running instances")
    log = ApiLog.of(api)
    out.periods = log.periods(probe)[1:]  # the first one includes start-up
    out.pages = round(len(log.pages["bench-0"]) / max(1, len(log.periods(probe)) + 1))


def _default_budget(bench: Bench, code: Code, api: str, out: Pacing) -> None:
    mode = bench.mode
    with bench.daemon(code, api, rpm=50) as daemon:
        daemon.wait_ready(timeout=60, path="/healthz")  # listening; polls begin
        out.scrapes = len(
            scrape_loop(
                [Scraper(daemon.url + "/metrics", PROMETHEUS)], mode.budget_seconds, spacing=0.1
            )[0].seconds
        )
    log = ApiLog.of(api)
    requests = sorted(log.requests["bench-0"])
    out.pages = len(requests)
    out.busiest = busiest_window(requests, 60.0)
    out.gaps = [b - a for a, b in itertools.pairwise(requests)]
    counts: dict[str, int] = defaultdict(int)
    for project, _, _ in log.served:
        counts[project] += 1
    out.per_project = (min(counts.values(), default=0), max(counts.values(), default=0))
    out.refreshes = len(log.refreshes())


def teams(bench: Bench, report: Report) -> None:
    """Ten keys in one exporter, each under its own budget, each at its own floor."""
    mode = bench.mode
    _, api = bench.workload("api", mode.team_projects, mode.products, 0.02, mode.teams)
    config = "teams:\n" + "".join(
        f"  - name: team-{t}\n    token_env: BENCH_KEY_{t}\n"
        f"    requests_per_minute: {mode.team_rpm}\n"
        for t in range(mode.teams)
    )
    env = {f"BENCH_KEY_{t}": f"bench-{t}" for t in range(mode.teams)}
    after = Code("after", ROOT)
    with bench.daemon(after, api, config=config, env=env) as daemon:
        daemon.wait_ready()
        start = time.monotonic()
        time.sleep(mode.team_seconds)
        end = time.monotonic()
        cpu = daemon.cpu()
    log = ApiLog.of(api)
    pages = -(-mode.team_projects // 100)
    floor = max(1.0, (mode.team_projects + pages) / mode.team_rpm * 60)  # 1 s: the interval
    rows = []
    worst = 0.0
    for t in range(mode.teams):
        key = f"bench-{t}"
        cycles = log.refreshes(team=t)
        starts = [first for first, _ in cycles]
        periods = [b - a for a, b in itertools.pairwise(starts)]
        window = [r for r in log.requests[key] if start <= r <= end]
        per_minute = (
            busiest_window(window, 60.0)
            if end - start >= 60
            else round(len(window) / (end - start) * 60)
        )
        worst = max(worst, ratio(median(periods), floor))
        rows.append(
            [
                f"team-{t}",
                str(len(cycles)),
                sec(median(periods)),
                sec(floor),
                times(ratio(median(periods), floor)),
                str(per_minute),
                f"{mode.team_rpm:.0f}",
            ]
        )
    report.table(
        f"8. Teams: {mode.teams} keys × {mode.team_projects} projects in one exporter",
        f"Each key under its own budget ({mode.team_rpm:.0f} a minute), 20 ms of API latency, "
        f"{mode.products} products per project. A team's floor is its requests per refresh "
        f"({mode.team_projects} projects + {pages} page) at its budget; the period is between "
        f"starts of successive refreshes. Daemon CPU since start: {cpu:.1f} s.",
        ["team", "refreshes", "period s", "floor s", "× floor", "requests per 60 s", "budget"],
        rows,
    )
    report.target(
        "every team's refresh within 1.3× its own floor", f"worst {times(worst)}", worst <= 1.3
    )


def isolation(bench: Bench, report: Report) -> None:
    """Two keys: a 429 storm on one must not slow the other."""
    mode = bench.mode
    projects, rpm = 50 if mode.steady > 100 else 5, 300
    _, api = bench.workload("api", projects, 10, 0.02, 2)
    config = "teams:\n" + "".join(
        f"  - name: team-{t}\n    token_env: BENCH_KEY_{t}\n    requests_per_minute: {rpm}\n"
        for t in range(2)
    )
    env = {f"BENCH_KEY_{t}": f"bench-{t}" for t in range(2)}
    with bench.daemon(Code("after", ROOT), api, config=config, env=env) as daemon:
        daemon.wait_ready()
        calm_start = time.monotonic()
        time.sleep(mode.isolation_seconds)
        storm_start = time.monotonic()
        _post(api, {"storm": ["bench-0"]})
        time.sleep(mode.isolation_seconds)
        storm_end = time.monotonic()
        _post(api, {"storm": []})
        _, body, _ = fetch(daemon.url + "/metrics", TEXT)
    log = ApiLog.of(api)
    rows = []
    figures: dict[tuple[str, int], float] = {}
    for phase, start, end in (
        ("calm", calm_start, storm_start),
        ("429 storm on bench-0", storm_start, storm_end),
    ):
        for t in range(2):
            key = f"bench-{t}"
            count = sum(1 for r in log.requests[key] if start <= r < end)
            cycles = log.refreshes(team=t, start=start, end=end)
            starts = [first for first, _ in cycles]
            period = median([b - a for a, b in itertools.pairwise(starts)])
            figures[(phase, t)] = period
            rows.append(
                [
                    phase,
                    key,
                    str(count),
                    f"{count / (end - start) * 60:.0f}",
                    str(rpm),
                    str(len(cycles)),
                    sec(period),
                ]
            )
    rate_limited = re.findall(  # team-0's projects are proj_b00_*
        rb'latitudesh_poll_errors_total\{project_id="proj_b00_[^"]*",reason="rate_limited"\} (\S+)',
        body,
    )
    report.table(
        "9. Two keys, one in a 429 storm",
        f"Two teams of {projects} projects, {rpm} requests a minute each; the fake API "
        f"answers every request of bench-0 with 429 (Retry-After: 2) for "
        f"{mode.isolation_seconds:.0f} s. Polls of team-0 that failed as rate_limited: "
        f"{sum(float(v) for v in rate_limited):.0f}.",
        ["phase", "key", "requests", "per minute", "budget", "complete refreshes", "period s"],
        rows,
    )
    calm, storm = figures[("calm", 1)], figures[("429 storm on bench-0", 1)]
    report.target(
        "a 429 storm on one key does not delay the other",
        f"team-1 period {sec(calm)} s calm, {sec(storm)} s in the storm",
        None if math.isnan(calm) or math.isnan(storm) else storm <= calm * 1.1,
    )


def _post(api: str, data: dict[str, Any]) -> None:
    parts = urlsplit(api)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request(
            "POST",
            "/__bench__/storm",
            body=json.dumps(data),
            headers={"Content-Type": "application/json"},
        )
        conn.getresponse().read()
    finally:
        conn.close()


def hostile(bench: Bench, codes: Sequence[Code], report: Report) -> None:
    """Each hostile answer read once by the client, in a child under a memory limit."""
    from exporter.simulation import DemoAccount
    from testing.fakeapi import HOSTILE, FakeApi, Fault, probe_script

    mode = bench.mode
    rows = []
    with FakeApi(DemoAccount(token="bench-0")) as api:
        cases = [(name, HOSTILE[name][0]) for name in mode.hostile]
        cases.append(
            ("trickle, 1 byte per 50 ms (timeout 1 s)", lambda: Fault("trickle", delay=0.05))
        )
        for name, fault in cases:
            row = [name]
            for code in codes:
                api.inject(fault(), project="proj_demo_web")  # for this one request
                timeout = 1.0 if name.startswith("trickle") else 30.0
                outcome, peak, seconds = _probe(
                    code, probe_script(api.url, "bench-0", timeout=timeout)
                )
                row += [outcome, peak, seconds]
                api.clear_faults()
            rows.append(row)
    header = ["answer"]
    for code in codes:
        header += [f"{code.label}: outcome", f"{code.label}: peak MiB", f"{code.label}: s"]
    report.table(
        "10. Hostile answers",
        "One request with the client, in a child limited to 700 MiB of address space "
        "(a blow-up ends as MemoryError instead of taking the machine), the peak RSS "
        "(VmHWM) and how long it took; a child still reading after 60 s is killed.",
        header,
        rows,
    )


def _probe(code: Code, script: str) -> tuple[str, str, str]:
    limit = 700 * 1024 * 1024

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=code.root,
            preexec_fn=limit_memory,
            env={**os.environ, "PYTHONPATH": str(code.root), "MALLOC_ARENA_MAX": "2"},
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "still reading after 60 s", "—", sec(time.monotonic() - started, 1)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        return f"crashed: {last[:60]}", "—", sec(time.monotonic() - started, 1)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    outcome = "read" if "READ" in lines else f"refused ({lines.get('REFUSED', '?')})"
    return outcome, lines.get("PEAK", "—"), lines.get("SECONDS", "—")


def slow_clients(bench: Bench, codes: Sequence[Code], report: Report) -> None:
    """Scrapes while many idle and slowloris connections are held open."""
    mode = bench.mode
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    _, api = bench.workload("api", 10, 5, 0)
    rows = []
    for code in codes:
        with bench.daemon(code, api) as daemon:
            daemon.wait_full(10)
            before = daemon.rss()
            held = _hold(daemon.url, mode.slow_connections)
            try:
                result = scrape_loop(
                    [Scraper(daemon.url + "/metrics", PROMETHEUS, timeout=5)],
                    5.0 if mode.steady > 100 else 1.0,
                    spacing=0.25,
                )[0]
                threads = status_kib(daemon.pid, "Threads")
                rss = daemon.rss()
            finally:
                held.close()
            rows.append(
                [
                    code.label,
                    str(mode.slow_connections),
                    str(len(result.seconds)),
                    str(result.failures),
                    ms(result.p50),
                    ms(max(result.seconds, default=float("nan"))),
                    sec(before, 1),
                    sec(rss, 1),
                    str(threads),
                ]
            )
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    report.table(
        "11. Slow and idle clients",
        f"{mode.slow_connections} connections held open (half idle, half sending one "
        "header byte a second) while one scraper scrapes every 250 ms with a 5 s timeout.",
        [
            "code",
            "held",
            "scrapes",
            "failed",
            "p50 ms",
            "max ms",
            "RSS before MiB",
            "RSS held MiB",
            "threads",
        ],
        rows,
    )


class _Held:
    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.stop = threading.Event()

    def close(self) -> None:
        self.stop.set()
        for sock in self.sockets:
            sock.close()


def _hold(url: str, count: int) -> _Held:
    parts = urlsplit(url)
    held = _Held()
    for index in range(count):
        try:
            sock = socket.create_connection((parts.hostname or "", parts.port or 80), timeout=5)
        except OSError:
            continue
        if index % 2:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        held.sockets.append(sock)

    def drip() -> None:
        while not held.stop.wait(1.0):
            for sock in held.sockets[1::2]:
                with suppress(OSError):
                    sock.send(b"X")

    threading.Thread(target=drip, daemon=True).start()
    return held


def churn(bench: Bench, report: Report) -> None:
    child, first = bench.workload("churn", bench.mode.churn_cycles)
    lines = [first]
    while len(lines) < bench.mode.churn_cycles // 50 + 1:
        lines.append(child.first_line())
    rows = [line.split() for line in lines]
    report.table(
        f"12. RSS over {bench.mode.churn_cycles} refreshes with churn",
        "Projects, products and hostnames change every refresh (poll → store → exposition "
        "in one process); RSS every 50 refreshes.",
        ["refresh", "RSS MiB", "lines in /metrics"],
        rows,
    )


def demo_startup(bench: Bench, codes: Sequence[Code], report: Report) -> None:
    rows = []
    for code in codes:
        runs = []
        for _ in range(bench.mode.startups):
            with bench.daemon(code, "http://127.0.0.1:9", args=["--demo"]) as daemon:
                runs.append(daemon.wait_ready(60))
        rows.append(
            [code.label, str(len(runs)), sec(median(runs)), f"{sec(min(runs))}–{sec(max(runs))}"]
        )
    report.table(
        "13. Start-up of the demo to /readyz = 200",
        "",
        ["code", "runs", "median s", "min–max s"],
        rows,
    )


SECTIONS: dict[str, Callable[[Bench, Sequence[Code], Report], None]] = {
    "warm": warm_cache,
    "steady": steady_state,
    "prometheus": prometheus_like,
    "pacing": pacing,
    "teams": lambda bench, _codes, report: teams(bench, report),
    "isolation": lambda bench, _codes, report: isolation(bench, report),
    "hostile": hostile,
    "slow": slow_clients,
    "churn": lambda bench, _codes, report: churn(bench, report),
    "demo": demo_startup,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="shorter phases (~10 minutes)")
    size.add_argument("--smoke", action="store_true", help="toy sizes, seconds: proves it runs")
    parser.add_argument("--compare", type=Path, help="also measure the code at this path")
    parser.add_argument(
        "--only", action="append", choices=list(SECTIONS), help="run only this section (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    options = parser.parse_args(argv)
    name = "smoke" if options.smoke else "quick" if options.quick else "full"
    codes = [Code("before", options.compare.resolve())] if options.compare else []
    codes.append(Code("after", ROOT))
    started = datetime.now(UTC)
    report = Report()
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch, ExitStack() as stack:
        bench = Bench(MODES[name], Path(scratch), stack)
        for section, run in SECTIONS.items():
            if options.only and section not in options.only:
                continue
            print(f"\n=== {section} ===", flush=True)
            began = time.monotonic()
            with ExitStack() as section_stack:
                bench.stack = section_stack
                run(bench, codes, report)
            print(f"({section}: {time.monotonic() - began:.0f} s)", flush=True)
    options.out.write_text(report.markdown(name, codes, started))
    print(f"\nwrote {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
