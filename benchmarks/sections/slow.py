"""Section 11: scrapes while many idle and slowloris connections are held open."""

from __future__ import annotations

import resource
import socket
import threading
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import urlsplit

from benchmarks.harness import Bench, Code
from benchmarks.measure import status_kib
from benchmarks.modes import Mode
from benchmarks.report import Findings, Table, ms, sec
from benchmarks.scraping import PROMETHEUS, Scraper, Scrapes, scrape_loop


@dataclass(frozen=True, slots=True)
class Slow:
    code: str
    scrapes: Scrapes
    rss_before: float
    rss_held: float
    threads: int


def measure(bench: Bench, codes: Sequence[Code]) -> list[Slow]:
    mode = bench.mode
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    api = bench.api(10, 5)
    figures = []
    try:
        for code in codes:
            with bench.daemon(code, api) as daemon:
                daemon.wait_full(10)
                before = daemon.rss()
                held = _hold(daemon.url, mode.slow_connections)
                try:
                    scrapes = scrape_loop(
                        [Scraper(daemon.url + "/metrics", PROMETHEUS, timeout=5)],
                        mode.slow_seconds,
                        spacing=0.25,
                    )[0]
                    threads = status_kib(daemon.pid, "Threads")
                    rss = daemon.rss()
                finally:
                    held.close()
            figures.append(Slow(code.label, scrapes, before, rss, threads))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return figures


class _Held:
    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.stop = threading.Event()

    def close(self) -> None:
        self.stop.set()
        for sock in self.sockets:
            sock.close()


def _hold(url: str, count: int) -> _Held:
    """`count` connections: half idle, half sending one header byte a second."""
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


def report(figures: list[Slow], mode: Mode) -> Findings:
    rows = [
        [
            f.code,
            str(mode.slow_connections),
            str(len(f.scrapes.seconds)),
            str(f.scrapes.failures),
            ms(f.scrapes.p50),
            ms(f.scrapes.slowest),
            sec(f.rss_before, 1),
            sec(f.rss_held, 1),
            str(f.threads),
        ]
        for f in figures
    ]
    table = Table(
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
    return Findings([table])
