"""The README stays true: every metric, flag and config key is documented."""

from __future__ import annotations

import re

import pytest

from exporter.collector import ALL_METRICS, BUDGET_LABELS, MetricDoc
from exporter.config import Settings, TeamSettings
from exporter.flags import build_parser
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def metric_table() -> dict[str, str]:
    """`| metric | type | labels | meaning |` rows of the README's metrics table."""
    rows = {}
    for line in README.splitlines():
        match = re.match(r"\|\s*`(latitudesh_[a-z_]+)`\s*\|\s*(\w+)\s*\|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_every_exported_metric_is_in_the_readme_table_and_nothing_else() -> None:
    assert set(metric_table()) == {spec.name for spec in ALL_METRICS}


@pytest.mark.parametrize("spec", ALL_METRICS, ids=lambda s: s.name)
def test_documented_type_and_labels_match(spec: MetricDoc) -> None:
    assert metric_table()[spec.name] == spec.type
    row = next(
        line for line in README.splitlines() if f"`{spec.name}`" in line and line.startswith("|")
    )
    labels_cell = row.split("|")[3]
    for label in spec.labels:
        if label in ("project_id", "project_slug") and re.search(r"\bP\b", labels_cell):
            continue  # "P" in the table stands for both
        if label in BUDGET_LABELS and re.search(r"\bB\b", labels_cell):
            continue  # "B": a budget's labels, spelt out in the table
        assert f"`{label}`" in labels_cell, f"{spec.name}: label {label} not documented"


def test_every_flag_is_documented() -> None:
    for action in build_parser()._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                assert f"`{option}`" in README, option


def test_every_config_key_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert f"| `{name}" in README, name
        nested = field.annotation
        if isinstance(nested, type) and hasattr(nested, "model_fields"):
            for sub in nested.model_fields:
                assert f"| `{name}.{sub}` |" in README, f"{name}.{sub}"
    for sub in TeamSettings.model_fields:
        assert f"| `teams[].{sub}` |" in README, f"teams[].{sub}"


def test_every_poll_error_reason_is_documented() -> None:
    from exporter.errors import POLL_ERROR_REASONS

    row = next(line for line in README.splitlines() if "`latitudesh_poll_errors_total`" in line)
    for reason in POLL_ERROR_REASONS:
        assert reason in row, reason
