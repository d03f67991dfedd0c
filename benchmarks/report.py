"""What a run reports: tables and target verdicts, printed as they come and written as Markdown.

A section's reporting half returns `Findings` (tables of rows and targets with their
verdicts) from its figures; nothing here measures anything.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Table:
    title: str  # "2. Steady state: ...": the heading in RESULTS.md
    text: str  # how it was measured, one paragraph
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True, slots=True)
class Target:
    what: str
    figure: str  # the figure measured (after), as shown
    met: bool | None  # None: not measurable in this run

    @property
    def verdict(self) -> str:
        return "n/a" if self.met is None else ("met" if self.met else "**missed**")


@dataclass(frozen=True, slots=True)
class Findings:
    tables: Sequence[Table] = ()
    targets: Sequence[Target] = ()


@dataclass
class Report:
    """Findings as they are measured, printed at once and written as Markdown at the end."""

    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def add(self, findings: Findings) -> None:
        for table in findings.tables:
            self.tables.append(table)
            print(text_table(table))
        for target in findings.targets:
            self.targets.append(target)
            print(f"target: {target.what}: {target.figure} ({target.verdict})")

    def markdown(self, command: str, versions: str, started: datetime) -> str:
        head = [
            "# Benchmark results",
            "",
            f"Run {started:%Y-%m-%d %H:%M} UTC with `{command}` on: {machine()}. Code: {versions}.",
            "",
            "Every figure comes from this one run; the exporter runs as `python -m exporter` "
            "and is measured from outside, beside a floor served in the same run. Timings on "
            "a shared machine are noisy: compare rows of one run, not runs of one day.",
            "",
        ]
        if self.targets:
            head += ["## Targets", "", "| target | measured (after) | verdict |", "|---|---|---|"]
            head += [f"| {t.what} | {t.figure} | {t.verdict} |" for t in self.targets]
            head.append("")
        return "\n".join(head) + "\n" + "\n".join(markdown_table(t) for t in self.tables)


def text_table(table: Table) -> str:
    """The table for a terminal: columns padded to their widest cell."""
    widths = [
        max(len(str(c)) for c in column) for column in zip(table.header, *table.rows, strict=False)
    ]
    lines = [f"\n{table.title}", table.text]
    for row in (table.header, ["-" * w for w in widths], *table.rows):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)))
    return "\n".join(lines)


def markdown_table(table: Table) -> str:
    lines = [
        f"## {table.title}",
        "",
        table.text,
        "",
        "| " + " | ".join(table.header) + " |",
        "|" + "---|" * len(table.header),
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def machine() -> str:
    """The machine and interpreter of this run, as RESULTS.md names them."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{_cpu_model()}, {os.cpu_count()} cores, {memory:.0f} GiB, Linux "
        f"{platform.release()}, Python {platform.python_version()}"
    )


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


# --- figures as cells ------------------------------------------------------------------


def ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1000:,.1f}"


def sec(seconds: float, digits: int = 2) -> str:
    return "—" if math.isnan(seconds) else f"{seconds:,.{digits}f}"


def ratio(a: float, b: float) -> float:
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else float("nan")


def times(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}×"
