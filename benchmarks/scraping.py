"""HTTP from the scraper's side: single requests, keep-alive scrapers, scrape loops."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from benchmarks.measure import median, percentile

#: What Prometheus 2.x sends: it prefers OpenMetrics and always accepts gzip.
PROMETHEUS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}
TEXT = {"Accept": "text/plain"}
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}


def fetch(
    url: str, headers: dict[str, str] | None = None, *, timeout: float = 60
) -> tuple[int, bytes, float]:
    """(status, body, seconds) of one GET on a fresh connection."""
    parts = urlsplit(url)
    started = time.monotonic()
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request(
            "GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {}
        )
        answer = conn.getresponse()
        return answer.status, answer.read(), time.monotonic() - started
    finally:
        conn.close()


def control(api: str, data: dict[str, Any]) -> None:
    """Tell the fake API of `benchmarks.workloads api` to change: {"latency": seconds},
    {"storm": [keys answered 429]}."""
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


class Scraper:
    """One keep-alive connection, as Prometheus keeps one per target."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float = 120) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname or "", parts.port, parts.path
        self.headers, self.timeout = headers, timeout
        self.conn: http.client.HTTPConnection | None = None

    def scrape(self) -> tuple[float, int]:
        """(seconds, bytes) of one scrape; OSError (timeouts included) on failure."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        started = time.monotonic()
        try:
            self.conn.request("GET", self.path, headers=self.headers)
            answer = self.conn.getresponse()
            body = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise OSError(str(exc)) from exc
        if answer.status != 200:
            raise OSError(f"status {answer.status}")
        return time.monotonic() - started, len(body)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class Scrapes:
    seconds: list[float] = field(default_factory=list)
    failures: int = 0
    size: int = 0
    wall: float = 0.0

    def add(self, other: Scrapes) -> None:
        self.seconds += other.seconds
        self.failures += other.failures
        self.size = other.size or self.size
        self.wall = max(self.wall, other.wall)

    @property
    def p50(self) -> float:
        return median(self.seconds)

    @property
    def p99(self) -> float:
        return percentile(self.seconds, 0.99)

    @property
    def slowest(self) -> float:
        return max(self.seconds, default=float("nan"))

    @property
    def rate(self) -> float:
        return len(self.seconds) / self.wall if self.wall else 0.0


def scrape_loop(
    scrapers: Sequence[Scraper],
    seconds: float = 0.0,
    *,
    spacing: float = 0.0,
    rounds: int | None = None,
) -> list[Scrapes]:
    """Scrape each of `scrapers` in turn (interleaved: the same moments for each) for
    `rounds`, or until `seconds` have passed and the round in flight is done."""
    results = [Scrapes() for _ in scrapers]
    started = time.monotonic()
    done = 0
    while (done < rounds) if rounds is not None else (time.monotonic() - started < seconds):
        done += 1
        round_started = time.monotonic()
        for scraper, result in zip(scrapers, results, strict=True):
            try:
                elapsed, size = scraper.scrape()
                result.seconds.append(elapsed)
                result.size = size
            except OSError:
                result.failures += 1
        if spacing:
            time.sleep(max(0.0, spacing - (time.monotonic() - round_started)))
    for result in results:
        result.wall = time.monotonic() - started
    for scraper in scrapers:
        scraper.close()
    return results


def concurrent_scrapes(url: str, headers: dict[str, str], count: int, seconds: float) -> Scrapes:
    """`count` scrapers at once, each as fast as it is answered."""
    total = Scrapes()
    parts: list[Scrapes] = []

    def one() -> None:
        parts.extend(scrape_loop([Scraper(url, headers)], seconds))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for part in parts:
        total.add(part)
    total.wall = max((p.wall for p in parts), default=0.0)
    return total


def beside_floor(url: str, floor: str, scrapers: int, seconds: float) -> tuple[Scrapes, Scrapes]:
    """Scrapes of the exporter and of the floor in the same conditions: one scraper
    alternates between the two, several hammer each in turn."""
    if scrapers == 1:
        ours, base = scrape_loop([Scraper(url, PROMETHEUS), Scraper(floor, PROMETHEUS)], seconds)
        return ours, base
    ours = concurrent_scrapes(url, PROMETHEUS, scrapers, seconds)
    return ours, concurrent_scrapes(floor, PROMETHEUS, scrapers, seconds / 2)
