"""The sections of `python -m benchmarks`, in the order of RESULTS.md.

Each section is a module with two halves: `measure(bench, codes)` runs what it
measures and returns plain dataclasses of figures; `report(figures, mode)` turns
them into tables and target verdicts (`benchmarks.report.Findings`) and measures
nothing. `codes` are the code under test ("after", this tree) and, with `--compare`,
the older code ("before"); a section that needs this version's own flags or config
measures "after" alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.harness import Bench, Code
from benchmarks.modes import Mode
from benchmarks.report import Findings
from benchmarks.sections import (
    churn,
    demo,
    downloads,
    hostile,
    isolation,
    pacing,
    periods,
    prometheus,
    slow,
    state,
    steady,
    teams,
    tuning,
    warm,
)


@dataclass(frozen=True, slots=True)
class Section:
    measure: Callable[[Bench, Sequence[Code]], Any]
    report: Callable[[Any, Mode], Findings]
    headings: tuple[str, ...]  # the start of each table's title, as RESULTS.md shows it


SECTIONS: dict[str, Section] = {
    "warm": Section(warm.measure, warm.report, ("1. Warm cache",)),
    "steady": Section(
        steady.measure,
        steady.report,
        ("2. Steady state", "3. Stress", "3b. Refresh", "4. Poll cost, memory, freshness"),
    ),
    "prometheus": Section(prometheus.measure, prometheus.report, ("5. Prometheus-like",)),
    "pacing": Section(pacing.measure, pacing.report, ("6. True intervals", "7. The default")),
    "teams": Section(teams.measure, teams.report, ("8. Teams",)),
    "isolation": Section(isolation.measure, isolation.report, ("9. Two keys",)),
    "hostile": Section(hostile.measure, hostile.report, ("10. Hostile answers",)),
    "slow": Section(slow.measure, slow.report, ("11. Slow and idle clients",)),
    "churn": Section(churn.measure, churn.report, ("12. RSS over",)),
    "demo": Section(demo.measure, demo.report, ("13. Start-up of the demo",)),
    "tuning": Section(tuning.measure, tuning.report, ("14. Runtime tuning",)),
    "state": Section(state.measure, state.report, ("15. State", "15b. State")),
    "periods": Section(periods.measure, periods.report, ("16. Closed periods",)),
    "downloads": Section(downloads.measure, downloads.report, ("17. Downloads",)),
}
