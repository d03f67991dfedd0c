"""Section 12: RSS over many refreshes whose projects, products and hostnames all change."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.harness import Bench, Code
from benchmarks.modes import Mode
from benchmarks.report import Findings, Table

EVERY = 50  # refreshes between two RSS readings (benchmarks.workloads churn)


@dataclass(frozen=True, slots=True)
class Reading:
    refresh: str
    rss: str  # MiB
    lines: str  # in /metrics


def measure(bench: Bench, codes: Sequence[Code]) -> list[Reading]:
    """This tree only, in one process (`benchmarks.workloads churn`)."""
    cycles = bench.mode.churn_cycles
    child, first = bench.workload("churn", cycles)
    lines = [first]
    while len(lines) < cycles // EVERY + 1:
        lines.append(child.first_line())
    return [Reading(*line.split()) for line in lines]


def report(readings: list[Reading], mode: Mode) -> Findings:
    table = Table(
        f"12. RSS over {mode.churn_cycles} refreshes with churn",
        "Projects, products and hostnames change every refresh (poll → store → exposition "
        f"in one process); RSS every {EVERY} refreshes.",
        ["refresh", "RSS MiB", "lines in /metrics"],
        [[r.refresh, r.rss, r.lines] for r in readings],
    )
    return Findings([table])
