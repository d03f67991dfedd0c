"""Section 14: what `exporter/runtime.py`'s tuning is worth, on and off and piece by piece.

One daemon per configuration at 1,000 x 50 (as in sections 2 to 4): polls back to back
without scrapers (CPU per project), then one scraper while polls run back to back, then
one scraper at ten polls a second (the steady state), then RSS once the minute's
housekeeping job has run. Every configuration runs `tuning_rounds` times, in a rotated
order, under this Python and each interpreter `--python` names.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import tuned
from benchmarks.apilog import ApiLog
from benchmarks.harness import AFTER, Bench, Code
from benchmarks.measure import median
from benchmarks.modes import Mode
from benchmarks.report import Findings, Table, ms, ratio, sec
from benchmarks.scraping import (
    OPENMETRICS,
    PROMETHEUS,
    TEXT,
    Scraper,
    Scrapes,
    control,
    fetch,
    scrape_loop,
)
from benchmarks.sections.steady import STEADY_LATENCY
from testing.waits import wait_for

#: configuration -> (exporter flags, PIECES of `benchmarks.tuned`), which runs the daemon
#: with its collections timed; "shipped" leaves `runtime.tune` as it is. Each piece of
#: `runtime.tune` alone too, while it has more than one.
CONFIGS: dict[str, tuple[tuple[str, ...], str]] = {
    "off": (("--runtime.tuning", "off"), "shipped"),
    "on (as shipped)": ((), "shipped"),
    **{f"{tuned.NAMES[p]} only": ((), p) for p in tuned.PIECES if len(tuned.PIECES) > 1},
}


@dataclass(frozen=True, slots=True)
class Collections:
    """The daemon's garbage collections over the measured phases."""

    seconds: float  # of the phases
    in_gc: float  # seconds in collections, every generation
    full: int  # collections of the oldest generation
    longest: float  # seconds, the longest collection

    @property
    def share(self) -> float:
        return self.in_gc / self.seconds if self.seconds else float("nan")


@dataclass(frozen=True, slots=True)
class Run:
    python: str  # its version, "3.11.7"
    config: str
    round: int
    cpu_per_project: float  # seconds, polls back to back without scrapers
    stress_polls: float  # per second, in that phase
    stress: Scrapes  # one scraper while polls run back to back
    steady: Scrapes  # one scraper at ten polls a second
    steady_polls: float
    rss: float  # MiB, settled, after the housekeeping job ran once
    peak: float
    load: float  # the machine's 1-minute load average at the end: others' work shows here
    gc: Collections


