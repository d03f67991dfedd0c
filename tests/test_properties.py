"""Property-based: any answer the schemas allow (and any JSON at all) parses or fails typed,
and whatever parses renders an exposition that the parser and promtool accept."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from prometheus_client import CollectorRegistry, generate_latest

from exporter import errors
from exporter.collector import BillingCollector, ExporterCollector
from exporter.snapshot import SnapshotStore, build_usage
from tests.conftest import make_client, parse_samples, require_binary
from tests.test_demo import seed_schema, spec, to_json_schema


def dense(node: Any) -> Any:
    """The same schema with every declared property required and at least one product:
    the spec requires nothing, so plain generation mostly yields near-empty answers."""
    if isinstance(node, list):
        return [dense(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: dense(value) for key, value in node.items()}
    if "properties" in out:
        out["required"] = sorted(out["properties"])
    if out.get("type") == "array" and "products" not in out:
        out.setdefault("minItems", 1)
        out.setdefault("maxItems", 4)
    return out


NEWEST_SPARSE = to_json_schema(spec()["components"]["schemas"]["billing_usage"], strict=False)
SEED_SPARSE = seed_schema()
NEWEST = st.one_of(from_schema(NEWEST_SPARSE), from_schema(dense(NEWEST_SPARSE)))
SEED = st.one_of(from_schema(SEED_SPARSE), from_schema(dense(SEED_SPARSE)))
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30,
)


def requested_project(document: Any) -> str:
    """Ask for the project the answer names, so that answers can also succeed."""
    try:
        data = document["data"]
        data = data[0] if isinstance(data, list) else data
        return str(data["attributes"]["project"]["id"]) or "proj_x"
    except (KeyError, IndexError, TypeError):
        return "proj_x"


def poll(document: Any) -> str | None:
    """Run one answer through the real client; the exposition, or None if refused."""
    body = json.dumps(document).encode()
    client = make_client("https://api.example", transport=httpx.MockTransport(
        lambda request: httpx.Response(200, content=body)))
    project = requested_project(document)
    try:
        attributes = client.billing_usage(project)
    except errors.InvalidResponse:
        return None  # the one error an answer may cause
    finally:
        client.close()
    store = SnapshotStore()
    store.set_projects([project])
    store.record_success(build_usage(project, attributes, currency="USD", max_products=50),
                         duration=0.1, now=1.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BillingCollector(store.view))
    registry.register(ExporterCollector(store.view))
    text = generate_latest(registry).decode()
    parse_samples(text)  # raises if prometheus_client cannot read back what it wrote
    return text


@SETTINGS
@given(NEWEST)
def test_newest_schema_answers_parse_and_render(document: Any) -> None:
    poll(document)


@SETTINGS
@given(SEED)
def test_seed_schema_answers_parse_and_render(document: Any) -> None:
    poll(document)


@SETTINGS
@given(json_values)
def test_any_json_at_all_parses_or_is_invalid_response(document: Any) -> None:
    poll(document)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(NEWEST, SEED))
def test_expositions_pass_promtool(document: Any) -> None:
    text = poll(document)
    if text is None:
        return
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                            capture_output=True, check=False, timeout=30)
    assert result.returncode == 0, (result.stderr, text[:2000])


PROMTOOL = ""


@pytest.fixture(autouse=True)
def _promtool(request: pytest.FixtureRequest) -> None:
    global PROMTOOL  # noqa: PLW0603 (hypothesis tests take no fixtures' values)
    if request.node.name == "test_expositions_pass_promtool":
        PROMTOOL = require_binary("promtool")
