"""Write prometheusrule.yaml from ../../prometheus/rules.yml (the one source of the rules).

Run after editing the rules: python deploy/kubernetes/generate_prometheusrule.py
A test fails when the two disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parent.parent / "prometheus" / "rules.yml"
TARGET = HERE / "base" / "prometheusrule.yaml"


class _Dumper(yaml.SafeDumper):
    pass


def _text(dumper: yaml.SafeDumper, value: str) -> Any:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def render() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "latitudesh-exporter",
            "labels": {"app.kubernetes.io/name": "latitudesh-exporter"},
        },
        "spec": {"groups": groups},
    }
    header = "# Generated from prometheus/rules.yml by generate_prometheusrule.py; do not edit.\n"
    return header + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100)


if __name__ == "__main__":
    TARGET.write_text(render())
