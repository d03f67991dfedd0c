"""Property-based: any answer the schemas allow (and any JSON at all) parses or fails
typed, and whatever parses is allocated additively and renders an exposition that the
parser and promtool accept."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from exporter import errors
from exporter.client import LatitudeClient
from exporter.config import ApiSettings
from exporter.models import MAX_PRODUCTS_PER_ANSWER
from exporter.ratelimit import RequestBudget
from exporter.snapshot import UNATTRIBUTED
from exporter.usage import build_usage
from tests.conftest import (
    AT,
    default_limits,
    parse_samples,
    reference_exposition,
    require_binary,
    store_with,
)
from tests.spec import billing_schema
from tests.transports import StreamingTransport

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)
#: Any UTC offset a timestamp may carry, to the minute.
offsets = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))


def answers(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Documents the (JSON) schema allows, with every declared property present and
    every list non-empty (the spec requires nothing, so plain generation would mostly
    yield near-empty answers), and a few unknown properties of any JSON, as drift.

    Written for the keywords the billing schemas use (type, properties, items, enum,
    format): hypothesis-jsonschema reads any schema, at forty times the cost a draw."""
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kinds = node.get("type")
    options: list[st.SearchStrategy[Any]] = []
    for kind in kinds if isinstance(kinds, list) else [kinds]:
        if kind == "object":
            fields = {key: answers(value) for key, value in node.get("properties", {}).items()}
            drift = st.dictionaries(st.text(max_size=6), json_values, max_size=2)
            options.append(st.builds(_merged, drift, st.fixed_dictionaries(fields)))
        elif kind == "array":
            options.append(st.lists(answers(node.get("items", {})), min_size=1, max_size=4))
        elif kind == "string" and node.get("format") == "date-time":
            options.append(st.datetimes(timezones=offsets).map(datetime.isoformat))
        elif kind == "string":
            options.append(st.text())
        elif kind == "number":
            options.append(st.integers() | st.floats(allow_nan=False, allow_infinity=False))
        elif kind == "integer":
            options.append(st.integers())
        elif kind == "boolean":
            options.append(st.booleans())
        elif kind == "null":
            options.append(st.none())
        else:
            options.append(json_values)
    return st.one_of(options)


def _merged(drift: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    return {**drift, **fields}


NEWEST = answers(billing_schema("newest", strict=False))
SEED = answers(billing_schema("seed", strict=False))


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
    with LatitudeClient(
        token=lambda: SecretStr("t"),
        budget=RequestBudget(1e9),
        api=ApiSettings(base_url="https://api.example"),
        transport=StreamingTransport(lambda request: httpx.Response(200, content=body)),
    ) as client:
        try:
            return project, client.billing_usage(project).attributes
        except errors.InvalidResponse:
            return None  # the one error an answer may cause


def check(document: Any) -> None:
    polled = poll(document)
    if polled is None:
        return
    project, attributes = polled
    usage = build_usage(
        project, attributes, currency="USD", limits=default_limits(servers=3), at=AT
    )
    # additive to the cent: servers + what belongs to no server = the product lines
    lines = sum((p.price or 0) for p in attributes.products) / 100
    unattributed = next(t.price for t in usage.tags if t.tag == UNATTRIBUTED)
    assert sum(s.price for s in usage.servers) + unattributed == pytest.approx(
        lines, abs=0.01 + abs(lines) * 1e-9
    )
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
    # What gets through says something about money, within the product cap.
    assert polled is None or (
        polled[1].has_figures and len(polled[1].products) <= MAX_PRODUCTS_PER_ANSWER
    )


@settings(max_examples=15)
@given(st.one_of(NEWEST, SEED))
def test_expositions_pass_promtool(document: Any) -> None:
    polled = poll(document)
    if polled is None:
        return
    text = reference_exposition(store_with((polled[0], document, "USD")))
    result = subprocess.run(
        [PROMTOOL[0], "check", "metrics"], input=text, capture_output=True, check=False, timeout=30
    )
    assert result.returncode == 0, (result.stderr, text[:2000])


PROMTOOL: list[str] = []


@pytest.fixture(autouse=True)
def _promtool(request: pytest.FixtureRequest) -> None:
    if request.node.name == "test_expositions_pass_promtool" and not PROMTOOL:
        PROMTOOL.append(require_binary("promtool"))
