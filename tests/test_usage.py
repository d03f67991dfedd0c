"""`usage.build_usage`, one parsed answer into a snapshot, tested directly: money in
main units, the period, duplicates merged, each cardinality guard exactly at, one below
and one above its limit, discounts, the allocation of a line's price over its servers
(additive to the cent), both answer shapes; then every figure `collector.py` exports of
a project, asserted from a small known answer (not only through the golden file)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exporter.models import BillingUsageDocument, parse_document
from exporter.snapshot import (
    MAX_LABEL_CHARS,
    OTHER,
    UNATTRIBUTED,
    UNTAGGED,
    BucketInfo,
    DiscountInfo,
    ProductServer,
    ProjectStatus,
    ServerSpend,
    ServerTag,
    TagSpend,
    UnitDivisor,
    UsageSnapshot,
    api_label,
    label,
    unique,
)
from exporter.usage import Limits, build_usage
from tests.conftest import (
    AT,
    NEW,
    default_limits,
    load_fixture,
    parse_samples,
    reference_exposition,
    store_with,
    usage_of,
)

NOV_1 = 1_793_491_200.0  # 2026-11-01T00:00:00Z
DEC_1 = 1_796_083_200.0  # 2026-12-01T00:00:00Z
NOV_ISO = "2026-11-01T00:00:00Z"
#: Limits high enough that nothing folds unless a test says so.
WIDE = Limits(products=100, servers=100, tags_per_server=100)


def answer(*products: dict[str, Any], **attributes: Any) -> dict[str, Any]:
    return {"data": {"attributes": {"products": list(products), **attributes}}}


def line(pid: str, price: float | None, *servers: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A product line of `price` cents over `servers` (new metadata shape)."""
    return {
        "id": pid,
        "name": pid,
        "price": price,
        "metadata": {"servers": list(servers)},
        **fields,
    }


def server(sid: str, *tags: str, hostname: str | None = None, plan: str = "c2") -> dict[str, Any]:
    return {"id": sid, "hostname": hostname or f"host-{sid}", "plan": plan, "tags": list(tags)}


def build(payload: dict[str, Any], limits: Limits = WIDE) -> UsageSnapshot:
    """The snapshot of project `p` from `payload`."""
    return usage_of(payload, "p", limits=limits)


def tag_prices(usage: UsageSnapshot) -> dict[str, float]:
    return {t.tag: t.price for t in usage.tags}


def server_prices(usage: UsageSnapshot) -> dict[str, float]:
    return {s.server_id: s.price for s in usage.servers}


# --- money and names ---------------------------------------------------------------


def test_every_money_figure_is_cents_over_a_hundred_and_quantity_is_not_money() -> None:
    product = line(
        "si_1",
        3456,
        amount=3500,
        amount_without_discount=3600,
        unit_price=12,
        unit_amount=13,
        quantity=288,
    )
    usage = build(answer(product, price=34556, amount=34000, available_credit_balance=-1234))
    assert (usage.price, usage.amount, usage.available_credit_balance) == (345.56, 340.0, -12.34)
    assert usage.threshold is None
    (p,) = usage.products
    assert (p.price, p.amount, p.price_without_discount) == (34.56, 35.0, 36.0)
    assert (p.unit_price, p.unit_amount, p.quantity) == (0.12, 0.13, 288)


def test_a_threshold_of_zero_is_zero_not_missing() -> None:
    usage = build(answer(price=100, threshold=0))
    assert usage.threshold == 0.0
    assert build(answer(price=100, threshold=25000)).threshold == 250.0


def test_project_names_come_from_the_answer_else_from_discovery() -> None:
    named = answer(price=1, project={"id": "p", "slug": "from-api", "name": "From API"})
    attributes = parse_document(BillingUsageDocument, json.dumps(named).encode()).usage_for("p")
    assert attributes is not None
    usage = build_usage(
        "p", attributes, currency="EUR", limits=WIDE, at=AT, slug="discovered", name="Disc"
    )
    assert (usage.project_id, usage.project_slug, usage.project_name) == (
        "p",
        "from-api",
        "From API",
    )
    assert usage.currency == "EUR"
    bare = parse_document(BillingUsageDocument, json.dumps(answer(price=1)).encode()).usage_for("p")
    assert bare is not None
    fallback = build_usage(
        "p", bare, currency="USD", limits=WIDE, at=AT, slug="discovered", name="Disc"
    )
    assert (fallback.project_slug, fallback.project_name) == ("discovered", "Disc")
    nothing = build_usage("p", bare, currency="USD", limits=WIDE, at=AT)
    assert (nothing.project_slug, nothing.project_name) == ("", "")


def test_a_product_is_named_by_its_name_else_its_description() -> None:
    named = {"id": "a", "name": "Name", "description": "Desc", "price": 1}
    described = {"id": "b", "description": "Desc", "price": 1}
    usage = build(answer(named, described))
    assert [p.name for p in usage.products] == ["Name", "Desc"]


def test_ids_and_tags_from_the_api_never_equal_a_marker() -> None:
    usage = build(answer(line("__other__", 100, server("__sv", "__untagged__"))))
    (product,) = usage.products
    assert product.product_id == "___other__"
    (spend,) = usage.servers
    assert (spend.server_id, spend.tags) == ("___sv", ("___untagged__",))
    assert tag_prices(usage) == {"___untagged__": 1.0, UNTAGGED: 0.0, UNATTRIBUTED: 0.0}


