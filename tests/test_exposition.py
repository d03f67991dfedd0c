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
from prometheus_client.utils import floatToGoString

from exporter.collector import ProjectCollector, TeamCollector
from exporter.exposition import (
    Exposition,
    crc32_combine,
    crc32_combine_python,
    escape,
    go_float,
)
from exporter.store import SnapshotStore
from tests.conftest import (
    GOLDEN,
    golden_store,
    load_fixture,
    reference_exposition,
    usage_of,
    versionless,
)

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
    return bytes(openmetrics_latest(registry))  # type: ignore[no-untyped-call]


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
    served = versionless(body(wired(golden_store())).decode())
    assert served == (GOLDEN / "billing.prom").read_text()


def test_gzip_is_one_member_that_single_member_readers_read_whole() -> None:
    """httpx, curl and browsers stop after the first gzip member: a body of several
    would reach them cut short after the first family's header, without an error."""
    store = golden_store()
    for accept in ("", OPENMETRICS):
        rendered = wired(store).render(accept, "gzip")
        data = b"".join(rendered.chunks)
        inflate = zlib.decompressobj(zlib.MAX_WBITS | 16)  # checks the CRC and length
        text = inflate.decompress(data) + inflate.flush()
        assert inflate.eof and inflate.unused_data == b""
        assert text == (reference_exposition(store) if not accept else reference_openmetrics(store))


def test_a_changed_column_is_recombined_and_unchanged_ones_are_not() -> None:
    store = golden_store()
    exposition = wired(store)
    body(exposition, "", "gzip")
    payload = load_fixture("billing_usage_old.json")
    for price in (1_000, 2_000, 2_000):
        payload["data"]["attributes"]["price"] = price
        store.record_success(
            "default", usage_of(payload, "proj_old"), duration=0.1, now=1_795_000_100.0
        )
        data = b"".join(exposition.render("", "gzip").chunks)
        assert zlib.decompress(data, zlib.MAX_WBITS | 16) == reference_exposition(store)


@given(st.lists(st.binary(max_size=3000), min_size=2, max_size=8))
def test_crc32_combine_is_the_crc_of_the_concatenation(pieces: list[bytes]) -> None:
    for combine in (crc32_combine, crc32_combine_python):
        crc = 0
        for piece in pieces:
            crc = combine(crc, zlib.crc32(piece), len(piece))
        assert crc == zlib.crc32(b"".join(pieces))


def test_a_landing_poll_changes_only_its_project_and_is_served_at_once() -> None:
    store = golden_store()
    exposition = wired(store)
    before = body(exposition, "", "gzip")
    payload = load_fixture("billing_usage_old.json")
    payload["data"]["attributes"]["price"] = 99_900
    store.record_success(
        "default", usage_of(payload, "proj_old", currency="BRL"), duration=0.1, now=1_795_000_100.0
    )
    after = body(exposition, "", "gzip")
    assert after != before
    assert after == reference_exposition(store)
    assert (
        b'latitudesh_billing_price{currency="BRL",project_id="proj_old",'
        b'project_slug="legacy-shape"} 999.0' in after
    )


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


def test_scrapers_between_two_polls_and_both_formats_share_the_columns() -> None:
    exposition = wired(golden_store())
    first = list(exposition.render("", "gzip").chunks)
    second = list(exposition.render("", "gzip").chunks)
    openmetrics = list(exposition.render(OPENMETRICS, "gzip").chunks)
    columns = slice(2, -2, 2)  # gzip header, then (family header, column) pairs, tail, trailer
    assert all(a is b for a, b in zip(first[columns], second[columns], strict=True))
    assert all(a is b for a, b in zip(first[columns], openmetrics[columns], strict=True))


@given(st.floats() | st.integers(-(10**18), 10**18))
def test_go_float_matches_prometheus_client(value: float) -> None:
    assert go_float(value) == floatToGoString(value)  # type: ignore[no-untyped-call]


def test_escape_matches_prometheus_client() -> None:
    assert escape('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape("plain") == "plain"


# --- property: any strings, any shape, same bytes as prometheus_client -------------

#: Any code point, lone surrogates and control characters included.
names = st.text(alphabet=st.characters() | st.characters(categories=["Cs", "Cc"]), max_size=12)
products = st.lists(
    st.fixed_dictionaries(
        {
            "id": names,
            "name": names,
            "resource": names,
            "unit": names,
            "usage_type": names,
            "price": st.integers(-(10**6), 10**9)
            | st.floats(allow_nan=False, allow_infinity=False),
            "quantity": st.floats(allow_nan=False, allow_infinity=False, width=32),
            "discounts": st.lists(
                st.fixed_dictionaries(
                    {
                        "description": names,
                        "type": st.sampled_from(["percent", "amount"]),
                        "value": st.integers(0, 10**5),
                    }
                ),
                max_size=2,
            ),
            "metadata": st.fixed_dictionaries(
                {
                    "servers": st.lists(
                        st.fixed_dictionaries(
                            {
                                "id": names,
                                "hostname": names,
                                "plan": names,
                                "tags": st.lists(names, max_size=3),
                            }
                        ),
                        max_size=3,
                    )
                }
            ),
        }
    ),
    max_size=6,
)


@given(
    st.lists(st.tuples(names, products), min_size=1, max_size=4, unique_by=lambda t: t[0]),
    st.data(),
)
def test_any_answer_renders_exactly_as_prometheus_client(
    projects: list[tuple[str, list[dict[str, Any]]]], data: st.DataObject
) -> None:
    store = SnapshotStore()
    store.add_team("t")
    ids = [f"p{i}" for i in range(len(projects))]
    store.set_projects("t", [(pid, "") for pid in ids])
    exposition = wired(store)
    for pid, (slug, lines) in zip(ids, projects, strict=True):
        payload = {
            "data": {
                "attributes": {
                    "project": {"id": pid, "slug": slug, "name": slug},
                    "price": 100,
                    "products": lines,
                }
            }
        }
        store.record_success("t", usage_of(payload, pid), duration=0.5, now=1.0)
        if data.draw(st.booleans()):
            store.record_failure("t", pid, "timeout", duration=1.0)
    text = body(exposition)
    assert text == reference_exposition(store)
    assert body(exposition, OPENMETRICS, "gzip") == reference_openmetrics(store)
    text.decode("utf-8")  # always encodable


def test_unencodable_names_never_break_the_exposition() -> None:
    raw = (
        b'{"data": {"attributes": {"project": {"id": "p", "name": "x\\ud800y"},'
        b' "products": [{"id": "s\\udfff", "name": "\\u0000", "price": 1}]}}}'
    )
    store = SnapshotStore()
    store.add_team("t")
    store.set_projects("t", [("p", "")])
    exposition = wired(store)
    store.record_success("t", usage_of(raw, "p"), duration=0.1, now=1.0)
    assert body(exposition) == reference_exposition(store)
    assert "\ufffd" in body(exposition).decode()
