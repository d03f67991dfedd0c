"""`python -m benchmarks`: scrape cost, poll throughput, API budget, memory, start-up.

Prints a table per section and writes benchmarks/RESULTS.md with the machine it ran on.
`--quick` shrinks the sizes and the rate-limit run (about 3 minutes instead of ~10);
`--smoke` runs everything at toy sizes (for the test suite: proves the script works,
asserts nothing about speed).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from benchmarks.workloads import busiest_window, rss_bytes
from exporter.client import LatitudeClient
from exporter.poller import Poller, Target
from exporter.ratelimit import RequestBudget
from exporter.snapshot import SnapshotStore

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Mode:
    scrape_sizes: tuple[int, ...]
    products: int
    scrape_seconds: float
    throughput_projects: int
    latency: float
    budget_window: float
    budget_limit: float
    budget_seconds: float
    memory_projects: int
    churn_cycles: int
    startups: int


MODES = {
    "full": Mode((10, 100, 1000), 50, 20.0, 1000, 0.1, 60.0, 50, 130.0, 1000, 500, 5),
    "quick": Mode((10, 100, 1000), 50, 8.0, 300, 0.1, 60.0, 50, 65.0, 1000, 200, 3),
    "smoke": Mode((2,), 3, 0.5, 10, 0.01, 2.0, 5, 3.0, 3, 3, 1),
}


@dataclass
class Report:
    sections: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self, title: str, header: list[str], rows: list[list[str]]) -> None:
        self.sections.append((title, header, rows))
        widths = [max(len(str(c)) for c in column) for column in zip(header, *rows,
                                                                      strict=False)]
        print(f"\n{title}")
        for row in (header, ["-" * w for w in widths], *rows):
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)))

    def markdown(self, mode: str) -> str:
        lines = ["# Benchmark results", "",
                 f"Run {datetime.now(UTC):%Y-%m-%d %H:%M UTC} with `python -m benchmarks"
                 f"{'' if mode == 'full' else ' --' + mode}` on: {machine()}.", "",
                 "Medians with the spread (p99, or min–max) over several runs. Timings on a "
                 "shared machine are noisy; compare rows of one run, not runs of one day.", ""]
        for title, header, rows in self.sections:
            lines += [f"## {title}", "", "| " + " | ".join(header) + " |",
                      "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            lines.append("")
        if self.notes:
            lines += ["## Notes", ""] + [f"- {note}" for note in self.notes] + [""]
        return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // (1024 * 1024)
    return (f"{cpu}, {os.cpu_count()} cores, {memory} GiB, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


@contextmanager
def process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A workload server in its own process; yields it and the first line it prints."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.workloads", *args],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        yield proc, proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def scrape(port: int, gzip: bool = False) -> tuple[float, int]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"} if gzip else {})
    size = len(connection.getresponse().read())
    connection.close()
    return time.perf_counter() - started, size


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def scrape_cost(report: Report, mode: Mode) -> None:
    rows = []
    for projects in mode.scrape_sizes:
        series = projects * mode.products
        medians: dict[str, float] = {}
        for kind in ("ours", "gauges", "floor"):
            with process(kind, str(projects), str(mode.products)) as (proc, port):
                scrape(int(port))  # warm-up: ours renders its cache here
                times: list[float] = []
                cpu_before = cpu_seconds(proc.pid)
                deadline = time.monotonic() + mode.scrape_seconds
                size = 0
                while len(times) < 3 or (time.monotonic() < deadline and len(times) < 200):
                    elapsed, size = scrape(int(port))
                    times.append(elapsed)
                cpu = (cpu_seconds(proc.pid) - cpu_before) / len(times)
                medians[kind] = statistics.median(times)
                rows.append([f"{projects} × {mode.products}", f"{series:,}", kind,
                             str(len(times)), f"{statistics.median(times) * 1000:.1f}",
                             f"{percentile(times, 0.99) * 1000:.1f}", f"{cpu * 1000:.1f}",
                             f"{size / 1e6:.1f}"])
                if kind == "ours":
                    gz = [scrape(int(port), gzip=True)[0] for _ in range(3)]
                    rows.append(["", "", "ours, gzip", "3",
                                 f"{statistics.median(gz) * 1000:.1f}",
                                 f"{max(gz) * 1000:.1f}", "", ""])
        report.notes.append(
            f"scrape at {projects} projects: ours is {medians['ours'] / medians['floor']:.2f}× "
            f"the floor and {medians['gauges'] / medians['ours']:.1f}× faster than Gauges")
    report.table("1. Scrape cost (GET /metrics over loopback)",
                 ["projects × products", "product lines", "server", "scrapes", "median ms",
                  "p99 ms", "server CPU ms/scrape", "MB"], rows)


def poll_client(url: str, budget: RequestBudget,
                stop: threading.Event | None = None) -> LatitudeClient:
    return LatitudeClient(token=lambda: SecretStr("bench"), budget=budget, base_url=url,
                          max_connections=16, timeout=30, stop=stop)


def poll_throughput(report: Report, mode: Mode) -> None:
    projects = mode.throughput_projects
    walls = []
    with process("fakeapi", str(projects), "3", str(mode.latency)) as (_, url):
        targets = [Target(f"proj_bench_{p:05d}") for p in range(projects)]
        for _ in range(3):
            client = poll_client(url, RequestBudget(1e9))
            poller = Poller(client, SnapshotStore(), targets=targets, currency="USD",
                            concurrency=10)
            started = time.perf_counter()
            assert poller.refresh()
            walls.append(time.perf_counter() - started)
            poller.stop()
            client.close()
    floor = projects * mode.latency / 10
    report.table("2a. One full refresh, limiter out of the way (concurrency 10)",
                 ["projects", "API latency", "floor s", "median s", "min–max s",
                  "× floor"],
                 [[str(projects), f"{mode.latency * 1000:.0f} ms", f"{floor:.1f}",
                   f"{statistics.median(walls):.2f}", f"{min(walls):.2f}–{max(walls):.2f}",
                   f"{statistics.median(walls) / floor:.2f}"]])


def api_budget(report: Report, mode: Mode) -> None:
    """The default limiter against the API: requests counted where they arrive."""
    limit, window = mode.budget_limit, mode.budget_window
    with process("fakeapi", "100", "3", "0") as (_, url):
        stop = threading.Event()
        budget = RequestBudget(limit, window=window, stop=stop)
        client = poll_client(url, budget, stop)
        poller = Poller(client, SnapshotStore(), currency="USD", concurrency=4,
                        interval=1, budget_seconds=budget.seconds_for)
        poller.start()
        time.sleep(mode.budget_seconds)  # the measured run itself, not a wait for a thread
        stop.set()
        poller.stop(timeout=10)
        client.close()
        with urllib.request.urlopen(url + "/__demo__/requests") as answer:
            times = sorted(json.load(answer)["times"])
    busiest = busiest_window(times, window)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    report.table(f"2b. Default request budget ({limit:g} per {window:g} s), "
                 f"measured at the API over {mode.budget_seconds:g} s",
                 ["requests", f"most in any {window:g} s", "limit", "mean gap s",
                  "gap stdev s", "min gap s"],
                 [[str(len(times)), str(busiest), f"{limit:g}", f"{statistics.mean(gaps):.3f}",
                   f"{statistics.pstdev(gaps):.3f}", f"{min(gaps):.3f}"]])


def exporter_process(url: str, *extra: str, env: dict[str, str] | None = None,
                     ) -> tuple[subprocess.Popen[bytes], int]:
    from tests.conftest import free_port

    port = free_port()
    full = {**os.environ, "LATITUDESH_AUTH_TOKEN": "bench",
            "LATITUDESH_EXPORTER_API__BASE_URL": url,
            "LATITUDESH_EXPORTER_API__REQUESTS_PER_MINUTE": "600000", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "--web.listen-address",
                             f"127.0.0.1:{port}", *extra], env=full, cwd="/tmp",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


def until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except OSError:
            pass
        time.sleep(0.01)
    return False


def status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def one_request_per_project(report: Report, mode: Mode) -> None:
    projects = 20
    with process("fakeapi", str(projects), "3", "0") as (_, url):
        proc, port = exporter_process(url, env={"LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS":
                                                "2"})
        try:
            until(lambda: status(port, "/readyz") == 200, 60)
            scrapes = 0
            deadline = time.monotonic() + max(mode.scrape_seconds, 6)
            while time.monotonic() < deadline:
                scrape(port)
                scrapes += 1
                time.sleep(0.1)  # ten scrapes a second, as the benchmark prescribes
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        with urllib.request.urlopen(url + "/__demo__/requests") as answer:
            counts = json.load(answer)["counts"]
    refreshes = counts.get("/projects", 0)
    per_project = [n for key, n in counts.items() if key.startswith("/billing/usage")]
    report.table("2c. API requests per project per refresh while scraping 10×/s",
                 ["scrapes", "refreshes", "requests per project (min–max)",
                  "per project per refresh"],
                 [[str(scrapes), str(refreshes), f"{min(per_project)}–{max(per_project)}",
                   f"{statistics.mean(per_project) / max(refreshes, 1):.2f}"]])


def discovered(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as answer:
        for family in text_string_to_metric_families(answer.read().decode()):
            for sample in family.samples:
                if (sample.name == "latitudesh_api_requests_total"
                        and sample.labels == {"endpoint": "/projects", "code": "200"}):
                    return sample.value >= 1
    return False


def memory(report: Report, mode: Mode) -> None:
    rows = []
    for projects, products in ((0, 0), (mode.memory_projects, mode.products)):
        with process("fakeapi", str(projects), str(products), "0") as (_, url):
            proc, port = exporter_process(url, env={
                "LATITUDESH_EXPORTER_POLL__CONCURRENCY": "8"})
            try:
                if projects:
                    until(lambda p=port: status(p, "/readyz") == 200, 600)
                else:  # nothing to be ready for: wait for the (empty) discovery
                    until(lambda p=port: discovered(p), 60)
                scrape(port)
                rows.append([f"{projects} × {products}", f"{rss_bytes(proc.pid) / 2**20:.1f}"])
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    report.table("3a. Daemon RSS", ["projects × products loaded", "RSS MiB"], rows)
    churn = subprocess.run([sys.executable, "-m", "benchmarks.workloads", "churn",
                            str(mode.churn_cycles)], capture_output=True, text=True,
                           cwd=ROOT, check=True, timeout=3600)
    points = [line.split() for line in churn.stdout.splitlines()]
    rows = [[cycle, f"{int(rss) / 2**20:.1f}", lines] for cycle, rss, lines in points]
    report.table(f"3b. RSS over {mode.churn_cycles} refreshes with churn (projects, "
                 "products and hostnames change every refresh)",
                 ["refresh", "RSS MiB", "lines in /metrics"], rows)
    if len(points) > 2:
        growth = (int(points[-1][1]) - int(points[1][1])) / 2**20
        report.notes.append(f"RSS growth from refresh {points[1][0]} to {points[-1][0]} "
                            f"under churn: {growth:+.1f} MiB")


def startup(report: Report, mode: Mode) -> None:
    from tests.conftest import free_port

    times = []
    for _ in range(mode.startups):
        port = free_port()
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "exporter", "--demo",
                                 "--web.listen-address", f"127.0.0.1:{port}"], cwd="/tmp",
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            until(lambda p=port: status(p, "/readyz") == 200, 60)
            times.append(time.perf_counter() - started)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    report.table("4. Start-up to /readyz = 200 (demo mode)",
                 ["runs", "median s", "min–max s"],
                 [[str(len(times)), f"{statistics.median(times):.2f}",
                   f"{min(times):.2f}–{max(times):.2f}"]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true")
    group.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "RESULTS.md")
    parser.add_argument("--only", choices=("scrape", "throughput", "budget", "requests",
                                           "memory", "startup"), action="append")
    args = parser.parse_args(argv)
    # The stretched-interval warning and APScheduler's skipped runs are expected here.
    logging.basicConfig(level=logging.ERROR)
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = MODES[name]
    print(f"latitudesh-exporter benchmarks ({name}) on {machine()}")
    report = Report()
    steps = {"scrape": scrape_cost, "throughput": poll_throughput, "budget": api_budget,
             "requests": one_request_per_project, "memory": memory, "startup": startup}
    for key, step in steps.items():
        if not args.only or key in args.only:
            step(report, mode)
    for note in report.notes:
        print(f"- {note}")
    args.out.write_text(report.markdown(name))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