# --- the period ----------------------------------------------------------------------


def test_the_period_start_and_end_are_unix_times() -> None:
    usage = build(answer(price=1, period={"start": "2026-11-01T00:00:00Z", "end": "2026-12-01"}))
    assert (usage.period_start, usage.period_end) == (NOV_1, DEC_1)


def test_a_period_end_is_its_own_field_with_its_offset() -> None:
    period = {"start": "2026-11-01T00:00:00+00:00", "end": "2026-11-30T23:00:00-01:00"}
    usage = build(answer(price=1, period=period))
    assert usage.period_start == NOV_1
    assert usage.period_end == DEC_1  # 23:00 at -01:00 is midnight UTC


def test_a_period_without_offset_is_read_as_utc() -> None:
    usage = build(answer(price=1, period={"start": "2026-11-01T00:00:00", "end": None}))
    assert (usage.period_start, usage.period_end) == (NOV_1, None)


def test_a_zero_length_period_is_kept() -> None:
    """The boundary of the inverted-period rule: start == end is a period, not nonsense."""
    usage = build(answer(price=1, period={"start": "2026-11-01T00:00:00Z", "end": NOV_ISO}))
    assert (usage.period_start, usage.period_end) == (NOV_1, NOV_1)


@pytest.mark.parametrize("end", ["2026-10-31T23:59:59Z", "2026-10-01T00:00:00Z"])
def test_a_negative_period_drops_both_ends(end: str) -> None:
    usage = build(answer(price=1, period={"start": NOV_ISO, "end": end}))
    assert (usage.period_start, usage.period_end) == (None, None)
    assert usage.price == 0.01  # the rest of the answer stands


def test_a_one_second_period_is_kept() -> None:
    usage = build(answer(price=1, period={"start": NOV_ISO, "end": "2026-11-01T00:00:01Z"}))
    assert (usage.period_start, usage.period_end) == (NOV_1, NOV_1 + 1)


# --- duplicates ----------------------------------------------------------------------


def test_duplicate_lines_add_up_every_summed_figure() -> None:
    first = line(
        "si_1",
        100,
        server("sv_1", "a"),
        server("sv_2", "b"),
        unit="hour",
        amount=125,
        amount_without_discount=150,
        quantity=2,
        unit_price=50,
        unit_amount=5,
    )
    second = line(
        "si_1",
        300,
        server("sv_2", "b"),
        server("sv_3", "c"),
        unit="hour",
        amount=375,
        amount_without_discount=450,
        quantity=6,
        unit_price=50,
        unit_amount=5,
    )
    usage = build(answer(first, second))
    (p,) = usage.products
    assert (p.price, p.amount, p.price_without_discount, p.quantity) == (4.0, 5.0, 6.0, 8)
    assert (p.unit_price, p.unit_amount) == (0.5, 0.05)  # a rate, not summed
    assert (p.plan, p.hostname) == ("c2", "")
    assert [s.server_id for s in p.servers] == ["sv_1", "sv_2", "sv_3"]
    # allocation reads the lines as given: each line over its own servers
    assert server_prices(usage) == {"sv_1": 0.5, "sv_2": 2.0, "sv_3": 1.5}


def test_a_missing_figure_merges_as_the_others_value() -> None:
    usage = build(answer(line("si_1", None, quantity=3), line("si_1", 250, amount=7)))
    (p,) = usage.products
    assert (p.price, p.amount, p.quantity) == (2.5, 0.07, 3)
    both_missing = build(answer(line("si_1", None, quantity=1), line("si_1", None, quantity=1)))
    assert both_missing.products[0].price is None


def test_lines_differing_in_any_label_are_not_merged() -> None:
    base = line("si_1", 100, unit="hour")
    other_unit = line("si_1", 200, unit="GB")
    other_name = {**line("si_1", 400, unit="hour"), "name": "renamed"}
    usage = build(answer(base, other_unit, other_name))
    assert [p.price for p in usage.products] == [1.0, 2.0, 4.0]
    assert usage.products_folded == 0


def test_merged_lines_keep_the_first_bucket_and_divisor() -> None:
    first = {
        "id": "si_s",
        "resource": "object_storage",
        "price": 100,
        "metadata": {"bucket": {"id": "b1", "name": "one"}, "billing_unit_divisor": None},
    }
    second = {
        "id": "si_s",
        "resource": "object_storage",
        "price": 100,
        "metadata": {"bucket": {"id": "b2", "name": "two"}, "billing_unit_divisor": 1000},
    }
    third = {**second, "metadata": {"billing_unit_divisor": 10}}
    usage = build(answer(first, second, third))
    assert usage.buckets == (BucketInfo("si_s", "b1", "one", ""),)
    assert usage.divisors == (UnitDivisor("si_s", 1000.0),)
    assert usage.products[0].price == 3.0


@pytest.mark.parametrize("divisor", [0, -5, None, "x"])
def test_a_divisor_that_is_not_positive_is_not_exported(divisor: object) -> None:
    line_ = {"id": "si_c", "price": 1, "metadata": {"billing_unit_divisor": divisor}}
    assert build(answer(line_)).divisors == ()


