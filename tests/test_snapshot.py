"""Snapshots: cents to main units, labels from both metadata shapes, folding, the store."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.models import BillingUsageDocument, UsageAttributes
from exporter.snapshot import OTHER_PRODUCT_ID, SnapshotStore, UsageSnapshot, build_usage
from tests.conftest import load_fixture


def attributes(payload: dict[str, Any], project: str) -> UsageAttributes:
    usage = BillingUsageDocument.model_validate(payload).usage_for(project)
    assert usage is not None
    return usage


def new_usage(**kwargs: Any) -> UsageSnapshot:
    kwargs.setdefault("currency", "USD")
    kwargs.setdefault("max_products", 1000)
    return build_usage("proj_r0MK4O4kDa95w",
                       attributes(load_fixture("billing_usage_new.json"), "proj_r0MK4O4kDa95w"),
                       **kwargs)


def test_money_is_converted_from_cents() -> None:
    usage = new_usage()
    assert usage.price == 512.30
    assert usage.available_credit_balance == 123.45
    assert usage.threshold == 1000.0
    metal = usage.products[0]
    assert (metal.price, metal.price_without_discount, metal.unit_price) == (456.0, 480.0, 0.2)
    assert metal.quantity == 2400  # quantities are units, not money


def test_project_names_and_period() -> None:
    usage = new_usage()
    assert (usage.project_slug, usage.project_name) == ("fantastic-iron-clock",
                                                        "Fantastic Iron Clock")
    assert usage.period_start == 1_793_491_200.0  # 2026-11-01T00:00:00Z
    assert usage.period_end == 1_796_083_200.0


def test_several_servers_share_their_plan_and_leave_hostname_empty() -> None:
    metal = new_usage().products[0]
    assert (metal.plan, metal.hostname) == ("c2-small-x86", "")
    assert [s.hostname for s in metal.servers] == ["web-01", "web-02"]


def test_old_metadata_gives_plan_and_hostname() -> None:
    usage = build_usage("proj_old", attributes(load_fixture("billing_usage_old.json"),
                                               "proj_old"), currency="BRL", max_products=10)
    gpu, licence = usage.products
    assert (gpu.plan, gpu.hostname) == ("g3-h100-large", "trainer-01")
    assert (licence.plan, licence.hostname, licence.servers) == ("", "", ())
    assert usage.threshold is None
    assert usage.amount is None
    assert usage.available_credit_balance == -5.0


def test_discounts_percent_as_ratio_and_amount_in_main_units() -> None:
    metal, storage = new_usage().products
    (percent,) = metal.discounts
    assert (percent.ratio, percent.amount) == (0.05, None)
    (amount,) = storage.discounts
    assert (amount.ratio, amount.amount) == (None, 2.5)


def test_an_inverted_period_is_dropped() -> None:
    payload = {"data": {"attributes": {"period": {"start": "2026-12-01T00:00:00Z",
                                                  "end": "2026-11-01T00:00:00Z"}}}}
    usage = build_usage("p", attributes(payload, "p"), currency="USD", max_products=10)
    assert (usage.period_start, usage.period_end) == (None, None)


def test_a_period_in_the_past_is_kept_as_given() -> None:
    payload = {"data": {"attributes": {"period": {"start": "2020-01-01T00:00:00Z",
                                                  "end": "2020-02-01T00:00:00Z"}}}}
    usage = build_usage("p", attributes(payload, "p"), currency="USD", max_products=10)
    assert usage.period_end == 1_580_515_200.0


def test_products_beyond_the_limit_fold_into_other() -> None:
    products = [{"id": f"si_{i}", "name": f"p{i}", "unit": "hour", "price": i * 100,
                 "amount": i * 100, "quantity": i} for i in range(1, 21)]
    payload = {"data": {"attributes": {"products": products}}}
    usage = build_usage("p", attributes(payload, "p"), currency="USD", max_products=5)
    assert len(usage.products) == 6
    assert usage.products_folded == 15
    kept = [p.product_id for p in usage.products[:5]]
    assert kept == ["si_20", "si_19", "si_18", "si_17", "si_16"]  # the costliest stay
    other = usage.products[5]
    assert other.product_id == OTHER_PRODUCT_ID
    assert other.price == sum(range(1, 16))
    assert other.quantity is None


def test_duplicate_product_lines_are_added_up() -> None:
    line = {"id": "si_1", "name": "x", "unit": "hour", "price": 100, "quantity": 2}
    payload = {"data": {"attributes": {"products": [line, line]}}}
    (product,) = build_usage("p", attributes(payload, "p"), currency="USD",
                             max_products=10).products
    assert (product.price, product.quantity) == (2.0, 4)


def test_store_keeps_last_good_usage_through_a_failure() -> None:
    store = SnapshotStore()
    store.set_projects(["proj_r0MK4O4kDa95w"])
    store.record_success(new_usage(), duration=0.5, now=1000.0)
    version = store.view().data_version
    store.record_failure("proj_r0MK4O4kDa95w", "timeout", duration=15.0)
    (status,) = store.view().projects
    assert status.usage is not None and status.usage.price == 512.30
    assert (status.up, status.last_success, status.last_error) == (False, 1000.0, "timeout")
    assert store.view().poll_errors[("proj_r0MK4O4kDa95w", "timeout")] == 1
    assert store.view().data_version == version  # the billing part need not re-render


def test_store_forgets_projects_that_are_gone() -> None:
    store = SnapshotStore()
    store.set_projects(["a", "b"])
    store.record_failure("a", "network", duration=1)
    store.set_projects(["b", "c"])
    view = store.view()
    assert [p.project_id for p in view.projects] == ["b", "c"]
    assert all(key[0] != "a" for key in view.poll_errors)
    assert view.poll_errors[("c", "rate_limited")] == 0


def test_ready_once_every_project_was_polled() -> None:
    store = SnapshotStore()
    assert not store.view().ready  # no projects known yet
    store.set_projects(["a", "b"])
    store.record_failure("a", "network", duration=1)
    assert not store.view().ready
    store.record_failure("b", "network", duration=1)
    assert store.view().ready


@pytest.mark.parametrize("reason", ["timeout", "unauthorized"])
def test_views_are_immutable_snapshots(reason: str) -> None:
    store = SnapshotStore()
    store.set_projects(["a"])
    before = store.view()
    store.record_failure("a", reason, duration=1)
    assert before.poll_errors[("a", reason)] == 0
    assert store.view().poll_errors[("a", reason)] == 1
    with pytest.raises(TypeError):
        before.poll_errors[("a", reason)] = 5  # type: ignore[index]


@pytest.mark.parametrize("period", [None, {}, {"start": "2026-11-01T00:00:00Z"}, "garbage"])
def test_a_missing_period_drops_only_the_period_metrics(period: object) -> None:
    payload = {"data": {"attributes": {"price": 100, "period": period}}}
    usage = build_usage("p", attributes(payload, "p"), currency="USD", max_products=10)
    assert usage.price == 1.0
    assert usage.period_end is None
    if isinstance(period, dict) and period:
        assert usage.period_start == 1_793_491_200.0
