"""Snapshots: cents to main units, labels from both metadata shapes, merging, folding,
cost allocation, and the store (teams, projects, counters, listeners)."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.snapshot import OTHER, UNATTRIBUTED, UNTAGGED, ProjectStatus, UsageSnapshot, label
from exporter.store import SnapshotStore
from tests.conftest import default_limits, load_fixture, usage_of


def new_usage(**kwargs: Any) -> UsageSnapshot:
    return usage_of(load_fixture("billing_usage_new.json"), "proj_r0MK4O4kDa95w", **kwargs)


def answer(*products: dict[str, Any], **attributes: Any) -> dict[str, Any]:
    return {"data": {"attributes": {"products": list(products), **attributes}}}


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
    assert (usage.project_slug, usage.project_name) == (
        "fantastic-iron-clock",
        "Fantastic Iron Clock",
    )
    assert usage.period_start == 1_793_491_200.0  # 2026-11-01T00:00:00Z
    assert usage.period_end == 1_796_083_200.0


def test_several_servers_share_their_plan_and_leave_hostname_empty() -> None:
    metal = new_usage().products[0]
    assert (metal.plan, metal.hostname) == ("c2-small-x86", "")
    assert [s.hostname for s in metal.servers] == ["web-01", "db-01"]


def test_old_metadata_gives_plan_and_hostname() -> None:
    usage = usage_of(load_fixture("billing_usage_old.json"), "proj_old", currency="BRL")
    gpu, licence = usage.products
    assert (gpu.plan, gpu.hostname) == ("g3-h100-large", "trainer-01")
    assert (licence.plan, licence.hostname, licence.servers) == ("", "", ())
    assert usage.threshold is None
    assert usage.amount is None
    assert usage.available_credit_balance == -5.0


def test_discounts_percent_as_ratio_and_amount_in_main_units() -> None:
    percent, amount = new_usage().discounts
    assert (percent.product_id, percent.ratio, percent.amount) == ("si_aslft06m", 0.05, None)
    assert (amount.product_id, amount.ratio, amount.amount) == ("si_on0fybnq", None, 2.5)


@pytest.mark.parametrize(
    "discount",
    [
        {"description": "d", "type": "fixed", "value": 500},
        {"description": "d", "value": 500},
        {"description": "d", "type": "credit", "value": 500},
        {"description": "d", "type": None, "value": 500},
    ],
    ids=["fixed", "missing", "new-value", "null"],
)
def test_a_discount_of_an_unknown_type_is_counted_never_read_as_money(
    discount: dict[str, Any],
) -> None:
    """The spec's `type` is a closed enum (percent, amount): before, anything else was
    taken as a fixed amount and exported as money."""
    known = {"description": "k", "type": "amount", "value": 100}
    line = {"id": "si_1", "name": "a", "price": 1000, "discounts": [discount, known]}
    usage = usage_of(answer(line, price=1000), "p")
    assert [(d.description, d.amount) for d in usage.discounts] == [("k", 1.0)]
    assert usage.discounts_unknown == 1


def test_the_units_the_spec_states_and_those_it_does_not() -> None:
    """The spec says "in cents" of price, amount, credit, threshold, unit_price and
    unit_amount; of `amount_without_discount` and an `amount` discount's `value` it
    says nothing: they are read as cents too (an assumption the README states)."""
    from tests.spec import copy as spec_copy

    schema = spec_copy()["billing_usage"]["newest"]["properties"]["data"]["properties"]
    attributes = schema["attributes"]["properties"]
    product = attributes["products"]["items"]["properties"]

    def says_cents(field: dict[str, Any]) -> bool:
        return "in cents" in str(field.get("description", ""))

    stated = [attributes[f] for f in ("price", "amount", "available_credit_balance", "threshold")]
    stated += [product[f] for f in ("price", "amount", "unit_price", "unit_amount")]
    assert all(says_cents(field) for field in stated)
    unstated = [product["amount_without_discount"], product["discounts"]["items"]]
    assert not any(says_cents(field) for field in unstated)
    line = {
        "id": "si_1",
        "name": "a",
        "price": 900,
        "amount_without_discount": 1000,
        "unit_amount": 25,
        "discounts": [{"description": "d", "type": "amount", "value": 100}],
    }
    (product_usage,) = usage_of(answer(line, price=900), "p").products
    assert product_usage.price_without_discount == 10.0  # the assumption: cents
    assert product_usage.unit_amount == 0.25
    (discount,) = usage_of(answer(line, price=900), "p").discounts
    assert discount.amount == 1.0  # the assumption: cents


def test_an_inverted_period_is_dropped() -> None:
    payload = answer(period={"start": "2026-12-01T00:00:00Z", "end": "2026-11-01T00:00:00Z"})
    usage = usage_of(payload, "p")
    assert (usage.period_start, usage.period_end) == (None, None)


@pytest.mark.parametrize("period", [None, {}, {"start": "2026-11-01T00:00:00Z"}, "garbage"])
def test_a_missing_period_drops_only_the_period_metrics(period: object) -> None:
    usage = usage_of(answer(price=100, period=period), "p")
    assert usage.price == 1.0
    assert usage.period_end is None
    if isinstance(period, dict) and period:
        assert usage.period_start == 1_793_491_200.0


def test_products_beyond_the_limit_fold_into_other() -> None:
    products = [
        {
            "id": f"si_{i}",
            "name": f"p{i}",
            "unit": "hour",
            "price": i * 100,
            "amount": i * 100,
            "quantity": i,
            "discounts": [{"description": "d", "type": "percent", "value": 5}],
        }
        for i in range(1, 21)
    ]
    usage = usage_of(answer(*products), "p", limits=default_limits(products=5))
    assert len(usage.products) == 6
    assert usage.products_folded == 15
    kept = [p.product_id for p in usage.products[:5]]
    assert kept == ["si_20", "si_19", "si_18", "si_17", "si_16"]  # the costliest stay
    other = usage.products[5]
    assert other.product_id == OTHER
    assert other.price == sum(range(1, 16))
    assert other.quantity is None
    # rows of folded products would name ids that no product series carries
    assert {d.product_id for d in usage.discounts} == set(kept)


def test_duplicate_product_lines_are_added_up() -> None:
    line = {
        "id": "si_1",
        "name": "x",
        "unit": "hour",
        "price": 100,
        "quantity": 2,
        "discounts": [
            {"description": "d", "type": "amount", "value": 50},
            {"description": "p", "type": "percent", "value": 5},
        ],
    }
    usage = usage_of(answer(line, line), "p")
    (product,) = usage.products
    assert (product.price, product.quantity) == (2.0, 4)
    amount, percent = usage.discounts
    assert (amount.description, amount.amount) == ("d", 1.0)  # amounts add up
    assert (percent.description, percent.ratio) == ("p", 0.05)  # a percent does not


def test_label_values_are_bounded_and_shared() -> None:
    long = "h" * 10_000
    assert label(long) == "h" * 512
    assert label("c2-" + "small") is label("c2-small")
    assert label(None) == ""


# --- cost allocation ---------------------------------------------------------------

SHARED_LINE = {
    "id": "si_web",
    "name": "web",
    "price": 900,
    "metadata": {
        "servers": [
            {"id": "sv_1", "hostname": "a", "plan": "c2", "tags": ["web", "prod"]},
            {"id": "sv_2", "hostname": "b", "plan": "c2", "tags": ["db"]},
            {"id": "sv_3", "hostname": "c", "plan": "c2", "tags": []},
        ]
    },
}


def test_a_line_is_split_evenly_over_its_servers_and_summed_per_server() -> None:
    second = {
        "id": "si_ip",
        "name": "ip",
        "price": 100,
        "metadata": {"servers": [{"id": "sv_1", "hostname": "a", "plan": "c2", "tags": ["web"]}]},
    }
    storage = {
        "id": "si_obj",
        "name": "obj",
        "price": 50,
        "metadata": {"servers": [], "bucket": {"id": "b1", "name": "lake", "location": "SAO"}},
    }
    usage = usage_of(answer(SHARED_LINE, second, storage), "p")
    prices = {s.server_id: s.price for s in usage.servers}
    assert prices == {"sv_1": 4.0, "sv_2": 3.0, "sv_3": 3.0}
    tags = {t.tag: t.price for t in usage.tags}
    assert tags == {"web": 4.0, "prod": 4.0, "db": 3.0, UNTAGGED: 3.0, UNATTRIBUTED: 0.5}
    assert sum(prices.values()) + tags[UNATTRIBUTED] == pytest.approx(10.5)
    assert {(t.server_id, t.tag) for t in usage.server_tags} == {
        ("sv_1", "web"),
        ("sv_1", "prod"),
        ("sv_2", "db"),
    }
    (bucket,) = usage.buckets
    assert (bucket.product_id, bucket.bucket_id, bucket.name, bucket.location) == (
        "si_obj",
        "b1",
        "lake",
        "SAO",
    )


def test_old_shape_tags_are_the_one_servers_tags() -> None:
    old = {
        "id": "si_1",
        "price": 200,
        "metadata": {"id": "sv_9", "hostname": "h", "plan": "p", "tags": ["ml"]},
    }
    usage = usage_of(answer(old), "p")
    (server,) = usage.servers
    assert (server.server_id, server.price, server.tags) == ("sv_9", 2.0, ("ml",))


def test_a_server_without_id_or_hostname_cannot_be_named_and_is_unattributed() -> None:
    line = {
        "id": "si_1",
        "price": 400,
        "metadata": {"servers": [{"id": "sv_1", "hostname": "a"}, {"plan": "mystery"}]},
    }
    usage = usage_of(answer(line), "p")
    assert [(s.server_id, s.price) for s in usage.servers] == [("sv_1", 2.0)]
    assert {t.tag: t.price for t in usage.tags}[UNATTRIBUTED] == 2.0


def test_servers_and_tags_beyond_the_limits_fold_and_are_counted() -> None:
    servers = [{"id": f"sv_{i}", "hostname": f"h{i}", "tags": [f"t{i}", "all"]} for i in range(10)]
    lines = [
        {"id": f"si_{i}", "price": (i + 1) * 100, "metadata": {"servers": [servers[i]]}}
        for i in range(10)
    ]
    many_tags = {
        "id": "si_tags",
        "price": 5000,
        "metadata": {
            "servers": [
                {"id": "sv_tagged", "hostname": "x", "tags": [f"tag{i}" for i in range(30)]}
            ]
        },
    }
    usage = usage_of(
        answer(*lines, many_tags), "p", limits=default_limits(servers=4, tags_per_server=3)
    )
    assert usage.servers_folded == 7
    assert [s.server_id for s in usage.servers] == ["sv_tagged", "sv_9", "sv_8", "sv_7", OTHER]
    assert usage.servers[-1].price == sum(range(1, 8))  # the seven cheapest, summed
    assert usage.servers[0].tags == ("tag0", "tag1", "tag2", OTHER)
    assert usage.tags_folded == 27
    tags = {t.tag: t.price for t in usage.tags}
    assert tags[OTHER] == 50 + sum(range(1, 8))
    assert sum(s.price for s in usage.servers) + tags[UNATTRIBUTED] == pytest.approx(
        sum(float(str(line["price"])) for line in [*lines, many_tags]) / 100
    )


def test_unit_divisor_is_kept_once_per_product() -> None:
    calls = {
        "id": "si_calls",
        "unit": "quantity",
        "quantity": 40_000,
        "unit_price": 1,
        "price": 40,
        "metadata": {"servers": [], "billing_unit_divisor": 1000},
    }
    usage = usage_of(answer(calls, dict(calls, name="again")), "p")
    (divisor,) = usage.divisors
    assert (divisor.product_id, divisor.divisor) == ("si_calls", 1000.0)


# --- the store ---------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.changed: list[ProjectStatus] = []
        self.orders: list[list[str]] = []

    def project_changed(self, status: ProjectStatus) -> None:
        self.changed.append(status)

    def projects_changed(self, projects: Any) -> None:
        self.orders.append([p.project_id for p in projects])


def test_store_keeps_last_good_usage_through_a_failure() -> None:
    store = SnapshotStore()
    store.add_team("t")
    store.set_projects("t", [("proj_r0MK4O4kDa95w", "")])
    store.record_success("t", new_usage(), duration=0.5, now=1000.0)
    store.record_failure("t", "proj_r0MK4O4kDa95w", "timeout", duration=15.0)
    (status,) = store.view().projects
    assert status.usage is not None and status.usage.price == 512.30
    assert (status.up, status.last_success, status.last_error) == (False, 1000.0, "timeout")
    assert dict(zip(("timeout",), status.errors[5:6], strict=True)) == {"timeout": 1}


def test_store_forgets_projects_that_are_gone_and_tells_its_listeners() -> None:
    recorder = Recorder()
    store = SnapshotStore()
    store.subscribe(recorder)
    store.add_team("t")
    store.set_projects("t", [("a", ""), ("b", "")])
    store.record_failure("t", "a", "network", duration=1)
    store.set_projects("t", [("b", ""), ("c", "")])
    assert [p.project_id for p in store.view().projects] == ["b", "c"]
    assert recorder.orders[-1] == ["b", "c"]
    assert [s.project_id for s in recorder.changed] == ["a"]


def test_a_project_belongs_to_one_team_only() -> None:
    store = SnapshotStore()
    store.add_team("one")
    store.add_team("two")
    assert store.set_projects("one", [("p", "")]).taken == ["p"]
    assert store.set_projects("two", [("p", ""), ("q", "")]).taken == ["q"]
    assert {p.project_id: p.team for p in store.view().projects} == {"p": "one", "q": "two"}


def test_renaming_a_team_keeps_its_figures_and_projects() -> None:
    store = SnapshotStore()
    store.add_team("default")
    store.set_projects("default", [("p", "")])
    store.record_request("default", "/projects", "200")
    store.rename_team("default", "acme")
    (team,) = store.view().teams
    assert team.name == "acme"
    assert dict(team.api_requests)[("/projects", "200")] == 1
    assert store.view().projects[0].team == "acme"


def test_ready_once_every_team_attempted_a_refresh_even_a_failed_one() -> None:
    store = SnapshotStore()
    assert not store.view().ready  # no team yet
    store.add_team("a")
    store.add_team("b")
    store.record_refresh("a", duration=None, effective_interval=300)
    assert not store.view().ready  # started is not attempted
    store.record_refresh("a", duration=1.0, effective_interval=300)
    assert not store.view().ready
    store.record_discovery_failure("b", "unauthorized")
    store.record_refresh("b", duration=0.1, effective_interval=300)
    assert store.view().ready  # no project known, but the first refresh was attempted


def test_views_are_immutable_snapshots() -> None:
    store = SnapshotStore()
    store.add_team("t")
    store.set_projects("t", [("a", "")])
    before = store.view()
    store.record_failure("t", "a", "timeout", duration=1)
    assert before.projects[0].errors == (0,) * len(before.projects[0].errors)
    assert store.view().projects[0].errors != before.projects[0].errors
    with pytest.raises(AttributeError):
        before.projects[0].up = True  # type: ignore[misc]
