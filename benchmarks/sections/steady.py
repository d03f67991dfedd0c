"""Sections 2 to 4: scrapes while polls land (steady and stress), refresh time, poll cost,
memory, freshness and start-up, from one daemon per code at 1,000 x 50."""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.apilog import ApiLog, spans
from benchmarks.harness import Bench, Code
from benchmarks.measure import median
from benchmarks.modes import Mode
from benchmarks.report import Findings, Table, Target, ms, ratio, sec, times
from benchmarks.scraping import (
    OPENMETRICS,
    PROMETHEUS,
    TEXT,
    Scrapes,
    beside_floor,
    control,
    fetch,
)
from testing.largeapi import SEQ, project_body

#: API latency that, with 4 polls at once, lands about ten polls a second: ten keys at
#: Latitude's full budget, all invalidating what the last scrape saw.
STEADY_LATENCY = 0.4


@dataclass
class Steady:
    """One code's figures."""

    startup: float = float("nan")
    steady: dict[int, tuple[Scrapes, Scrapes]] = field(default_factory=dict)  # per scrapers
    stress: dict[int, tuple[Scrapes, Scrapes]] = field(default_factory=dict)  # (ours, floor)
    polls_per_second: float = float("nan")
    stress_polls_per_second: float = float("nan")
    refresh_idle: list[float] = field(default_factory=list)
    refresh_many: list[float] = field(default_factory=list)
    cpu_per_project: float = float("nan")
    rss_formats: float = float("nan")
    peak: float = float("nan")
    lags: list[float] = field(default_factory=list)


@dataclass
class SteadyRun:
    projects: int
    json_loads_ms: float  # json.loads of one answer, beside the CPU per project
    codes: dict[str, Steady]


def measure(bench: Bench, codes: Sequence[Code]) -> SteadyRun:
    """Per code: polls back to back (the stress: what polls cost, and whether scrapes
    slow them) alone, beside one scraper, beside several; then ten polls a second (the
    steady state of a busy exporter) beside one scraper and several."""
    mode = bench.mode
    projects = mode.steady
    api = bench.api(projects, mode.products)
    run = SteadyRun(projects, json_loads_ms(mode.products), {})
    for code in codes:
        fig = run.codes[code.label] = Steady()
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
            fig.stress[1] = beside_floor(metrics, floor_url, 1, mode.phase)
            many_start = time.monotonic()
            fig.stress[mode.scrapers] = beside_floor(metrics, floor_url, mode.scrapers, mode.phase)
            many_end = time.monotonic()

            # steady: ten polls a second, each changing what the next scrape sends
            control(api, {"latency": STEADY_LATENCY})
            time.sleep(min(2 * STEADY_LATENCY, mode.phase))  # polls in flight end
            steady_start = time.monotonic()
            probe = FreshnessProbe(
                metrics, [0, projects // 2, projects - 1], every=2.0 if mode.phase >= 10 else 0.3
            )
            probe.start()
            fig.steady[1] = beside_floor(metrics, floor_url, 1, mode.phase)
            probe.stop()
            for headers in (TEXT, OPENMETRICS, PROMETHEUS):
                fetch(metrics, headers, timeout=300)
            time.sleep(1 if mode.phase >= 10 else 0.1)
            fig.rss_formats = daemon.rss()
            fig.steady[mode.scrapers] = beside_floor(metrics, floor_url, mode.scrapers, mode.phase)
            steady_end = time.monotonic()
            fig.peak = daemon.peak()
            control(api, {"latency": 0})
        log = ApiLog.of(api)
        fig.refresh_idle = spans(log.refreshes(start=idle_start, end=idle_end))
        fig.refresh_many = spans(log.refreshes(start=many_start, end=many_end))
        answers = log.answers(idle_start, idle_end)
        fig.stress_polls_per_second = answers / (idle_end - idle_start)
        fig.cpu_per_project = (cpu_end - cpu_start) / answers if answers else float("nan")
        fig.polls_per_second = log.answers(steady_start, steady_end) / (steady_end - steady_start)
        fig.lags = probe.lags(log)
    return run


def json_loads_ms(products: int) -> float:
    """Milliseconds of `json.loads` of one project's answer: the floor of a poll's CPU."""
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
        """Per probe, how long a newer answer had been served when the scrape began."""
        served: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for project, seq, at in log.served:
            if project in self.projects:
                served[project].append((seq, at))
        lags = []
        for started, project, shown in self.seen:
            newer = [at for seq, at in served[project] if seq > shown]
            lags.append(max(0.0, started - newer[0]) if newer else 0.0)
        return lags


# --- reporting ---------------------------------------------------------------------------

HEADER = (
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
)
METHOD = (
    "Scraped as Prometheus does (OpenMetrics, gzip). The floor is the same bytes, "
    "pre-compressed, from a minimal server beside the same poller: one scraper "
    "alternates between the two, several scrapers hammer each in turn."
)


def report(run: SteadyRun, mode: Mode) -> Findings:
    projects = run.projects
    tables = [
        Table(
            f"2. Steady state: scrapes while polls land, {projects} × {mode.products}",
            "About ten polls a second (API latency 0.4 s, 4 polls at once: ten keys at "
            "Latitude's full budget), every answer changing the data, so every scrape sends "
            f"what the polls since the last one changed. {METHOD}",
            HEADER,
            _scrape_rows(run, steady=True),
        ),
        Table(
            f"3. Stress: polls back to back, {projects} × {mode.products}",
            "An open budget and a fake API without latency: polls as fast as the daemon can "
            "make them (hundreds a second, far beyond any key's budget), on the same two "
            f"cores as the scrapers. {METHOD} Then the refresh time (first to last answer of "
            f"one refresh, at the fake API) alone and beside {mode.scrapers} scrapers.",
            HEADER,
            _scrape_rows(run, steady=False),
        ),
        Table(
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
                for label, f in run.codes.items()
            ],
        ),
        Table(
            "4. Poll cost, memory, freshness, start-up",
            f"CPU of the daemon per project polled while polls run back to back without "
            f"scrapers ({mode.products} products; `json.loads` of the same answer takes "
            f"{run.json_loads_ms:.2f} ms). RSS settled after one text, one "
            "OpenMetrics and one gzip scrape in the steady state; peak = VmHWM since start, "
            "after every phase. Freshness: how long a newer answer had been served by the "
            "API when a scrape began that did not show it yet (steady state, three "
            "projects). Start-up: spawn to the first /metrics with every project (open "
            "budget).",
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
                for label, f in run.codes.items()
            ],
        ),
    ]
    return Findings(tables, _targets(run, mode))