def test_a_divisor_of_a_fraction_is_kept() -> None:
    line_ = {"id": "si_c", "price": 1, "metadata": {"billing_unit_divisor": 0.5}}
    assert build(answer(line_)).divisors == (UnitDivisor("si_c", 0.5),)


# --- products: folding at the limit -----------------------------------------------


def priced(count: int) -> list[dict[str, Any]]:
    """`count` lines, the first the cheapest: si_1 costs 1.00, si_2 2.00, ..."""
    return [
        line(
            f"si_{i}",
            i * 100,
            amount=i * 25,
            amount_without_discount=i * 1000,
            quantity=i,
            unit_price=i,
            discounts=[{"description": "d", "type": "amount", "value": i}],
        )
        for i in range(1, count + 1)
    ]


@pytest.mark.parametrize("count", [4, 5])
def test_products_at_or_below_the_limit_fold_nothing_and_keep_their_order(count: int) -> None:
    usage = build(answer(*priced(count)), limits=default_limits(products=5))
    assert [p.product_id for p in usage.products] == [f"si_{i}" for i in range(1, count + 1)]
    assert usage.products_folded == 0
    assert OTHER not in {p.product_id for p in usage.products}
    assert len(usage.discounts) == count


def test_one_product_above_the_limit_folds_the_cheapest_into_other() -> None:
    usage = build(answer(*priced(6)), limits=default_limits(products=5))
    assert [p.product_id for p in usage.products] == ["si_6", "si_5", "si_4", "si_3", "si_2", OTHER]
    assert usage.products_folded == 1
    other = usage.products[-1]
    assert (other.price, other.amount, other.price_without_discount) == (1.0, 0.25, 10.0)
    assert (other.unit_price, other.quantity, other.unit_amount) == (None, None, None)
    assert (other.name, other.resource, other.unit, other.plan, other.hostname) == (
        "other",
        "",
        "",
        "",
        "",
    )
    assert {d.product_id for d in usage.discounts} == {"si_2", "si_3", "si_4", "si_5", "si_6"}


def test_two_products_above_the_limit_fold_and_their_figures_add_up() -> None:
    usage = build(answer(*priced(7)), limits=default_limits(products=5))
    assert usage.products_folded == 2
    other = usage.products[-1]
    assert other.product_id == OTHER
    assert (other.price, other.amount, other.price_without_discount) == (3.0, 0.75, 30.0)
    assert len(usage.products) == 6


def test_a_limit_of_one_keeps_the_costliest() -> None:
    usage = build(answer(*priced(3)), limits=default_limits(products=1))
    assert [p.product_id for p in usage.products] == ["si_3", OTHER]
    assert usage.products[1].price == 3.0
    assert usage.products_folded == 2


def test_a_product_without_price_ranks_as_free_and_ties_keep_their_order() -> None:
    lines = [line("si_none", None, quantity=1), line("si_a", 100), line("si_b", 100)]
    usage = build(answer(*lines), limits=default_limits(products=1))
    assert [p.product_id for p in usage.products] == ["si_a", OTHER]
    assert usage.products[1].price == 1.0  # si_b; si_none adds nothing


def test_folded_products_leave_no_bucket_divisor_or_discount_rows() -> None:
    cheap = {
        "id": "si_cheap",
        "price": 1,
        "discounts": [{"description": "d", "type": "percent", "value": 5}],
        "metadata": {"bucket": {"id": "b"}, "billing_unit_divisor": 1000},
    }
    dear = {**cheap, "id": "si_dear", "price": 100}
    usage = build(answer(cheap, dear), limits=default_limits(products=1))
    assert [b.product_id for b in usage.buckets] == ["si_dear"]
    assert [d.product_id for d in usage.divisors] == ["si_dear"]
    assert [d.product_id for d in usage.discounts] == ["si_dear"]


def test_folding_products_never_moves_money_between_servers() -> None:
    lines = [line("si_a", 100, server("sv_1")), line("si_b", 200, server("sv_2"))]
    usage = build(answer(*lines), limits=default_limits(products=1))
    assert server_prices(usage) == {"sv_1": 1.0, "sv_2": 2.0}


# --- discounts -----------------------------------------------------------------------


def test_percent_is_a_ratio_and_amount_is_main_units() -> None:
    discounts = [
        {"description": "p", "type": "percent", "value": 12.5},
        {"description": "a", "type": "amount", "value": 250},
    ]
    usage = build(answer(line("si_1", 1000, discounts=discounts)))
    assert usage.discounts == (
        DiscountInfo("si_1", "p", 0.125, None),
        DiscountInfo("si_1", "a", None, 2.5),
    )


@pytest.mark.parametrize("values", [(5, 10), (10, 5)])
def test_the_same_percent_twice_keeps_its_largest(values: tuple[int, int]) -> None:
    lines = [
        line("si_1", 100, discounts=[{"description": "p", "type": "percent", "value": v}])
        for v in values
    ]
    (discount,) = build(answer(*lines)).discounts
    assert (discount.ratio, discount.amount) == (0.1, None)


def test_the_same_amount_twice_adds_up() -> None:
    discounts = [
        {"description": "a", "type": "amount", "value": 150},
        {"description": "a", "type": "amount", "value": 250},
    ]
    (discount,) = build(answer(line("si_1", 100, discounts=discounts))).discounts
    assert (discount.ratio, discount.amount) == (None, 4.0)


