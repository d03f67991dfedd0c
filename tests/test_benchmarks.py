"""The benchmark script runs end to end (at toy sizes: no figures are asserted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # `make quick` leaves it out; `make test` runs it


def test_benchmarks_smoke_run_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    for heading in (
        "## Targets",
        "## 1. Warm cache",
        "## 2. Steady state",
        "## 3. Stress",
        "## 4. Poll cost, memory, freshness, start-up",
        "## 5. Prometheus-like",
        "## 6. True intervals",
        "## 7. The default budget at the API",
        "## 8. Teams",
        "## 9. Two keys, one in a 429 storm",
        "## 10. Hostile answers",
        "## 11. Slow and idle clients",
        "## 12. RSS over",
        "## 13. Start-up of the demo",
    ):
        assert heading in text, heading
    assert "| after |" in text  # rows name the code they measured
    assert "cores" in text  # the machine it ran on is recorded
    assert "refused (invalid_response)" in text  # the hostile answer was refused
