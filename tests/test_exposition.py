"""The exposition cache: byte-identical to prometheus_client in both formats, compressed
or not, kept current by the store one project at a time."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from exporter.collector import ProjectCollector, TeamCollector
from exporter.exposition import Exposition, escape
from exporter.snapshot import SnapshotStore
from tests.conftest import GOLDEN, golden_store, load_fixture, reference_exposition, usage_of

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def wired(store: SnapshotStore) -> Exposition:
    tail = CollectorRegistry(auto_describe=False)
    tail.register(TeamCollector(store.view))
    exposition = Exposition(tail)
    store.subscribe(exposition)
    return exposition


def body(exposition: Exposition, accept: str = "", encoding: str = "") -> bytes:
    rendered = exposition.render(accept, encoding)
    data = b"".join(rendered.chunks)
    assert len(data) == rendered.length
    return gzip.decompress(data) if rendered.gzipped else data


def reference_openmetrics(store: SnapshotStore) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProjectCollector(store.view))
    registry.register(TeamCollector(store.view))
    return openmetrics_latest(registry)


@pytest.mark.parametrize("encoding", ["", "gzip"])
def test_text_is_byte_identical_to_prometheus_client(encoding: str) -> None:
    store = golden_store()
    exposition = wired(store)
    assert body(exposition, "", encoding) == reference_exposition(store)


@pytest.mark.parametrize("encoding", ["", "gzip"])
def test_openmetrics_is_byte_identical_to_prometheus_client(encoding: str) -> None:
    store = golden_store()
    exposition = wired(store)
    text = body(exposition, OPENMETRICS, encoding)
    assert text == reference_openmetrics(store)
    assert text.endswith(b"# EOF\n") and text.count(b"# EOF") == 1


def test_the_golden_file_is_what_the_exposition_serves() -> None:
    assert body(wired(golden_store())).decode() == (GOLDEN / "billing.prom").read_text()


def test_every_gzip_member_is_a_complete_stream_and_all_inflate_as_one() -> None:
    store = golden_store()
    rendered = wired(store).render("", "gzip")
    data = b"".join(rendered.chunks)
    members = 0
    while data:
        inflate = zlib.decompressobj(zlib.MAX_WBITS | 16)
        inflate.decompress(data)
        assert inflate.eof
        data = inflate.unused_data
        members += 1
    assert members > 20


def test_a_landing_poll_changes_only_its_project_and_is_served_at_once() -> None:
    store = golden_store()
    exposition = wired(store)
    before = body(exposition, "", "gzip")
    payload = load_fixture("billing_usage_old.json")
    payload["data"]["attributes"]["price"] = 99_900
    store.record_success(usage_of(payload, "proj_old", currency="BRL"), duration=0.1,
                         now=1_795_000_100.0)
    after = body(exposition, "", "gzip")
    assert after != before
    assert after == reference_exposition(store)
    assert b'latitudesh_billing_price{currency="BRL",project_id="proj_old",' \
           b'project_slug="legacy-shape"} 999.0' in after


def test_projects_that_leave_leave_the_exposition() -> None:
    store = golden_store()
    exposition = wired(store)
    store.set_projects("default", [("proj_tricky", "")])
    text = body(exposition)
    assert b"proj_old" not in text and b"proj_tricky" in text
    assert text == reference_exposition(store)


def test_a_renamed_team_is_re_rendered_on_project_info() -> None:
    store = golden_store()
    exposition = wired(store)
    store.rename_team("default", "acme")
    text = body(exposition)
    assert b'team="acme"' in text and b'team="default"' not in text
    assert text == reference_exposition(store)


def test_scrapers_between_two_polls_share_one_join() -> None:
    exposition = wired(golden_store())
    first = exposition.render("", "gzip")
    second = exposition.render("", "gzip")
    assert list(first.chunks)[0] is list(second.chunks)[0]


def test_escape_matches_prometheus_client() -> None:
    assert escape('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape("plain") == "plain"


# --- property: any strings, any shape, same bytes as prometheus_client -------------

#: Any code point, lone surrogates and control characters included.
names = st.text(alphabet=st.characters() | st.characters(categories=["Cs", "Cc"]),
               max_size=12)
products = st.lists(st.fixed_dictionaries({
    "id": names, "name": names, "resource": names, "unit": names, "usage_type": names,
    "price": st.integers(-10**6, 10**9) | st.floats(allow_nan=False, allow_infinity=False),
    "quantity": st.floats(allow_nan=False, allow_infinity=False, width=32),
    "discounts": st.lists(st.fixed_dictionaries({"description": names,
                                                 "type": st.sampled_from(["percent", "amount"]),
                                                 "value": st.integers(0, 10**5)}), max_size=2),
    "metadata": st.fixed_dictionaries({"servers": st.lists(st.fixed_dictionaries({
        "id": names, "hostname": names, "plan": names, "tags": st.lists(names, max_size=3)}),
        max_size=3)}),
}), max_size=6)


@given(st.lists(st.tuples(names, products), min_size=1, max_size=4, unique_by=lambda t: t[0]),
       st.data())
def test_any_answer_renders_exactly_as_prometheus_client(
    projects: list[tuple[str, list[dict[str, Any]]]], data: st.DataObject
) -> None:
    store = SnapshotStore()
    store.add_team("t")
    ids = [f"p{i}" for i in range(len(projects))]
    store.set_projects("t", [(pid, "") for pid in ids])
    exposition = wired(store)
    for pid, (slug, lines) in zip(ids, projects, strict=True):
        payload = {"data": {"attributes": {"project": {"id": pid, "slug": slug, "name": slug},
                                           "price": 100, "products": lines}}}
        store.record_success(usage_of(payload, pid), duration=0.5, now=1.0)
        if data.draw(st.booleans()):
            store.record_failure(pid, "timeout", duration=1.0)
    text = body(exposition)
    assert text == reference_exposition(store)
    assert body(exposition, OPENMETRICS, "gzip") == reference_openmetrics(store)
    text.decode("utf-8")  # always encodable


def test_unencodable_names_never_break_the_exposition() -> None:
    raw = ('{"data": {"attributes": {"project": {"id": "p", "name": "x\\ud800y"},'
           ' "products": [{"id": "s\\udfff", "name": "\\u0000", "price": 1}]}}}').encode()
    store = SnapshotStore()
    store.add_team("t")
    store.set_projects("t", [("p", "")])
    exposition = wired(store)
    store.record_success(usage_of(raw, "p"), duration=0.1, now=1.0)
    assert body(exposition) == reference_exposition(store)
    assert "\ufffd" in body(exposition).decode()