def test_a_percent_and_an_amount_of_one_description_share_a_row() -> None:
    discounts = [
        {"description": "x", "type": "Percent", "value": 20},
        {"description": "x", "type": "AMOUNT", "value": 100},
    ]
    usage = build(answer(line("si_1", 100, discounts=discounts)))
    assert usage.discounts == (DiscountInfo("si_1", "x", 0.2, 1.0),)
    assert usage.discounts_unknown == 0  # the type is read case-insensitively


def test_a_percent_without_value_has_no_ratio() -> None:
    discounts = [{"description": "p", "type": "percent", "value": None}]
    assert build(answer(line("si_1", 100, discounts=discounts))).discounts == (
        DiscountInfo("si_1", "p", None, None),
    )


def test_unknown_discount_types_are_counted_in_every_line_even_folded_ones() -> None:
    odd = [{"description": "o", "type": "coupon", "value": 1}, {"description": "n", "value": 2}]
    lines = [line("si_cheap", 1, discounts=odd), line("si_dear", 100, discounts=odd[:1])]
    usage = build(answer(*lines), limits=default_limits(products=1))
    assert usage.discounts_unknown == 3
    assert usage.discounts == ()


# --- allocation: a line's price over its servers ----------------------------------------


def test_a_price_split_over_three_servers_is_rounded_and_adds_up_exactly() -> None:
    usage = build(answer(line("si_1", 3456, server("a"), server("b"), server("c"))))
    assert server_prices(usage) == {"a": 11.52, "b": 11.52, "c": 11.52}
    assert sum(s.price for s in usage.servers) == 34.56


def test_a_third_is_rounded_to_a_millionth_and_the_split_is_additive_to_the_cent() -> None:
    usage = build(answer(line("si_1", 100, server("a"), server("b"), server("c"))))
    assert [s.price for s in usage.servers] == [0.333333, 0.333333, 0.333333]
    assert abs(sum(s.price for s in usage.servers) - 1.0) < 0.01


def test_a_servers_share_sums_over_its_lines_in_order_of_appearance() -> None:
    lines = [
        line("si_1", 900, server("sv_1", "web"), server("sv_2", "db")),
        line("si_2", 100, server("sv_3"), server("sv_1", "prod")),
        line("si_3", 30, server("sv_1")),
    ]
    usage = build(answer(*lines))
    assert [(s.server_id, s.price, s.tags) for s in usage.servers] == [
        ("sv_1", 5.3, ("web", "prod")),
        ("sv_2", 4.5, ("db",)),
        ("sv_3", 0.5, ()),
    ]
    assert tag_prices(usage) == {
        "web": 5.3,
        "prod": 5.3,
        "db": 4.5,
        UNTAGGED: 0.5,
        UNATTRIBUTED: 0.0,
    }


def test_lines_without_servers_and_unnamed_servers_are_unattributed() -> None:
    lines = [
        line("si_1", 400, {"id": "sv_1", "hostname": "a"}, {"plan": "nameless"}),
        line("si_2", 125),
        {"id": "si_3", "price": 75},  # no metadata at all
        line("si_4", None, server("sv_9")),  # no price: nothing to allocate
    ]
    usage = build(answer(*lines))
    assert [(s.server_id, s.price) for s in usage.servers] == [("sv_1", 2.0)]
    assert tag_prices(usage)[UNATTRIBUTED] == 4.0
    assert sum(s.price for s in usage.servers) + tag_prices(usage)[UNATTRIBUTED] == 6.0


def test_a_server_without_id_is_known_by_its_hostname() -> None:
    lines = [
        line("si_1", 100, {"hostname": "solo", "plan": "c2"}),
        line("si_2", 300, {"hostname": "solo", "plan": "c2", "tags": ["t"]}),
        line("si_3", 50, {"hostname": "other"}),
    ]
    usage = build(answer(*lines))
    assert [(s.server_id, s.hostname, s.price, s.tags) for s in usage.servers] == [
        ("", "solo", 4.0, ("t",)),
        ("", "other", 0.5, ()),
    ]


def test_tags_price_each_server_under_each_tag_and_untagged_apart() -> None:
    usage = build(answer(line("si_1", 600, server("a", "x", "y"), server("b", "x"), server("c"))))
    tags = usage.tags
    assert tags == (
        TagSpend(UNATTRIBUTED, 0.0),
        TagSpend(UNTAGGED, 2.0),
        TagSpend("x", 4.0),
        TagSpend("y", 2.0),
    )


def test_tag_run_rates_split_as_prices_and_fold_with_their_servers() -> None:
    """What a tag's servers cost an hour now: each hourly line's rate split evenly over
    its servers, a folded server's under `__other__`, a line without servers
    unattributed; the parts add up to the project's run rate."""
    hourly = {"unit": "hour", "usage_type": "metered"}
    usage = build(
        answer(
            line("si_1", 100, server("a", "x"), server("b", "y"), unit_price=40, **hourly),
            line("si_2", 300, server("c", "x"), unit_price=10, **hourly),
            line("si_3", 50, server("d"), unit_price=2, **hourly),  # the cheapest: folded
            line("si_4", 70, unit_price=6, **hourly),  # no server: unattributed
            line("si_5", 90, server("a", "x"), unit="GB", unit_price=99),  # no clock
        ),
        limits=default_limits(servers=3),
    )
    rates = {t.tag: t.rate for t in usage.tags}
    assert rates == {
        "x": pytest.approx(0.2 + 0.1),  # a's half of si_1, and c
        "y": pytest.approx(0.2),
        OTHER: pytest.approx(0.02),  # d, folded
        UNTAGGED: 0.0,
        UNATTRIBUTED: pytest.approx(0.06),
    }
    assert usage.run_rate == pytest.approx(0.2 + 0.2 + 0.1 + 0.02 + 0.06)


