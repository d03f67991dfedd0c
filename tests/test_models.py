"""The payload models accept both schema generations and every kind of drift."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from exporter.models import BillingUsageDocument, ProjectsPage, parse_error_document
from tests.conftest import load_fixture


def test_new_shape_parses_servers_bucket_and_amounts() -> None:
    usage = BillingUsageDocument.model_validate(load_fixture("billing_usage_new.json"))
    attributes = usage.usage_for("proj_r0MK4O4kDa95w")
    assert attributes is not None
    assert attributes.price == 51230
    assert attributes.amount == 51230
    assert attributes.threshold == 100000
    assert attributes.period is not None
    assert attributes.period.start == datetime(2026, 11, 1, tzinfo=UTC)
    metal, storage = attributes.products
    assert metal.metadata is not None
    assert [s.hostname for s in metal.metadata.all_servers()] == ["web-01", "web-02"]
    assert storage.unit == "GB"
    assert storage.metadata is not None and storage.metadata.bucket is not None
    assert storage.metadata.bucket.name == "lake"
    assert storage.metadata.all_servers() == []


def test_old_shape_metadata_reads_as_one_server() -> None:
    usage = BillingUsageDocument.model_validate(load_fixture("billing_usage_old.json"))
    attributes = usage.usage_for("proj_old")
    assert attributes is not None
    assert attributes.threshold is None
    assert attributes.amount is None
    gpu, licence = attributes.products
    assert gpu.metadata is not None
    (server,) = gpu.metadata.all_servers()
    assert (server.id, server.hostname, server.plan) == ("sv_gpu", "trainer-01", "g3-h100-large")
    assert licence.metadata is not None and licence.metadata.all_servers() == []
    assert licence.end == datetime(2026, 11, 20, tzinfo=UTC)


def test_data_as_a_list_is_searched_for_the_project() -> None:
    one = load_fixture("billing_usage_new.json")["data"]
    other = {"attributes": {"project": {"id": "proj_other"}, "price": 1}}
    document = BillingUsageDocument.model_validate({"data": [other, one]})
    attributes = document.usage_for("proj_r0MK4O4kDa95w")
    assert attributes is not None and attributes.price == 51230


def test_an_answer_for_another_project_is_refused() -> None:
    document = BillingUsageDocument.model_validate(load_fixture("billing_usage_new.json"))
    assert document.usage_for("proj_somebody_else") is None


@pytest.mark.parametrize("data", [{}, [], None, {"attributes": None}])
def test_empty_data_holds_no_usage(data: object) -> None:
    assert BillingUsageDocument.model_validate({"data": data}).usage_for("p") is None


def test_wrong_types_read_as_missing_not_as_errors() -> None:
    payload = {"data": {"attributes": {
        "price": "1234.5",
        "threshold": "lots",
        "available_credit_balance": True,
        "period": {"start": "yesterday", "end": 12},
        "products": [
            {"id": 17, "name": None, "unit": "petaflop", "usage_type": "prepaid",
             "quantity": "NaN", "price": [1], "metadata": "not an object",
             "discounts": [{"type": "fixed", "value": "7", "description": "x"}, "junk"]},
            "not a product",
        ],
        "brand_new_field": {"x": 1},
    }}}
    attributes = BillingUsageDocument.model_validate(payload).usage_for("p")
    assert attributes is not None
    assert attributes.price == 1234.5
    assert attributes.threshold is None
    assert attributes.available_credit_balance is None
    assert attributes.period is not None and attributes.period.start is None
    (product,) = attributes.products
    assert product.id == "17"
    assert (product.unit, product.usage_type) == ("petaflop", "prepaid")
    assert product.quantity is None and product.price is None and product.metadata is None
    (discount,) = product.discounts
    assert (discount.type, discount.value) == ("fixed", 7.0)


def test_naive_and_zulu_timestamps_are_utc() -> None:
    payload = {"data": {"attributes": {"period": {"start": "2026-11-01T00:00:00Z",
                                                  "end": "2026-12-01T00:00:00"}}}}
    attributes = BillingUsageDocument.model_validate(payload).usage_for("p")
    assert attributes is not None and attributes.period is not None
    assert attributes.period.start == datetime(2026, 11, 1, tzinfo=UTC)
    assert attributes.period.end == datetime(2026, 12, 1, tzinfo=UTC)


def test_projects_page_reads_the_team_currency() -> None:
    page = ProjectsPage.model_validate(load_fixture("projects_page.json"))
    (project,) = page.data
    assert (project.id, project.currency) == ("proj_WeGoqAanqP7nz", "BRL")


@pytest.mark.parametrize(
    ("payload", "summary", "retry_after"),
    [
        (load_fixture("error_429.json"), "Rate limit exceeded", 7.0),
        ({"code": "not_found", "message": "Project\nnot found"}, "Project not found", None),
        ({"errors": [{"status": "UNPROCESSABLE", "title": "Bad"}]}, "Bad", None),
        (["not", "an", "object"], "", None),
    ],
)
def test_error_bodies_of_every_shape(payload: object, summary: str,
                                     retry_after: float | None) -> None:
    document = parse_error_document(payload)
    assert document.summary == summary
    assert document.retry_after == retry_after
