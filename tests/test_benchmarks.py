"""The benchmarks run, at toy sizes: no figure is asserted here, only that each section
measures, reports its tables, and that the script writes them.

Each section runs in-process, on its own (xdist spreads them over the workers); one
run of the script itself, through `--compare`, proves the flags, the report file and
the start of an old build on a picked port.
"""

from __future__ import annotations

import ast
import gc
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from benchmarks import tuned
from benchmarks.harness import AFTER, Bench
from benchmarks.modes import MODES
from benchmarks.report import Report
from benchmarks.sections import SECTIONS, tuning
from exporter import runtime
from tests.conftest import ROOT

SMOKE = MODES["smoke"]


@pytest.mark.slow  # `make quick` leaves them out; `make test` runs them
@pytest.mark.parametrize("name", list(SECTIONS))
def test_each_section_measures_and_reports_at_toy_sizes(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if name == "tuning":  # one daemon per configuration: off and a piece alone suffice
        keep = ("off", list(tuning.CONFIGS)[-1])
        monkeypatch.setattr(tuning, "CONFIGS", {k: tuning.CONFIGS[k] for k in keep})
    section = SECTIONS[name]
    with ExitStack() as stack:
        figures = section.measure(Bench(SMOKE, tmp_path, stack), [AFTER])
    findings = section.report(figures, SMOKE)
    titles = [table.title for table in findings.tables]
    assert len(titles) == len(section.headings)
    for title, heading in zip(titles, section.headings, strict=True):
        assert title.startswith(heading)
    for table in findings.tables:
        assert table.rows, table.title
        assert all(len(row) == len(table.header) for row in table.rows), table.title
    report = Report()
    report.add(findings)
    text = report.markdown("python -m benchmarks --smoke", "after = `x`", datetime.now(UTC))
    assert all(f"## {title}" in text for title in titles)
    if name == "hostile":
        assert "refused (invalid_response)" in text  # the hostile answer was refused
    if name in ("steady", "prometheus", "pacing", "teams", "isolation"):
        assert findings.targets and "## Targets" in text


@pytest.mark.slow
def test_the_script_writes_the_report_before_and_after(tmp_path: Path) -> None:
    """`--compare` with this tree as the "before" code: an old build is started on a
    picked port (it cannot bind port 0 and say so), and --out's folder is made."""
    out = tmp_path / "out" / "RESULTS.md"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks", "--smoke", "--only", "demo"),
            *("--compare", str(ROOT), "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert "## 13. Start-up of the demo" in text
    assert "| before |" in text and "| after |" in text  # rows name the code they measured
    assert "cores" in text and "Python 3." in text  # the machine it ran on is recorded
    assert "--smoke --only demo" in text


def test_sections_cover_every_table_once() -> None:
    headings = [h for section in SECTIONS.values() for h in section.headings]
    assert len(headings) == len(set(headings))
    numbers = [h.split(".", 1)[0] for h in headings]
    assert numbers == sorted(numbers, key=lambda n: (int(n.rstrip("b")), n))


def test_the_benchmarks_import_nothing_from_the_tests() -> None:
    for path in (ROOT / "benchmarks").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n == "tests" or n.startswith("tests.") for n in names), path


# --- the pieces of the runtime tuning, as the tuning section runs them -----------------


class Libc:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    frozen = gc.get_freeze_count()
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if frozen == 0:
            gc.unfreeze()
        sys.setswitchinterval(interval)


def _effect(tune: Any, libc: Libc) -> dict[str, Any]:
    """What a tuning does to this process, and what its housekeeping job does."""
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    sys.setswitchinterval(0.005)
    scheduler = BackgroundScheduler()
    tune(scheduler)
    effect: dict[str, Any] = {
        "thresholds": gc.get_threshold(),
        "frozen": gc.get_freeze_count() > 0,
        "switch": sys.getswitchinterval(),
        "jobs": [(j.id, j.trigger.interval, j.coalesce) for j in scheduler.get_jobs()],
        "start": list(libc.calls),
    }
    full: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(1)

    gc.callbacks.append(count)
    try:
        for job in scheduler.get_jobs():
            job.func()
    finally:
        gc.callbacks.remove(count)
    effect["job"] = (len(full), libc.calls[len(effect["start"]) :])
    return effect


@pytest.mark.usefixtures("restored")
def test_the_pieces_together_are_runtime_tune(monkeypatch: pytest.MonkeyPatch) -> None:
    """`benchmarks.tuned` measures the pieces of `runtime.tune`: together they must do
    what it does, or a change to runtime.py goes unmeasured."""
    shipped, pieces = Libc(), Libc()
    monkeypatch.setattr(runtime, "_libc", lambda: shipped)
    expected = _effect(runtime.tune, shipped)
    actual = _effect(lambda s: tuned.apply(tuned.PIECES, s, pieces), pieces)
    assert actual == expected


@pytest.mark.usefixtures("restored")
def test_no_piece_is_no_tuning_and_malloc_is_the_trim() -> None:
    libc = Libc()
    nothing = _effect(lambda s: tuned.apply(set(), s, libc), libc)
    assert nothing["jobs"] == [] and nothing["start"] == []
    malloc = _effect(lambda s: tuned.apply({"malloc"}, s, libc), libc)
    assert malloc["start"] and [job[0] for job in malloc["jobs"]] == ["trim"]
    assert malloc["thresholds"] == (700, 10, 10) and not malloc["frozen"]