def test_empty_and_repeated_tags_are_dropped() -> None:
    usage = build(answer(line("si_1", 100, server("a", "t", "", "t", "u"))))
    assert usage.servers[0].tags == ("t", "u")


def test_negative_lines_allocate_like_any_other() -> None:
    usage = build(answer(line("si_1", 300, server("a")), line("si_credit", -100, server("a"))))
    assert server_prices(usage) == {"a": 2.0}


# --- servers: folding at the limit ----------------------------------------------------


def servers_priced(count: int) -> list[dict[str, Any]]:
    """`count` lines of one server each; sv_1 costs 1.00, sv_2 2.00, ..."""
    return [line(f"si_{i}", i * 100, server(f"sv_{i}", f"t{i}")) for i in range(1, count + 1)]


@pytest.mark.parametrize("count", [2, 3])
def test_servers_at_or_below_the_limit_fold_nothing(count: int) -> None:
    usage = build(answer(*servers_priced(count)), limits=default_limits(servers=3))
    assert [s.server_id for s in usage.servers] == [f"sv_{i}" for i in range(1, count + 1)]
    assert usage.servers_folded == 0
    assert OTHER not in tag_prices(usage)


def test_one_server_above_the_limit_folds_the_cheapest_into_other() -> None:
    usage = build(answer(*servers_priced(4)), limits=default_limits(servers=3))
    assert usage.servers_folded == 1
    assert usage.servers == (
        ServerSpend("sv_4", "host-sv_4", "c2", 4.0, ("t4",)),
        ServerSpend("sv_3", "host-sv_3", "c2", 3.0, ("t3",)),
        ServerSpend("sv_2", "host-sv_2", "c2", 2.0, ("t2",)),
        ServerSpend(OTHER, "", "", 1.0, (OTHER,)),
    )
    assert tag_prices(usage)[OTHER] == 1.0
    assert "t1" not in tag_prices(usage)
    # the folded server is not named by a tag row
    assert all(t.server_id != OTHER for t in usage.server_tags)


def test_two_servers_above_the_limit_fold_and_their_shares_add_up() -> None:
    usage = build(answer(*servers_priced(5)), limits=default_limits(servers=3))
    assert usage.servers_folded == 2
    assert usage.servers[-1] == ServerSpend(OTHER, "", "", 3.0, (OTHER,))
    assert sum(s.price for s in usage.servers) == 15.0


def test_the_folded_servers_split_shares_are_summed_before_rounding() -> None:
    thirds = line("si_1", 100, server("a"), server("b"), server("c"))
    usage = build(answer(thirds, line("si_2", 500, server("d"))), limits=default_limits(servers=1))
    assert usage.servers_folded == 3
    assert [(s.server_id, s.price) for s in usage.servers] == [("d", 5.0), (OTHER, 1.0)]


# --- tags per server: folding at the limit --------------------------------------------


@pytest.mark.parametrize("count", [2, 3])
def test_tags_at_or_below_the_limit_fold_nothing(count: int) -> None:
    tags = [f"t{i}" for i in range(count)]
    usage = build(
        answer(line("si_1", 100, server("a", *tags))), limits=default_limits(tags_per_server=3)
    )
    assert usage.servers[0].tags == tuple(tags)
    assert usage.tags_folded == 0
    assert OTHER not in tag_prices(usage)


def test_one_tag_above_the_limit_folds_into_other() -> None:
    usage = build(
        answer(line("si_1", 100, server("a", "t0", "t1", "t2", "t3"))),
        limits=default_limits(tags_per_server=3),
    )
    assert usage.servers[0].tags == ("t0", "t1", "t2", OTHER)
    assert usage.tags_folded == 1
    assert tag_prices(usage) == {
        "t0": 1.0,
        "t1": 1.0,
        "t2": 1.0,
        OTHER: 1.0,
        UNTAGGED: 0.0,
        UNATTRIBUTED: 0.0,
    }
    assert [t.tag for t in usage.server_tags] == ["t0", "t1", "t2", OTHER]


def test_tags_folded_count_every_server() -> None:
    lines = [
        line("si_1", 100, server("a", "t0", "t1", "t2", "t3", "t4")),
        line("si_2", 100, server("b", "t0", "t1", "t2", "t3")),
        line("si_3", 100, server("c", "t0")),
    ]
    usage = build(answer(*lines), limits=default_limits(tags_per_server=3))
    assert usage.tags_folded == 3


def test_a_servers_tags_are_its_lines_tags_together_before_the_limit() -> None:
    lines = [line("si_1", 100, server("a", "x", "y")), line("si_2", 100, server("a", "y", "z"))]
    at = build(answer(*lines), limits=default_limits(tags_per_server=3))
    assert (at.servers[0].tags, at.tags_folded) == (("x", "y", "z"), 0)
    above = build(answer(*lines), limits=default_limits(tags_per_server=2))
    assert (above.servers[0].tags, above.tags_folded) == (("x", "y", OTHER), 1)


