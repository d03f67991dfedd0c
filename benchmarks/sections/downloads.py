"""Section 17: the finance files (issue 33) at 1,000 x 50.

A state file with every project's current answer and its last closed period (built
with the SQLite backend, as section 16 builds them); a daemon started on it with the
API hanging (what it serves is the file's). Then each file downloaded once, a fresh
connection each: the time to its last byte, its size and rows, and the daemon's RSS
sampled every 20 ms meanwhile against its RSS just before (the files are streamed:
their rows must never be held whole). This tree's code only (the files are new).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from benchmarks.harness import Bench, Code
from benchmarks.modes import Mode
from benchmarks.report import Findings, Table, Target, sec
from benchmarks.scraping import control
from benchmarks.sections.periods import build
from benchmarks.sections.state import warm_env

#: Targets of issue 33.
SECONDS = 2.0
#: RSS growth while a file is downloaded, as a share of the file's size: streamed, it
#: never holds more than a few chunks.
GROWTH_SHARE = 0.25
FILES = (
    "/focus.csv",
    "/showback.csv",
    "/showback.json",
    "/focus.csv?period=previous",
)


def download(url: str) -> tuple[int, bytes, float]:
    """(status, body, seconds to the last byte) of one GET as HTTP/1.0: the body comes
    as it is, ended by the close (no chunks to decode), read as fast as a finance
    tool or curl reads it (Python's http.client decodes chunks a few times slower
    than the exporter makes them: it would measure itself)."""
    parts = urlsplit(url)
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=300) as sock:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        sock.sendall(f"GET {target} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
        received = bytearray()
        while chunk := sock.recv(1 << 20):
            received += chunk
    seconds = time.monotonic() - started
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body, seconds


@dataclass
class Download:
    seconds: float = float("nan")
    mib: float = float("nan")
    rows: int = 0
    rss_before: float = float("nan")
    rss_peak: float = float("nan")

    @property
    def growth(self) -> float:
        return self.rss_peak - self.rss_before


@dataclass
class DownloadsRun:
    projects: int
    products: int
    files: dict[str, Download] = field(default_factory=dict)


def measure(bench: Bench, codes: Sequence[Code]) -> DownloadsRun:
    after = codes[0]
    projects, products = bench.mode.steady, bench.mode.products
    run = DownloadsRun(projects, products)
    api = bench.api(projects, products)
    path = bench.path("downloads") / "state.db"
    build(path, projects, products, closed=1, points=0)
    control(api, {"latency": 3600})  # the API hangs: everything served is from the file
    try:
        with bench.daemon(after, api, env=warm_env(path)) as daemon:
            daemon.wait_full(projects, timeout=120)
            for name in FILES:
                figures = run.files[name] = Download()
                figures.rss_before = daemon.rss()
                peak = [figures.rss_before]
                done = threading.Event()

                def sample(peak: list[float] = peak, done: threading.Event = done) -> None:
                    while not done.wait(0.02):
                        peak[0] = max(peak[0], daemon.rss())

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                try:
                    status, body, seconds = download(daemon.url + name)
                finally:
                    done.set()
                    sampler.join()
                assert status == 200, (name, status, body[:200])
                figures.seconds = seconds
                figures.mib = len(body) / (1024 * 1024)
                # CSV: a line a row after the header; JSON: an object a row
                json_rows = body.count(b'{"team":')
                figures.rows = json_rows if ".json" in name else body.count(b"\n") - 1
                figures.rss_peak = peak[0]
    finally:
        control(api, {"latency": 0})
    return run


def report(run: DownloadsRun, mode: Mode) -> Findings:
    table = Table(
        f"17. Downloads: {run.projects:,} x {run.products}, each file once",
        "A daemon warm-started on a state file of every project's current answer and its "
        "last closed period, the API hanging; each file downloaded once on a fresh "
        "connection: the time to its last byte, and the daemon's RSS sampled every 20 ms "
        "meanwhile against just before.",
        ["file", "rows", "size", "seconds", "RSS before MiB", "RSS growth MiB"],
        [
            [
                name,
                f"{f.rows:,}",
                f"{f.mib:.1f} MiB",
                sec(f.seconds),
                f"{f.rss_before:.0f}",
                f"{f.growth:+.1f}",
            ]
            for name, f in run.files.items()
        ],
    )
    slowest = max(run.files.values(), key=lambda f: f.seconds)
    worst = max(run.files.values(), key=lambda f: f.growth / max(f.mib, 1e-9))
    targets = [
        Target(
            f"each file of {run.projects:,} x {run.products} within {SECONDS:g} s",
            sec(slowest.seconds),
            slowest.seconds <= SECONDS,
        ),
        Target(
            f"RSS growth while downloading ≤ {GROWTH_SHARE:.0%} of the file's size",
            f"{worst.growth:+.1f} MiB for {worst.mib:.1f} MiB",
            worst.growth <= GROWTH_SHARE * worst.mib,
        ),
    ]
    return Findings([table], targets)
