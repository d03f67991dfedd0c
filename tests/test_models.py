"""The payload models accept both schema generations, every kind of drift, and nothing
that could break the exposition: strings come out encodable, parsing comes out bounded."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from exporter.models import (
    MAX_JSON_VALUES,
    MAX_NUMBER,
    REPLACEMENT,
    BillingUsageDocument,
    ErrorDocument,
    PayloadError,
    Product,
    ProductMetadata,
    ProjectsPage,
    clean_json,
    parse_document,
    parse_error_document,
)
from tests.conftest import FIXTURES, load_fixture


def billing(payload: Any) -> BillingUsageDocument:
    return parse_document(BillingUsageDocument, json.dumps(payload).encode())


def test_new_shape_parses_servers_bucket_and_amounts() -> None:
    usage = billing(load_fixture("billing_usage_new.json"))
    attributes = usage.usage_for("proj_r0MK4O4kDa95w")
    assert attributes is not None
    assert attributes.price == 51230
    assert attributes.amount == 51230
    assert attributes.threshold == 100000
    assert attributes.period is not None
    assert attributes.period.start == datetime(2026, 11, 1, tzinfo=UTC)
    metal, storage, _, calls = attributes.products
    assert metal.metadata is not None
    assert [s.hostname for s in metal.metadata.all_servers(metal.resource)] == ["web-01", "db-01"]
    assert [s.tags for s in metal.metadata.all_servers(metal.resource)] == [["web", "prod"], ["db"]]
    assert calls.metadata is not None and calls.metadata.billing_unit_divisor == 1000
    assert storage.unit == "GB"
    assert storage.metadata is not None and storage.metadata.bucket is not None
    assert storage.metadata.bucket.name == "lake"
    assert storage.metadata.all_servers(storage.resource) == []


def test_old_shape_metadata_reads_as_one_server() -> None:
    attributes = billing(load_fixture("billing_usage_old.json")).usage_for("proj_old")
    assert attributes is not None
    assert attributes.threshold is None
    assert attributes.amount is None
    gpu, licence = attributes.products
    assert gpu.metadata is not None
    (server,) = gpu.metadata.all_servers(gpu.resource)
    assert (server.id, server.hostname, server.plan) == ("sv_gpu", "trainer-01", "g3-h100-large")
    assert licence.metadata is not None and licence.metadata.all_servers(licence.resource) == []


@pytest.mark.parametrize(
    ("resource", "server", "bucket"),
    [
        ("object_storage", False, True),
        ("bare_metal", True, False),
        ("virtual_machine", True, False),
        ("license", False, False),
    ],
)
def test_an_old_shape_id_alone_is_a_server_only_on_a_servers_line(
    resource: str, server: bool, bucket: bool
) -> None:
    """The old shape puts a bucket's id in `metadata.id` (hostname and plan null): it
    was exported as a server, its spend as untagged server spend."""
    metadata = ProductMetadata(id="bkt_lake")
    assert bool(metadata.all_servers(resource)) is server
    found = metadata.storage_bucket(resource)
    assert (found is not None and found.id == "bkt_lake") is bucket
    named = ProductMetadata(id="sv_1", hostname="web-01")  # a hostname: always a server
    assert [s.id for s in named.all_servers(resource)] == ["sv_1"]
    assert named.storage_bucket(resource) is None


def test_data_as_a_list_is_searched_for_the_project() -> None:
    one = load_fixture("billing_usage_new.json")["data"]
    other = {"attributes": {"project": {"id": "proj_other"}, "price": 1}}
    attributes = billing({"data": [other, one]}).usage_for("proj_r0MK4O4kDa95w")
    assert attributes is not None and attributes.price == 51230


def test_an_answer_for_another_project_is_refused() -> None:
    assert billing(load_fixture("billing_usage_new.json")).usage_for("proj_else") is None


@pytest.mark.parametrize("data", [{}, [], None, {"attributes": None}])
def test_empty_data_holds_no_usage(data: object) -> None:
    assert billing({"data": data}).usage_for("p") is None


def test_wrong_types_read_as_missing_not_as_errors() -> None:
    payload = {
        "data": {
            "attributes": {
                "price": "1234.5",
                "threshold": "lots",
                "available_credit_balance": True,
                "period": {"start": "yesterday", "end": [12]},
                "products": [
                    {
                        "id": 17,
                        "name": None,
                        "unit": "petaflop",
                        "usage_type": "prepaid",
                        "quantity": "NaN",
                        "price": [1],
                        "amount": 10**400,
                        "metadata": "not an object",
                        "discounts": [{"type": "fixed", "value": "7", "description": "x"}, "junk"],
                    },
                    "not a product",
                ],
                "brand_new_field": {"x": 1},
            }
        }
    }
    attributes = billing(payload).usage_for("p")
    assert attributes is not None
    assert attributes.price == 1234.5
    assert attributes.threshold is None
    assert attributes.available_credit_balance is None  # a bool is not money
    assert attributes.period is not None and attributes.period.start is None
    (product,) = attributes.products
    assert product.id == "17"
    assert (product.unit, product.usage_type) == ("petaflop", "prepaid")
    assert product.quantity is None and product.price is None and product.metadata is None
    assert product.amount is None  # 400 digits do not fit a float
    (discount,) = product.discounts
    assert (discount.type, discount.value) == ("fixed", 7.0)


@pytest.mark.parametrize(
    "number", ["1e400", "-1e400", '"Infinity"', '"NaN"', '"-inf"', "1e300", '"-2e15"']
)
def test_infinities_nan_and_absurd_magnitudes_read_as_missing(number: str) -> None:
    """Beyond ±1e15 sums overflow or lose whole units (a split price no longer adds up)."""
    body = ('{"data": {"attributes": {"price": 12, "threshold": ' + number + "}}}").encode()
    attributes = parse_document(BillingUsageDocument, body).usage_for("p")
    assert attributes is not None
    assert attributes.price == 12
    assert attributes.threshold is None


def test_naive_and_zulu_timestamps_are_read() -> None:
    payload = {
        "data": {
            "attributes": {
                "period": {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00"}
            }
        }
    }
    attributes = billing(payload).usage_for("p")
    assert attributes is not None and attributes.period is not None
    assert attributes.period.start == datetime(2026, 11, 1, tzinfo=UTC)
    assert attributes.period.end is not None
    assert attributes.period.end.replace(tzinfo=UTC) == datetime(2026, 12, 1, tzinfo=UTC)


def test_projects_page_reads_the_team_currency_and_slug() -> None:
    page = parse_document(ProjectsPage, (FIXTURES / "projects_page.json").read_bytes())
    (project,) = page.data
    assert (project.id, project.currency) == ("proj_WeGoqAanqP7nz", "BRL")
    assert project.team is not None and project.team.slug == "176-team"


@pytest.mark.parametrize(
    "body", [b"{}", b'{"data": null}', b'{"data": {"id": "p"}}', b'{"data": "projects"}', b"[]"]
)
def test_a_projects_answer_without_a_list_is_refused_not_read_as_no_projects(
    body: bytes,
) -> None:
    with pytest.raises(PayloadError):
        parse_document(ProjectsPage, body)


def test_an_empty_projects_list_is_a_team_without_projects() -> None:
    assert parse_document(ProjectsPage, b'{"data": []}').data == []


@pytest.mark.parametrize(
    ("payload", "text", "retry_after"),
    [
        (load_fixture("error_429.json"), "Rate limit exceeded", 7.0),
        ({"code": "not_found", "message": "Project not found"}, "Project not found", None),
        ({"errors": [{"status": "UNPROCESSABLE", "title": "Bad"}]}, "Bad", None),
        ({"errors": [{"meta": {"retry_after": 10**400}}]}, "", None),
        ({"errors": [{"meta": {"retry_after": "1e999"}}]}, "", None),
        (["not", "an", "object"], "", None),
    ],
)
def test_error_bodies_of_every_shape(payload: object, text: str, retry_after: float | None) -> None:
    document = parse_error_document(json.dumps(payload).encode())
    assert document.text == text
    assert document.retry_after == retry_after


def test_an_unreadable_error_body_reads_as_empty() -> None:
    assert parse_error_document(b"<html>bad gateway</html>") == ErrorDocument()
    assert parse_error_document(b"[" * 100_000) == ErrorDocument()


# --- strings made encodable at the edge --------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (rb'"a\ud800b"', f"a{REPLACEMENT}b"),  # a lone surrogate, escaped
        (b'"a\xed\xa0\x80b"', f"a{REPLACEMENT * 3}b"),  # a surrogate as raw bytes
        (b'"caf\xe9"', f"caf{REPLACEMENT}"),  # not UTF-8 at all
        (
            rb'"line\nbreak\ttab\u0000nul\u001b[31m"',
            f"line{REPLACEMENT}break{REPLACEMENT}tab{REPLACEMENT}nul{REPLACEMENT}[31m",
        ),
        ('"c1\u0085del\u007f"'.encode(), f"c1{REPLACEMENT}del{REPLACEMENT}"),
        (rb'"kept \\u0000 as text"', "kept \\u0000 as text"),  # an escaped backslash
        (rb'"pair \ud83d\ude00 kept"', "pair \U0001f600 kept"),
        (rb'"quote \" and \\ kept"', 'quote " and \\ kept'),
        ('"Café Ωmega"'.encode(), "Café Ωmega"),
    ],
)
def test_strings_are_made_encodable_and_free_of_control_characters(
    raw: bytes, expected: str
) -> None:
    product = parse_document(Product, b'{"name": ' + raw + b"}")
    assert product.name == expected
    assert product.name is not None
    product.name.encode("utf-8")  # never raises


def test_plain_answers_pass_through_untouched() -> None:
    body = (FIXTURES / "billing_usage_new.json").read_bytes()
    assert clean_json(body) is body


# --- bounded parsing ---------------------------------------------------------------


def test_millions_of_tiny_values_are_refused_before_parsing() -> None:
    body = b'{"data": {"attributes": {"products": [' + b"0," * MAX_JSON_VALUES + b"0]}}}"
    with pytest.raises(PayloadError, match="JSON values"):
        parse_document(BillingUsageDocument, body)


@pytest.mark.parametrize(
    "body", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000]
)
def test_deep_nesting_is_refused_not_a_recursion_error(body: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_document(BillingUsageDocument, body)


# --- the bounds, exactly --------------------------------------------------------------


def threshold(number: str) -> float | None:
    body = ('{"data": {"attributes": {"price": 12, "threshold": ' + number + "}}}").encode()
    attributes = parse_document(BillingUsageDocument, body).usage_for("p")
    assert attributes is not None
    return attributes.threshold


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_numbers_of_exactly_max_number_are_read_and_the_next_float_is_not(sign: float) -> None:
    exact = sign * MAX_NUMBER
    beyond = math.nextafter(exact, sign * math.inf)
    within = math.nextafter(exact, 0.0)
    assert threshold(repr(exact)) == exact
    assert threshold(f'"{exact!r}"') == exact  # a numeric string, the same bound
    assert threshold(str(int(exact))) == exact  # an integer
    assert threshold(repr(within)) == within
    assert threshold(repr(beyond)) is None
    assert threshold(f'"{beyond!r}"') is None
    assert threshold(str(int(exact) + int(sign))) is None  # one unit more, as an integer


SMALL = b'{"data": {"attributes": {"price": 1, "threshold": 2}}}'  # 3 objects, 1 comma


@pytest.mark.parametrize(
    "body",
    [SMALL, SMALL.replace(b'"price"', '"prîce"'.encode())],
    ids=["ascii", "utf-8"],  # both ways `clean_json` hands the body on
)
def test_an_answer_of_exactly_max_values_is_parsed_and_one_value_more_refused(
    body: bytes,
) -> None:
    assert parse_document(BillingUsageDocument, body, max_values=4).data is not None
    with pytest.raises(PayloadError, match="more than 3 JSON values"):
        parse_document(BillingUsageDocument, body, max_values=3)


def test_the_default_bound_of_values_is_max_json_values_exactly() -> None:
    def answer(values: int) -> bytes:
        # Three objects and one array, and `values - 4` commas between the items.
        items = b",".join([b"0"] * (values - 3))
        return b'{"data": {"attributes": {"products": [' + items + b"]}}}"

    parse_document(BillingUsageDocument, answer(MAX_JSON_VALUES))
    with pytest.raises(PayloadError, match="JSON values"):
        parse_document(BillingUsageDocument, answer(MAX_JSON_VALUES + 1))