# --- both answer shapes ---------------------------------------------------------------


def test_the_new_shape_fixture_figure_by_figure() -> None:
    usage = usage_of(load_fixture("billing_usage_new.json"), NEW)
    assert (usage.price, usage.amount, usage.available_credit_balance, usage.threshold) == (
        512.3,
        512.3,
        123.45,
        1000.0,
    )
    assert (usage.period_start, usage.period_end) == (NOV_1, DEC_1)
    assert [(p.product_id, p.plan, p.hostname, p.price) for p in usage.products] == [
        ("si_aslft06m", "c2-small-x86", "", 456.0),
        ("si_on0fybnq", "", "", 56.3),
        ("si_eip01", "", "", 10.0),  # two servers of two plans: no one plan
        ("si_calls", "", "", 4.0),
    ]
    assert usage.servers == (
        ServerSpend("sv_1", "web-01", "c2-small-x86", 233.0, ("web", "prod")),
        ServerSpend("sv_2", "db-01", "c2-small-x86", 228.0, ("db",)),
        ServerSpend("sv_3", "worker-01", "c3-medium-x86", 5.0, ()),
    )
    # Rates split as prices are: si_aslft06m's 0.20 an hour less 5 % over sv_1 and
    # sv_2 (0.095 each), si_eip01's 0.01 over sv_1 and sv_3; storage and calls have no
    # clock in their unit, so nothing unattributed runs by the hour.
    assert usage.tags == (
        TagSpend(UNATTRIBUTED, 60.3, 0.0),
        TagSpend(UNTAGGED, 5.0, 0.005),
        TagSpend("db", 228.0, 0.095),
        TagSpend("prod", 233.0, 0.1),
        TagSpend("web", 233.0, 0.1),
    )
    assert usage.run_rate == pytest.approx(0.2)  # = sv_1 + sv_2 + sv_3 + unattributed
    assert usage.buckets == (
        BucketInfo("si_on0fybnq", "bkt_1", "lake", ""),
        BucketInfo("si_calls", "bkt_2", "assets", "NYC"),
    )
    assert usage.divisors == (UnitDivisor("si_calls", 1000.0),)
    assert usage.discounts == (
        DiscountInfo("si_aslft06m", "Monthly Discount - Accelerate", 0.05, None),
        DiscountInfo("si_on0fybnq", "Storage launch credit", None, 2.5),
    )
    assert (usage.products_folded, usage.servers_folded, usage.tags_folded) == (0, 0, 0)


def test_the_old_shape_fixture_figure_by_figure() -> None:
    usage = usage_of(load_fixture("billing_usage_old.json"), "proj_old", currency="BRL")
    assert (usage.price, usage.amount, usage.available_credit_balance, usage.threshold) == (
        120.505,
        None,
        -5.0,
        None,
    )
    assert (usage.period_start, usage.period_end) == (NOV_1, DEC_1)
    gpu, licence = usage.products
    assert (gpu.plan, gpu.hostname, gpu.price, gpu.unit_price, gpu.quantity) == (
        "g3-h100-large",
        "trainer-01",
        120.0,
        4.5,
        26.666,
    )
    assert (licence.price, licence.price_without_discount, licence.servers) == (0.505, 0.5, ())
    assert usage.servers == (ServerSpend("sv_gpu", "trainer-01", "g3-h100-large", 120.0, ("ml",)),)
    assert usage.tags == (
        TagSpend(UNATTRIBUTED, 0.505, 0.0),  # a licence: paid up front, no rate
        TagSpend(UNTAGGED, 0.0, 0.0),
        TagSpend("ml", 120.0, 4.5),
    )
    assert usage.currency == "BRL"


def test_an_old_shape_bare_id_is_a_server_only_on_a_servers_line() -> None:
    metal = {"id": "si_m", "resource": "bare_metal", "price": 100, "metadata": {"id": "sv_m"}}
    storage = {"id": "si_s", "resource": "object_storage", "price": 200, "metadata": {"id": "bk"}}
    usage = build(answer(metal, storage))
    assert server_prices(usage) == {"sv_m": 1.0}
    assert usage.buckets == (BucketInfo("si_s", "bk", "", ""),)
    assert tag_prices(usage)[UNATTRIBUTED] == 2.0


def test_a_list_answer_is_searched_for_the_project() -> None:
    document = {
        "data": [
            {"attributes": {"project": {"id": "other"}, "price": 999}},
            {"attributes": {"project": {"id": "p"}, "price": 100}},
        ]
    }
    assert usage_of(document, "p").price == 1.0


# --- snapshot.py's derived rows and labels ------------------------------------------------


def test_product_servers_are_each_server_of_each_line_once() -> None:
    lines = [
        line("si_1", 100, server("a"), server("b")),
        line("si_1", 100, server("b")),  # merged into the line above
        line("si_2", 100, server("a")),
    ]
    assert build(answer(*lines)).product_servers == (
        ProductServer("si_1", "a", "host-a", "c2"),
        ProductServer("si_1", "b", "host-b", "c2"),
        ProductServer("si_2", "a", "host-a", "c2"),
    )


