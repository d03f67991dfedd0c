"""Property-based: any answer the schemas allow (and any JSON at all) parses or fails
typed, and whatever parses is allocated additively and renders an exposition that the
parser and promtool accept."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from pydantic import SecretStr

from exporter import errors
from exporter.client import LatitudeClient
from exporter.ratelimit import RequestBudget
from exporter.snapshot import UNATTRIBUTED, Limits, build_usage
from tests.conftest import parse_samples, reference_exposition, require_binary, store_with
from tests.spec import billing_schema


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
    if out.get("type") == "array":
        out.setdefault("minItems", 1)
        out.setdefault("maxItems", 4)
    return out


NEWEST = from_schema(dense(billing_schema("newest", strict=False)))
SEED = from_schema(dense(billing_schema("seed", strict=False)))

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


def poll(document: Any) -> tuple[str, Any] | None:
    """One answer through the real client: (project, attributes), or None if refused."""
    body = json.dumps(document).encode()
    project = requested_project(document)
    with LatitudeClient(token=lambda: SecretStr("t"),
                        budget=RequestBudget(1e9), base_url="https://api.example",
                        transport=httpx.MockTransport(
                            lambda request: httpx.Response(200, content=body))) as client:
        try:
            return project, client.billing_usage(project)
        except errors.InvalidResponse:
            return None  # the one error an answer may cause


def check(document: Any) -> None:
    polled = poll(document)
    if polled is None:
        return
    project, attributes = polled
    usage = build_usage(project, attributes, currency="USD", limits=Limits(servers=3))
    # additive to the cent: servers + what belongs to no server = the product lines
    lines = sum((p.price or 0) for p in attributes.products) / 100
    unattributed = next(t.price for t in usage.tags if t.tag == UNATTRIBUTED)
    assert sum(s.price for s in usage.servers) + unattributed == pytest.approx(
        lines, abs=0.01 + abs(lines) * 1e-9)
    store = store_with((project, document, "USD"))
    text = reference_exposition(store).decode()
    parse_samples(text)  # prometheus_client reads back what it wrote


@given(NEWEST)
def test_newest_schema_answers_parse_allocate_and_render(document: Any) -> None:
    check(document)


@given(SEED)
def test_seed_schema_answers_parse_allocate_and_render(document: Any) -> None:
    check(document)


@given(json_values)
def test_any_json_at_all_parses_or_is_invalid_response(document: Any) -> None:
    polled = poll(document)  # no exception but InvalidResponse (caught in poll) escapes
    assert polled is None or polled[1].products is not None


@settings(max_examples=15)
@given(st.one_of(NEWEST, SEED))
def test_expositions_pass_promtool(document: Any) -> None:
    polled = poll(document)
    if polled is None:
        return
    text = reference_exposition(store_with((polled[0], document, "USD")))
    result = subprocess.run([PROMTOOL[0], "check", "metrics"], input=text,
                            capture_output=True, check=False, timeout=30)
    assert result.returncode == 0, (result.stderr, text[:2000])


PROMTOOL: list[str] = []


@pytest.fixture(autouse=True)
def _promtool(request: pytest.FixtureRequest) -> None:
    if request.node.name == "test_expositions_pass_promtool" and not PROMTOOL:
        PROMTOOL.append(require_binary("promtool"))
