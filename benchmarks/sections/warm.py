"""Section 1, warm cache: scrapes of a cache no poll touches, what earlier runs reported."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.harness import Bench, Code
from benchmarks.modes import Mode
from benchmarks.report import Findings, Table, ms, ratio, times
from benchmarks.scraping import PROMETHEUS, TEXT, Scraper, Scrapes, scrape_loop


@dataclass(frozen=True, slots=True)
class Warm:
    projects: int
    code: str  # the code's label, or "labelled Gauges (reference)"
    megabytes: float  # of the plain text
    ours: Scrapes
    floor: Scrapes | None  # None: the Gauges reference, scraped alone as plain text


def measure(bench: Bench, codes: Sequence[Code]) -> list[Warm]:
    mode = bench.mode
    figures: list[Warm] = []
    for projects in sorted({mode.gauges, mode.steady}):
        api = bench.api(projects, mode.products)
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
                figures.append(Warm(projects, code.label, size, ours, floor))
        if projects == mode.gauges:
            _, port = bench.workload("gauges", projects, mode.products)
            gauges = scrape_loop(
                [Scraper(f"http://127.0.0.1:{port}/metrics", TEXT)],
                rounds=min(mode.warm_scrapes, 10),
            )[0]
            reference = "labelled Gauges (reference)"
            figures.append(Warm(projects, reference, gauges.size / 1e6, gauges, None))
    return figures


def report(figures: list[Warm], mode: Mode) -> Findings:
    rows = []
    for f in figures:
        row = [
            f"{f.projects} × {mode.products}",
            f.code,
            f"{f.megabytes:.1f}",
            str(len(f.ours.seconds)),
            ms(f.ours.p50),
            ms(f.ours.p99),
        ]
        if f.floor is None:
            row += ["", "", "(plain text)"]
        else:
            row += [ms(f.floor.p50), ms(f.floor.p99), times(ratio(f.ours.p50, f.floor.p50))]
        rows.append(row)
    table = Table(
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
    return Findings([table])