def measure(bench: Bench, codes: Sequence[Code]) -> list[Run]:
    """This tree only, under each of the run's interpreters (`--python`)."""
    mode = bench.mode
    runs = []
    for python in bench.pythons:
        version = _version(python)
        api = bench.api(mode.steady, mode.products)
        names = list(CONFIGS)
        for round_ in range(mode.tuning_rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for config in order:
                run = _one(bench, api, python, version, config, round_)
                runs.append(run)
                print(
                    f"  tuning: Python {version}, {config}, round {round_ + 1}: steady p50 "
                    f"{ms(run.steady.p50)} p99 {ms(run.steady.p99)} ms, stress p99 "
                    f"{ms(run.stress.p99)} ms, CPU {sec(run.cpu_per_project * 1000)} ms per "
                    f"project, gc {run.gc.share * 100:.1f} % ({run.gc.full} full, longest "
                    f"{ms(run.gc.longest)} ms), RSS {run.rss:.0f} MiB, load {run.load:.1f}",
                    flush=True,
                )
    return runs


def _version(python: str) -> str:
    result = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def _one(bench: Bench, api: str, python: str, version: str, config: str, round_: int) -> Run:
    mode = bench.mode
    flags, pieces = CONFIGS[config]
    control(api, {"latency": 0})
    stats = bench.path("gc.json")
    env = {"BENCH_GC_STATS": str(stats)}
    module = ("benchmarks.tuned", pieces)
    with bench.daemon(AFTER, api, args=flags, python=python, module=module, env=env) as daemon:
        daemon.wait_full(mode.steady)
        metrics = daemon.url + "/metrics"
        fresh = 0.6 if mode.tuning_settle else 0.0  # collections are dumped every 0.5 s
        time.sleep(fresh)
        before = _collections(stats)
        idle_start, cpu_start = time.monotonic(), daemon.cpu()
        time.sleep(mode.tuning_phase)
        idle_end, cpu_end = time.monotonic(), daemon.cpu()
        stress = scrape_loop([Scraper(metrics, PROMETHEUS)], mode.tuning_phase)[0]
        control(api, {"latency": STEADY_LATENCY})
        time.sleep(min(2 * STEADY_LATENCY, mode.phase))  # polls in flight end
        steady_start = time.monotonic()
        steady = scrape_loop([Scraper(metrics, PROMETHEUS)], mode.tuning_phase)[0]
        steady_end = time.monotonic()
        time.sleep(fresh)
        gc_figures = _window(before, _collections(stats), idle_start, steady_end)
        for headers in (TEXT, OPENMETRICS, PROMETHEUS):
            fetch(metrics, headers, timeout=300)
        # past the minute's housekeeping (collection and trim), then settled
        time.sleep(max(0.0, daemon.child.started + mode.tuning_settle - time.monotonic()))
        time.sleep(1 if mode.tuning_settle else 0.1)
        rss, peak = daemon.rss(), daemon.peak()
        control(api, {"latency": 0})
    log = ApiLog.of(api)
    answers = log.answers(idle_start, idle_end)
    return Run(
        python=version,
        config=config,
        round=round_,
        cpu_per_project=(cpu_end - cpu_start) / answers if answers else float("nan"),
        stress_polls=answers / (idle_end - idle_start),
        stress=stress,
        steady=steady,
        steady_polls=log.answers(steady_start, steady_end) / (steady_end - steady_start),
        rss=rss,
        peak=peak,
        load=os.getloadavg()[0],
        gc=gc_figures,
    )


def _collections(path: Path) -> dict[str, Any]:
    """What `benchmarks.tuned` wrote of the daemon's collections so far."""

    def written() -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data

    found: dict[str, Any] = wait_for(written, 30, f"the daemon's collections in {path}")
    return found


def _window(before: dict[str, Any], after: dict[str, Any], start: float, end: float) -> Collections:
    longest = [s for at, _, s in after["long"] if start <= at <= end]
    return Collections(
        seconds=end - start,
        in_gc=sum(after["seconds"]) - sum(before["seconds"]),
        full=after["count"][2] - before["count"][2],
        longest=max(longest, default=0.0),
    )


# --- reporting ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One configuration under one interpreter, its rounds pooled."""

    python: str
    config: str
    rounds: int
    steady: Scrapes
    steady_polls: float
    stress: Scrapes
    cpu_per_project: float
    rss: float
    peak: float
    load: float
    gc_share: float  # of the time in collections
    full: float  # collections of the oldest generation per run
    longest: float  # seconds, the longest collection of any round


def pooled(runs: Sequence[Run]) -> list[Row]:
    """Scrapes of every round together (their percentiles), the rest the rounds' median."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.python, run.config), []).append(run)
    rows = []
    for python in dict.fromkeys(r.python for r in runs):
        for config in CONFIGS:
            group = groups.get((python, config))
            if not group:
                continue
            steady, stress = Scrapes(), Scrapes()
            for run in group:
                steady.add(run.steady)
                stress.add(run.stress)
            rows.append(
                Row(
                    python,
                    config,
                    len(group),
                    steady,
                    median([r.steady_polls for r in group]),
                    stress,
                    median([r.cpu_per_project for r in group]),
                    median([r.rss for r in group]),
                    median([r.peak for r in group]),
                    median([r.load for r in group]),
                    median([r.gc.share for r in group]),
                    median([r.gc.full for r in group]),
                    max(r.gc.longest for r in group),
                )
            )
    return rows


def report(runs: list[Run], mode: Mode) -> Findings:
    rows = pooled(runs)
    off = {r.python: r for r in rows if r.config == "off"}
    cells = []
    for r in rows:
        base = off.get(r.python)
        cells.append(
            [
                r.python,
                r.config,
                str(r.rounds),
                f"{r.steady_polls:.0f}",
                str(len(r.steady.seconds)),
                ms(r.steady.p50),
                ms(r.steady.p99),
                ms(r.steady.slowest),
                ms(r.stress.p50),
                ms(r.stress.p99),
                sec(r.cpu_per_project * 1000),
                f"{r.gc_share * 100:.1f} %",
                f"{r.full:.0f}",
                ms(r.longest),
                sec(r.rss, 1),
                sec(r.peak, 1),
                _versus(r, base),
                sec(r.load, 1),
            ]
        )
    table = Table(
        f"14. Runtime tuning, on and off and piece by piece, {mode.steady} × {mode.products}",
        "`exporter/runtime.py` off (`--runtime.tuning off`), on (as shipped), and each piece "
        "alone: gc = freeze, thresholds and a full collection a minute; switch interval = "
        "1 ms; malloc = two arenas (`mallopt`, no MALLOC_ARENA_MAX set) and `malloc_trim` a "
        "minute. Every daemon runs through `python -m benchmarks.tuned PIECES` (which times "
        "its garbage collections and, for a piece alone, applies that piece in place of "
        "`runtime.tune`). One daemon per configuration and round "
        f"({mode.tuning_rounds} round(s), configurations in rotated order): "
        f"{mode.tuning_phase:.0f} s of polls back to back without scrapers (CPU per project), "
        f"{mode.tuning_phase:.0f} s of one scraper beside them (stress), "
        f"{mode.tuning_phase:.0f} s of one scraper at about ten polls a second (steady, as "
        "section 2), then text, OpenMetrics and gzip scrapes and, a second later, RSS (as "
        "section 4; at least 65 s after start, so the minute's housekeeping ran once, "
        "before those scrapes). Scraped as Prometheus does (OpenMetrics, gzip); percentiles "
        "over every round's scrapes, the other figures the rounds' median (the longest "
        "collection: of any round). Time in gc, full collections and the longest: over the "
        "three phases, from `gc.callbacks`. Load: the machine's 1-minute load average at the "
        "end of a run (the daemon, the fake API and the scraper make about 2; more is "
        "someone else's work).",
        [
            "Python",
            "tuning",
            "rounds",
            "polls/s",
            "scrapes",
            "steady p50 ms",
            "steady p99 ms",
            "steady max ms",
            "stress p50 ms",
            "stress p99 ms",
            "CPU ms per project",
            "time in gc",
            "full collections",
            "longest collection ms",
            "RSS MiB",
            "peak MiB",
            "vs off: steady p99, CPU, RSS",
            "load",
        ],
        cells,
    )
    return Findings([table])


def _versus(row: Row, off: Row | None) -> str:
    if off is None or row is off:
        return ""
    return ", ".join(
        "—" if math.isnan(ratio(a, b)) else f"{(ratio(a, b) - 1) * 100:+.0f} %"
        for a, b in (
            (row.steady.p99, off.steady.p99),
            (row.cpu_per_project, off.cpu_per_project),
            (row.rss, off.rss),
        )
    )
