"""Section 15: the state store (issue 31) at 1,000 x 50, on and off.

A restart with the API down (it hangs) until the first complete `/metrics`, served from
the state file alone; the state's cost per poll (the daemon's CPU per answer served,
polls back to back, on against off); the file's size; RSS and scrape latency with the
state on and off. One daemon per setting, this tree's code only (the state is new).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.apilog import ApiLog
from benchmarks.harness import Bench, Code
from benchmarks.measure import percentile
from benchmarks.modes import Mode
from benchmarks.report import Findings, Table, Target, ms, sec
from benchmarks.scraping import PROMETHEUS, control, fetch
from benchmarks.sections.steady import STEADY_LATENCY

#: Targets of issue 31.
WARM_START_SECONDS = 5.0
WRITE_SHARE = 0.20
RSS_SHARE = 0.10


@dataclass
class Setting:
    """One daemon's figures: the state off, or on."""

    cpu_per_poll: float = float("nan")
    rss: float = float("nan")
    scrapes: list[float] = field(default_factory=list)


@dataclass
class StateRun:
    projects: int
    products: int
    settings: dict[str, Setting]
    file_mib: float = float("nan")
    warm_start: float = float("nan")


def file_mib(path: Path) -> float:
    """The state file's size with its -wal and -shm, in MiB."""
    return sum(f.stat().st_size for f in path.parent.glob(f"{path.name}*") if f.is_file()) / (
        1024 * 1024
    )


def warm_env(path: Path) -> dict[str, str]:
    """A daemon on the state file `path` beside an API that hangs: its polls end soon,
    so that it stops at once after the figure."""
    return {
        "LATITUDESH_EXPORTER_STATE__PATH": str(path),
        "LATITUDESH_EXPORTER_API__TIMEOUT_SECONDS": "2",
        "LATITUDESH_EXPORTER_API__MAX_RETRIES": "0",
    }


def measure(bench: Bench, codes: Sequence[Code]) -> StateRun:
    after = codes[0]
    mode = bench.mode
    projects, products = mode.steady, mode.products
    api = bench.api(projects, products)
    path = bench.path("state") / "state.db"
    run = StateRun(projects, products, {})
    for name, env in (
        ("off", {"LATITUDESH_EXPORTER_STATE__ENABLED": "false"}),
        ("on", {"LATITUDESH_EXPORTER_STATE__PATH": str(path)}),
    ):
        setting = run.settings[name] = Setting()
        with bench.daemon(after, api, env=env) as daemon:
            daemon.wait_full(projects)
            # about ten polls a second, as the steady state measures: every answer is
            # a write when the state is on
            control(api, {"latency": STEADY_LATENCY})
            metrics = daemon.url + "/metrics"
            cpu_start, start = daemon.cpu(), time.monotonic()
            while time.monotonic() - start < mode.phase or len(setting.scrapes) < 20:
                setting.scrapes.append(fetch(metrics, PROMETHEUS, timeout=300)[2])
                time.sleep(0.1)
            cpu_end, end = daemon.cpu(), time.monotonic()
            # RSS past the minute's malloc trim, as a daemon that runs for a while holds
            while time.monotonic() < daemon.child.started + mode.tuning_settle:
                setting.scrapes.append(fetch(metrics, PROMETHEUS, timeout=300)[2])
                time.sleep(0.5)
            setting.rss = daemon.rss()
            control(api, {"latency": 0})
            answers = ApiLog.of(api).answers(start, end)
            setting.cpu_per_poll = (cpu_end - cpu_start) / answers if answers else float("nan")
    run.file_mib = file_mib(path)
    control(api, {"latency": 3600})  # the API hangs from now on
    try:
        with bench.daemon(after, api, env=warm_env(path)) as daemon:
            run.warm_start, _ = daemon.wait_full(projects, timeout=120)
    finally:
        control(api, {"latency": 0})
    return run


def report(run: StateRun, mode: Mode) -> Findings:
    off, on = run.settings["off"], run.settings["on"]
    write_share = on.cpu_per_poll / off.cpu_per_poll - 1
    rss_share = on.rss / off.rss - 1
    rows = [
        [
            name,
            ms(s.cpu_per_poll),
            f"{s.rss:.0f}",
            ms(percentile(s.scrapes, 0.5)),
            ms(percentile(s.scrapes, 0.99)),
        ]
        for name, s in run.settings.items()
    ]
    table = Table(
        f"15. State: {run.projects:,} x {run.products}, on and off",
        "CPU per poll at about ten polls a second; the state file written once a second; "
        "scrapes gzip, one at a time. Warm start: spawn to the first /metrics showing "
        "every project, the API hanging, from the state file alone.",
        ["state", "CPU per poll ms", "RSS MiB", "scrape p50 ms", "scrape p99 ms"],
        rows,
    )
    extra = Table(
        "15b. State: warm start and file",
        "",
        ["warm start (API down)", "state file", "write cost per poll", "RSS on vs off"],
        [
            [
                sec(run.warm_start),
                f"{run.file_mib:.1f} MiB",
                f"{write_share:+.0%}",
                f"{rss_share:+.1%}",
            ]
        ],
    )
    targets = [
        Target(
            f"first complete /metrics after a restart, API down ≤ {WARM_START_SECONDS:g} s",
            sec(run.warm_start),
            run.warm_start <= WARM_START_SECONDS,
        ),
        Target(
            f"state write cost per poll ≤ {WRITE_SHARE:.0%} of a poll's CPU",
            f"{write_share:+.0%}",
            write_share <= WRITE_SHARE,
        ),
        Target(
            f"RSS with the state on within {RSS_SHARE:.0%} of off",
            f"{rss_share:+.1%}",
            abs(rss_share) <= RSS_SHARE,
        ),
    ]
    return Findings([table, extra], targets)
