"""Section 13: start-up of the demo, spawn to /readyz = 200."""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.harness import Bench, Code
from benchmarks.measure import median
from benchmarks.modes import Mode
from benchmarks.report import Findings, Table, sec


def measure(bench: Bench, codes: Sequence[Code]) -> dict[str, list[float]]:
    """Per code, the seconds of each start-up."""
    runs: dict[str, list[float]] = {}
    for code in codes:
        for _ in range(bench.mode.startups):
            with bench.daemon(code, "http://127.0.0.1:9", args=["--demo"]) as daemon:
                runs.setdefault(code.label, []).append(daemon.wait_ready(60))
    return runs


def report(runs: dict[str, list[float]], mode: Mode) -> Findings:
    table = Table(
        "13. Start-up of the demo to /readyz = 200",
        "",
        ["code", "runs", "median s", "min–max s"],
        [
            [label, str(len(r)), sec(median(r)), f"{sec(min(r))}–{sec(max(r))}"]
            for label, r in runs.items()
        ],
    )
    return Findings([table])
