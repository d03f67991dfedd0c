"""Section 5: a big account (5,000 x 50) scraped on Prometheus' schedule while polls land."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.apilog import ApiLog
from benchmarks.harness import Bench, Code
from benchmarks.modes import Mode
from benchmarks.report import Findings, Table, Target, ms, sec
from benchmarks.scraping import PROMETHEUS, Scraper, Scrapes, scrape_loop


@dataclass(frozen=True, slots=True)
class PrometheusLike:
    code: str
    ready: float  # seconds from spawn to /readyz
    scrapes: Scrapes
    refreshes: int  # complete refreshes at the API, from start to the window's end
    window: float  # seconds scraped
    rss: float
    peak: float

    @property
    def within(self) -> int:
        """Scrapes answered within 1 s."""
        return sum(1 for s in self.scrapes.seconds if s <= 1)

    @property
    def total(self) -> int:
        return len(self.scrapes.seconds) + self.scrapes.failures


def measure(bench: Bench, codes: Sequence[Code]) -> list[PrometheusLike]:
    mode = bench.mode
    api = bench.api(mode.big, mode.products)
    figures = []
    for code in codes:
        with bench.daemon(code, api) as daemon:
            ready = daemon.wait_ready()
            start = time.monotonic()
            scrapes = scrape_loop(
                [Scraper(daemon.url + "/metrics", PROMETHEUS, timeout=mode.scrape_timeout)],
                mode.big_seconds,
                spacing=mode.scrape_interval,
            )[0]
            end = time.monotonic()
            rss, peak = daemon.rss(), daemon.peak()
        refreshes = len(ApiLog.of(api).refreshes(start=0, end=end))
        figures.append(
            PrometheusLike(code.label, ready, scrapes, refreshes, end - start, rss, peak)
        )
    return figures


def report(figures: list[PrometheusLike], mode: Mode) -> Findings:
    rows = [
        [
            f.code,
            sec(f.ready),
            str(f.total),
            str(f.within),
            str(f.scrapes.failures),
            ms(f.scrapes.p50),
            ms(f.scrapes.slowest),
            str(f.refreshes),
            sec(f.window, 0),
            sec(f.rss, 0),
            sec(f.peak, 0),
        ]
        for f in figures
    ]
    table = Table(
        f"5. Prometheus-like at {mode.big} × {mode.products}",
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
    targets = [
        Target(
            f"every scrape ≤ 1 s at {mode.big} × {mode.products}",
            f"{f.within} of {f.total} ≤ 1 s, max {ms(f.scrapes.slowest)} ms",
            f.within == f.total and f.total > 0,
        )
        for f in figures
        if f.code == "after"
    ]
    return Findings([table], targets)