def test_server_tags_name_each_tag_of_each_named_server() -> None:
    usage = build(
        answer(line("si_1", 100, server("a", "x", "y")), line("si_2", 200, server("b", "z"))),
        limits=default_limits(servers=1),
    )
    assert usage.server_tags == (ServerTag("b", "host-b", "z"),)


def test_a_label_is_cut_at_exactly_its_limit() -> None:
    assert label("h" * MAX_LABEL_CHARS) == "h" * MAX_LABEL_CHARS
    assert label("h" * (MAX_LABEL_CHARS + 1)) == "h" * MAX_LABEL_CHARS
    assert label("h" * (MAX_LABEL_CHARS - 1)) == "h" * (MAX_LABEL_CHARS - 1)
    assert (label(None), label("")) == ("", "")


def test_api_labels_only_prefix_the_marker() -> None:
    assert api_label("__x") == "___x"
    assert api_label("_x") == "_x"
    assert api_label("x__") == "x__"
    assert api_label(None) == ""


def test_unique_keeps_the_first_order() -> None:
    assert unique([3, 1, 3, 2, 1]) == (3, 1, 2)


def test_a_projects_slug_is_the_polls_else_discoverys() -> None:
    usage = build(answer(price=1, project={"id": "p", "slug": "polled"}))
    assert ProjectStatus("p", "t", usage=usage, slug="found").project_slug == "polled"
    assert ProjectStatus("p", "t", usage=None, slug="found").project_slug == "found"
    unslugged = build(answer(price=1))
    assert ProjectStatus("p", "t", usage=unslugged, slug="found").project_slug == "found"


# --- every exported figure of a project, directly ------------------------------------------

Labels = frozenset[tuple[str, str]]


def labels(**values: str) -> Labels:
    return frozenset(values.items())


def figures(payload: dict[str, Any], limits: Limits = WIDE) -> dict[str, dict[Labels, float]]:
    """Each series the collector renders for one project polled at 1_795_000_000 in
    0.25 s, by sample name, parsed back from prometheus_client's text."""
    store = store_with(("proj_k", payload, "USD"), team="ops", limits=limits)
    found: dict[str, dict[Labels, float]] = {}
    for (name, ls), value in parse_samples(reference_exposition(store).decode()).items():
        found.setdefault(name, {})[ls] = value
    return found


KNOWN = answer(
    {
        "id": "si_web",
        "name": "web",
        "resource": "bare_metal",
        "unit": "hour",
        "usage_type": "metered",
        "price": 3456,
        "amount": 3500,
        "amount_without_discount": 3600,
        "unit_price": 12,
        "unit_amount": 13,
        "quantity": 288,
        "discounts": [
            {"description": "monthly", "type": "percent", "value": 4},
            {"description": "credit", "type": "amount", "value": 144},
        ],
        "metadata": {
            "servers": [
                server("sv_a", "Web", "prod", plan="c2"),
                server("sv_b", "Web", plan="c2"),
                server("sv_c", plan="c2"),
            ]
        },
    },
    {
        "id": "si_obj",
        "name": "obj",
        "resource": "object_storage",
        "unit": "GB",
        "usage_type": "metered",
        "price": 1100,
        "quantity": 55,
        "unit_price": 20,
        "metadata": {
            "servers": [],
            "bucket": {"id": "bkt", "name": "lake", "location": "SAO"},
            "billing_unit_divisor": 1000,
        },
    },
    {
        "id": "si_lic",
        "name": "lic",
        "resource": "license",
        "unit": "quantity",
        "usage_type": "licensed",
        "price": 7,
        "discounts": [{"description": "odd", "type": "coupon", "value": 1}],
    },
    project={"id": "proj_k", "slug": "known", "name": "Known"},
    period={"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"},
    price=34556,
    amount=34000,
    available_credit_balance=1234,
    threshold=50000,
)

P = {"project_id": "proj_k", "project_slug": "known"}
PM = {**P, "currency": "USD"}
WEB = {
    "product_id": "si_web",
    "product_name": "web",
    "resource": "bare_metal",
    "unit": "hour",
    "usage_type": "metered",
    "plan": "c2",
    "hostname": "",
}
OBJ = {
    "product_id": "si_obj",
    "product_name": "obj",
    "resource": "object_storage",
    "unit": "GB",
    "usage_type": "metered",
    "plan": "",
    "hostname": "",
}
LIC = {
    **OBJ,
    "product_id": "si_lic",
    "product_name": "lic",
    "resource": "license",
    "unit": "quantity",
    "usage_type": "licensed",
}


def test_the_projects_money_figures() -> None:
    found = figures(KNOWN)
    assert found["latitudesh_billing_price"] == {labels(**PM): 345.56}
    assert found["latitudesh_billing_amount"] == {labels(**PM): 340.0}
    assert found["latitudesh_billing_available_credit_balance"] == {labels(**PM): 12.34}
    assert found["latitudesh_billing_threshold"] == {labels(**PM): 500.0}


def test_the_period_figures() -> None:
    found = figures(KNOWN)
    assert found["latitudesh_billing_period_start_timestamp_seconds"] == {labels(**P): NOV_1}
    assert found["latitudesh_billing_period_end_timestamp_seconds"] == {labels(**P): DEC_1}


