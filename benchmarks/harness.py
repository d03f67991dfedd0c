"""The benchmarks' side of the wire: child processes, scrapers, the fake API's log, the report.

Everything here measures the exporter from outside, as Prometheus and the API see it,
so the same harness measures any version of the code that has the same command line.
"""

from __future__ import annotations

import gzip
import http.client
import itertools
import json
import math
import os
import platform
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.measure import cpu_seconds, median, peak_rss_mib, percentile, rss_mib

ROOT = Path(__file__).resolve().parent.parent
#: What Prometheus 2.x sends: it prefers OpenMetrics and always accepts gzip.
PROMETHEUS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}
TEXT = {"Accept": "text/plain"}
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}
OPEN_BUDGET = 100_000.0  # requests per minute: the limiter out of the way


@dataclass(frozen=True, slots=True)
class Mode:
    steady: int  # projects of the steady-state run (x `products`)
    big: int  # projects of the Prometheus-like run
    products: int
    phase: float  # seconds of each steady-state phase
    scrapers: int
    big_seconds: float
    scrape_interval: float  # the Prometheus-like run's, with `scrape_timeout`
    scrape_timeout: float
    warm_scrapes: int
    gauges: int  # projects of the naive-Gauges comparison
    interval_projects: int
    interval_rpm: float
    interval_periods: int
    budget_seconds: float
    teams: int
    team_projects: int
    team_rpm: float
    team_seconds: float
    isolation_seconds: float
    hostile: tuple[str, ...]
    slow_connections: int
    churn_cycles: int
    startups: int


