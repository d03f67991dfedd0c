"""The README stays true: every metric, flag and config key is documented."""

from __future__ import annotations

import re

import pytest

from exporter.cli import build_parser
from exporter.collector import ALL_METRICS
from exporter.config import Settings
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
    documented = metric_table()
    assert set(documented) == {spec.name for spec in ALL_METRICS}


@pytest.mark.parametrize("spec", ALL_METRICS, ids=lambda s: s.name)
def test_documented_type_and_labels_match(spec) -> None:  # type: ignore[no-untyped-def]
    assert metric_table()[spec.name] == spec.type
    row = next(line for line in README.splitlines() if f"`{spec.name}`" in line
               and line.startswith("|"))
    for label in spec.labels:
        if label in ("project_id", "project_slug") and re.search(r"\| P[,| ]", row):
            continue  # "P" in the table stands for both
        assert f"`{label}`" in row or label in row, f"{spec.name}: label {label} not documented"


def test_every_flag_is_documented() -> None:
    for action in build_parser()._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                assert option in README, option


def test_every_config_key_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert f"`{name}" in README, name
        nested = field.annotation
        if isinstance(nested, type) and hasattr(nested, "model_fields"):
            for sub in nested.model_fields:
                assert f"`{name}.{sub}`" in README, f"{name}.{sub}"