def test_the_project_info_and_the_counts() -> None:
    found = figures(KNOWN)
    info = labels(**PM, project_name="Known", team="ops")
    assert found["latitudesh_project_info"] == {info: 1.0}
    one = labels(project_id="proj_k")
    assert found["latitudesh_billing_products_folded"] == {one: 0.0}
    assert found["latitudesh_billing_servers_folded"] == {one: 0.0}
    assert found["latitudesh_billing_tags_folded"] == {one: 0.0}
    assert found["latitudesh_billing_discounts_unknown_type"] == {one: 1.0}


def test_the_folded_counts_each_their_own() -> None:
    products = [
        line(f"si_{i}", i * 100, server(f"sv_{i}", "a", "b", "c", "d"), discounts=[{"value": 1}])
        for i in range(1, 5)
    ]
    found = figures(answer(*products), Limits(products=1, servers=3, tags_per_server=2))
    one = labels(project_id="proj_k")
    assert found["latitudesh_billing_products_folded"] == {one: 3.0}
    assert found["latitudesh_billing_servers_folded"] == {one: 1.0}
    assert found["latitudesh_billing_tags_folded"] == {one: 6.0}
    assert found["latitudesh_billing_discounts_unknown_type"] == {one: 4.0}


def test_the_product_figures() -> None:
    found = figures(KNOWN)
    web, obj, lic = (labels(**PM, **row) for row in (WEB, OBJ, LIC))
    assert found["latitudesh_billing_product_price"] == {web: 34.56, obj: 11.0, lic: 0.07}
    assert found["latitudesh_billing_product_amount"] == {web: 35.0}
    assert found["latitudesh_billing_product_price_without_discount"] == {web: 36.0}
    assert found["latitudesh_billing_product_unit_price"] == {web: 0.12, obj: 0.2}
    assert found["latitudesh_billing_product_unit_amount"] == {web: 0.13}
    quantity = {labels(**P, **WEB): 288.0, labels(**P, **OBJ): 55.0}
    assert found["latitudesh_billing_product_quantity"] == quantity


def test_the_discount_figures() -> None:
    found = figures(KNOWN)
    ratio = labels(**P, product_id="si_web", description="monthly")
    assert found["latitudesh_billing_product_discount_ratio"] == {ratio: 0.04}
    amount = labels(**PM, product_id="si_web", description="credit")
    assert found["latitudesh_billing_product_discount_amount"] == {amount: 1.44}


def test_the_bucket_divisor_and_product_server_figures() -> None:
    found = figures(KNOWN)
    bucket = labels(**P, product_id="si_obj", bucket_id="bkt", bucket_name="lake", location="SAO")
    assert found["latitudesh_billing_product_bucket_info"] == {bucket: 1.0}
    divisor = labels(**P, product_id="si_obj")
    assert found["latitudesh_billing_product_unit_divisor"] == {divisor: 1000.0}
    assert found["latitudesh_billing_product_server_info"] == {
        labels(**P, product_id="si_web", server_id=s, hostname=f"host-{s}", plan="c2"): 1.0
        for s in ("sv_a", "sv_b", "sv_c")
    }


def test_the_server_and_tag_figures() -> None:
    found = figures(KNOWN)
    assert found["latitudesh_billing_server_price"] == {
        labels(**PM, server_id=s, hostname=f"host-{s}", plan="c2"): 11.52
        for s in ("sv_a", "sv_b", "sv_c")
    }
    assert found["latitudesh_billing_server_tag_info"] == {
        labels(**P, server_id="sv_a", hostname="host-sv_a", tag="Web"): 1.0,
        labels(**P, server_id="sv_a", hostname="host-sv_a", tag="prod"): 1.0,
        labels(**P, server_id="sv_b", hostname="host-sv_b", tag="Web"): 1.0,
    }
    assert found["latitudesh_billing_tag_price"] == {
        labels(**PM, tag="Web"): 23.04,
        labels(**PM, tag="prod"): 11.52,
        labels(**PM, tag=UNTAGGED): 11.52,
        labels(**PM, tag=UNATTRIBUTED): 11.07,
    }


def test_the_status_figures_of_a_polled_project() -> None:
    found = figures(KNOWN)
    one = labels(project_id="proj_k")
    assert found["latitudesh_up"] == {one: 1.0}
    assert found["latitudesh_last_success_timestamp_seconds"] == {one: 1_795_000_000.0}
    assert found["latitudesh_poll_duration_seconds"] == {one: 0.25}
    errors = found["latitudesh_poll_errors_total"]
    assert len(errors) == 11 and set(errors.values()) == {0.0}


def test_a_figure_the_answer_lacks_is_absent_and_zero_is_kept() -> None:
    found = figures(answer(line("si_1", 0, quantity=0), price=0, threshold=0))
    assert set(found["latitudesh_billing_price"].values()) == {0.0}
    assert set(found["latitudesh_billing_threshold"].values()) == {0.0}
    assert set(found["latitudesh_billing_product_price"].values()) == {0.0}
    assert set(found["latitudesh_billing_product_quantity"].values()) == {0.0}
    for absent in (
        "latitudesh_billing_amount",
        "latitudesh_billing_available_credit_balance",
        "latitudesh_billing_period_start_timestamp_seconds",
        "latitudesh_billing_period_end_timestamp_seconds",
        "latitudesh_billing_product_unit_price",
    ):
        assert absent not in found, absent
