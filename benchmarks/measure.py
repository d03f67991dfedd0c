"""Measuring helpers shared by the benchmarks (and the budget test): windows, RSS, CPU."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def busiest_window(times: Sequence[float], window: float) -> int:
    """The most requests in any half-open window [t, t + window): what a per-minute
    rate limit counts."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        while ordered[start] + window <= t:
            start += 1
        best = max(best, end - start + 1)
    return best


def status_kib(pid: int | str, field: str) -> int:
    """A `/proc/PID/status` figure in KiB (VmRSS: now, VmHWM: the peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def rss_mib(pid: int | str = "self") -> float:
    return status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int | str = "self") -> float:
    return status_kib(pid, "VmHWM") / 1024


def cpu_seconds(pid: int | str = "self") -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