def _scrape_rows(run: SteadyRun, *, steady: bool) -> list[list[str]]:
    rows = []
    for label, fig in run.codes.items():
        scraped = fig.steady if steady else fig.stress
        rate = fig.polls_per_second if steady else fig.stress_polls_per_second
        for scrapers, (ours, floor) in scraped.items():
            rows.append(
                [
                    label,
                    f"{rate:.0f}",
                    str(scrapers),
                    str(len(ours.seconds)),
                    str(ours.failures),
                    ms(ours.p50),
                    ms(ours.p99),
                    ms(ours.slowest),
                    f"{ours.rate:.1f}",
                    ms(floor.p50),
                    ms(floor.p99),
                    times(ratio(ours.p50, floor.p50)),
                    times(ratio(ours.p99, floor.p99)),
                ]
            )
    return rows


def _targets(run: SteadyRun, mode: Mode) -> list[Target]:
    """Targets that serve users (the API's budget, one request a second per key, makes
    per-poll CPU and "x a static file server" moot): Prometheus's scrape timeout is 10 s
    by default, and a dashboard refresh should never wait on the exporter."""
    after = run.codes["after"]
    targets = []
    for scrapers, (ours, floor) in after.steady.items():
        targets += [
            Target(
                f"every scrape ≤ 250 ms while polls land ({scrapers} scraper(s))",
                f"max {ms(ours.slowest)} ms",
                ours.slowest <= 0.25,
            ),
            Target(
                f"scrape p50 ≤ 3× the same bytes from a minimal server ({scrapers} scraper(s))",
                times(ratio(ours.p50, floor.p50)),
                ratio(ours.p50, floor.p50) <= 3,
            ),
        ]
    worst_lag = max(after.lags, default=float("nan"))
    return [
        *targets,
        Target("a poll's result in /metrics within 5 s", f"max {sec(worst_lag)} s", worst_lag <= 5),
        Target(
            f"RSS ≤ 200 MiB at {run.projects} × {mode.products} after text, OpenMetrics, gzip",
            f"{after.rss_formats:.0f} MiB",
            after.rss_formats <= 200,
        ),
        Target(
            f"peak ≤ 250 MiB under {mode.scrapers} scrapers while polling",
            f"{after.peak:.0f} MiB",
            after.peak <= 250,
        ),
    ]