@dataclass(frozen=True, slots=True)
class Code:
    """The code under test: this tree ("after") or the one `--compare` names ("before")."""

    label: str
    root: Path

    @property
    def commit(self) -> str:
        result = subprocess.run(
            ["git", "-C", str(self.root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout.strip() or "unknown"


@dataclass
class Report:
    """Tables as they are measured, printed at once and written as Markdown at the end."""

    parts: list[str] = field(default_factory=list)
    targets: list[tuple[str, str, str]] = field(default_factory=list)

    def table(self, title: str, text: str, header: Sequence[str], rows: list[list[str]]) -> None:
        widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
        print(f"\n{title}\n{text}")
        for row in (header, ["-" * w for w in widths], *rows):
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)))
        lines = [
            f"## {title}",
            "",
            text,
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        self.parts.append("\n".join(lines) + "\n")

    def target(self, what: str, figure: str, met: bool | None) -> None:
        verdict = "n/a" if met is None else ("met" if met else "**missed**")
        self.targets.append((what, figure, verdict))
        print(f"target: {what}: {figure} ({verdict})")

    def markdown(self, mode: str, codes: Sequence[Code], started: datetime) -> str:
        cpu = _cpu_model()
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        versions = ", ".join(f"{c.label} = `{c.commit}`" for c in codes)
        head = [
            "# Benchmark results",
            "",
            f"Run {started:%Y-%m-%d %H:%M} UTC with `python -m benchmarks"
            f"{'' if mode == 'full' else ' --' + mode}` on: {cpu}, {os.cpu_count()} cores, "
            f"{memory:.0f} GiB, Linux {platform.release()}, Python {platform.python_version()}. "
            f"Code: {versions}.",
            "",
            "Every figure comes from this one run; the exporter runs as `python -m exporter` "
            "and is measured from outside, beside a floor served in the same run. Timings on "
            "a shared machine are noisy: compare rows of one run, not runs of one day.",
            "",
        ]
        if self.targets:
            head += ["## Targets", "", "| target | measured (after) | verdict |", "|---|---|---|"]
            head += [f"| {w} | {f} | {v} |" for w, f, v in self.targets]
            head.append("")
        return "\n".join(head) + "\n" + "\n".join(self.parts)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


# --- processes -------------------------------------------------------------------


class Child:
    """A process that prints one line (its address) when ready, killed at the end."""

    def __init__(self, argv: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        self._log_file = log.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=self._log_file
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def first_line(self, timeout: float = 600) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line:
            raise RuntimeError(f"{self.proc.args!r} printed nothing: {self.log.read_text()[-800:]}")
        return line

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()


class Bench:
    """Where the run keeps its children, logs and files."""

    def __init__(self, mode: Mode, scratch: Path, stack: ExitStack) -> None:
        self.mode = mode
        self.scratch = scratch
        self.stack = stack
        self._count = 0

    def path(self, name: str) -> Path:
        self._count += 1
        return self.scratch / f"{self._count:03d}-{name}"

    def workload(self, *args: object) -> tuple[Child, str]:
        """A `benchmarks.workloads` process (always this tree's code) and its first line."""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = Child(
            [sys.executable, "-m", "benchmarks.workloads", *map(str, args)],
            env=env,
            cwd=ROOT,
            log=self.path(f"{args[0]}.log"),
        )
        self.stack.callback(child.stop)
        return child, child.first_line()

    @contextmanager
    def daemon(
        self,
        code: Code,
        api: str,
        *,
        rpm: float = OPEN_BUDGET,
        interval: float = 1,
        config: str | None = None,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> Iterator[Daemon]:
        """`python -m exporter` of `code` polling `api` with key bench-0 (or `config`)."""
        port = free_port()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("LATITUDESH_")}
        full_env.update(
            {
                "PYTHONPATH": str(code.root),
                "LATITUDESH_AUTH_TOKEN": "bench-0",
                "LATITUDESH_EXPORTER_API__BASE_URL": api,
                "LATITUDESH_EXPORTER_API__REQUESTS_PER_MINUTE": str(rpm),
                "LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS": str(interval),
                **(env or {}),
            }
        )
        argv = [
            sys.executable,
            "-m",
            "exporter",
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--log.level",
            "warn",
            *args,
        ]
        if config is not None:
            path = self.path("config.yaml")
            path.write_text(config)
            argv += ["--config.file", str(path)]
        child = Child(argv, env=full_env, cwd=self.scratch, log=self.path(f"{code.label}.log"))
        try:
            yield Daemon(child, f"http://127.0.0.1:{port}")
        finally:
            child.stop()


@dataclass
class Daemon:
    child: Child
    url: str

    @property
    def pid(self) -> int:
        return self.child.pid

    def wait_ready(self, timeout: float = 900, path: str = "/readyz") -> float:
        """Seconds from spawn until `path` says 200 (/healthz: listening)."""

        def ready() -> bool:
            if self.child.proc.poll() is not None:
                raise RuntimeError(f"exporter exited: {self.child.log.read_text()[-800:]}")
            try:
                return fetch(self.url + path, timeout=5)[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout, f"the exporter's {path}", step=0.05)
        return time.monotonic() - self.child.started

    def wait_full(self, projects: int, timeout: float = 900) -> tuple[float, bytes]:
        """Seconds from spawn until a scrape shows every project; that scrape's body."""
        self.wait_ready(timeout)
        deadline = time.monotonic() + timeout
        while True:
            status, body, _ = fetch(self.url + "/metrics", PROMETHEUS, timeout=300)
            seen = (
                gzip.decompress(body).count(b"\nlatitudesh_billing_price{") if status == 200 else 0
            )
            if seen >= projects:
                return time.monotonic() - self.child.started, body
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {seen} of {projects} projects after {timeout} s")
            time.sleep(0.05)

    def rss(self) -> float:
        return rss_mib(self.pid)

    def peak(self) -> float:
        return peak_rss_mib(self.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def log_count(self, text: str) -> int:
        return self.child.log.read_text(errors="replace").count(text)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


# --- HTTP from the scraper's side ------------------------------------------------------


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


# --- the fake API's log ------------------------------------------------------------


@dataclass
class ApiLog:
    requests: dict[str, list[float]]
    pages: dict[str, list[float]]
    served: list[tuple[str, int, float]]

    @classmethod
    def of(cls, api: str) -> ApiLog:
        _, body, _ = fetch(api + "/__bench__/log", timeout=120)
        data = json.loads(body)
        return cls(data["requests"], data["pages"], [tuple(s) for s in data["served"]])

    def refreshes(
        self, team: int = 0, start: float = 0.0, end: float = float("inf")
    ) -> list[tuple[float, float]]:
        """(first, last) answer time of every complete refresh of `team` within
        [start, end]: a refresh ends where a project is asked for again."""
        prefix = f"proj_b{team:02d}_"
        cycles: list[tuple[float, float]] = []
        seen: set[str] = set()
        first = last = None
        for project, _, at in self.served:
            if not project.startswith(prefix):
                continue
            if project in seen and first is not None and last is not None:
                cycles.append((first, last))
                seen, first = set(), None
            if first is None:
                first = at
            seen.add(project)
            last = at
        return [c for c in cycles if c[0] >= start and c[1] <= end]

    def answers(self, start: float, end: float) -> int:
        return sum(1 for _, _, at in self.served if start <= at <= end)

    def periods(self, project: str) -> list[float]:
        """Seconds between successive answers for `project`: its real refresh period."""
        times = [at for p, _, at in self.served if p == project]
        return [b - a for a, b in itertools.pairwise(times)]


def spans(cycles: list[tuple[float, float]]) -> list[float]:
    return [end - start for start, end in cycles]


# --- formatting ----------------------------------------------------------------------


def ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1000:,.1f}"


def sec(seconds: float, digits: int = 2) -> str:
    return "—" if math.isnan(seconds) else f"{seconds:,.{digits}f}"


def ratio(a: float, b: float) -> float:
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else float("nan")


def times(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}×"


# --- sections --------------------------------------------------------------------------
