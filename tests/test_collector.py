"""The metric table and its Collectors: exact exposition (golden file), escaping, promtool,
no stale series, and what a failed or never-successful poll shows."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

from exporter.collector import ALL_METRICS, BUDGET_FAMILIES, PROJECT_FAMILIES, TEAM_FAMILIES
from exporter.store import SnapshotStore
from tests.conftest import (
    GOLDEN,
    NEW,
    default_limits,
    exposition_of,
    golden_store,
    load_fixture,
    parse_samples,
    reference_exposition,
    require_binary,
    sample,
    store_with,
    usage_of,
    versionless,
)


def render(store: SnapshotStore) -> str:
    return reference_exposition(store).decode()


def check_golden(name: str, text: str) -> None:
    text = versionless(text)
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"exposition differs from {path}; UPDATE_GOLDEN=1 rewrites"


def test_exposition_matches_the_golden_file() -> None:
    check_golden("billing.prom", render(golden_store()))


def test_golden_files_pass_promtool_check_metrics() -> None:
    promtool = require_binary("promtool")
    for path in sorted(GOLDEN.glob("*.prom")):
        result = subprocess.run(
            [promtool, "check", "metrics"],
            input=path.read_bytes(),
            capture_output=True,
            check=False,
        )
        assert result.returncode == 0, (path, result.stdout, result.stderr)


def test_label_values_are_escaped_and_parse_back_exactly() -> None:
    text = render(golden_store())
    assert r'project_slug="quote\"slash\\"' in text
    assert r'product_name="GPU \"big\" \\ box"' in text
    assert 'project_name="Café Ωmega\ufffdline two"' in text  # the newline was replaced
    assert r'tag="a \"tag\""' in text
    samples = parse_samples(text)
    assert (
        sample(
            samples,
            "latitudesh_billing_product_quantity",
            project_id="proj_tricky",
            product_name='GPU "big" \\ box',
            hostname="hôte-01",
            plan="plan\\with\\slashes",
        )
        == 1.5
    )
    assert (
        sample(
            samples,
            "latitudesh_project_info",
            project_slug='quote"slash\\',
            currency="EUR",
            team="default",
        )
        == 1.0
    )


def test_exact_values_and_labels() -> None:
    samples = parse_samples(render(golden_store()))
    p = {"project_id": NEW, "project_slug": "fantastic-iron-clock"}
    assert sample(samples, "latitudesh_billing_price", **p, currency="USD") == 512.30
    assert sample(samples, "latitudesh_billing_threshold", **p) == 1000.0
    assert sample(samples, "latitudesh_billing_threshold", project_id="proj_old") is None
    assert sample(samples, "latitudesh_billing_amount", project_id="proj_old") is None
    assert (
        sample(
            samples,
            "latitudesh_billing_available_credit_balance",
            project_id="proj_old",
            currency="BRL",
        )
        == -5.0
    )
    assert (
        sample(
            samples,
            "latitudesh_billing_product_price",
            **p,
            product_id="si_aslft06m",
            product_name="c2.small.x86",
            resource="bare_metal",
            unit="hour",
            usage_type="metered",
            plan="c2-small-x86",
            hostname="",
            currency="USD",
        )
        == 456.0
    )
    assert (
        sample(
            samples,
            "latitudesh_billing_product_discount_ratio",
            **p,
            product_id="si_aslft06m",
            description="Monthly Discount - Accelerate",
        )
        == 0.05
    )
    assert (
        sample(
            samples,
            "latitudesh_billing_product_discount_amount",
            **p,
            product_id="si_on0fybnq",
            currency="USD",
        )
        == 2.5
    )
    servers = {
        ls
        for (n, ls) in samples
        if n == "latitudesh_billing_product_server_info" and ("product_id", "si_aslft06m") in ls
    }
    assert {dict(ls)["hostname"] for ls in servers} == {"web-01", "db-01"}
    assert sample(samples, "latitudesh_up", project_id="proj_old") == 1.0
    assert (
        sample(samples, "latitudesh_last_success_timestamp_seconds", project_id="proj_old")
        == 1_795_000_000.0
    )
    assert sample(samples, "latitudesh_poll_duration_seconds", project_id="proj_old") == 0.25
    assert (
        sample(samples, "latitudesh_poll_errors_total", project_id="proj_old", reason="timeout")
        == 0.0
    )
    assert (
        sample(
            samples,
            "latitudesh_api_requests_total",
            team="default",
            endpoint="/billing/usage",
            code="200",
        )
        == 0.0
    )


def test_cost_allocation_series_cover_both_metadata_shapes() -> None:
    samples = parse_samples(render(golden_store()))
    p = {"project_id": NEW, "currency": "USD"}
    # si_aslft06m (456) over web-01 and db-01, si_eip01 (10) over web-01 and worker-01
    assert (
        sample(
            samples,
            "latitudesh_billing_server_price",
            **p,
            server_id="sv_1",
            hostname="web-01",
            plan="c2-small-x86",
        )
        == 233.0
    )
    assert sample(samples, "latitudesh_billing_server_price", **p, server_id="sv_2") == 228.0
    assert sample(samples, "latitudesh_billing_server_price", **p, server_id="sv_3") == 5.0
    assert sample(samples, "latitudesh_billing_tag_price", **p, tag="web") == 233.0
    assert sample(samples, "latitudesh_billing_tag_price", **p, tag="db") == 228.0
    assert sample(samples, "latitudesh_billing_tag_price", **p, tag="__untagged__") == 5.0
    assert (
        sample(samples, "latitudesh_billing_tag_price", **p, tag="__unattributed__") == 60.3
    )  # storage 56.30 + API calls 4.00
    assert (
        sample(
            samples,
            "latitudesh_billing_server_tag_info",
            project_id=NEW,
            server_id="sv_1",
            hostname="web-01",
            tag="prod",
        )
        == 1.0
    )
    assert (
        sample(
            samples,
            "latitudesh_billing_product_bucket_info",
            project_id=NEW,
            product_id="si_calls",
            bucket_id="bkt_2",
            bucket_name="assets",
            location="NYC",
        )
        == 1.0
    )
    assert (
        sample(
            samples,
            "latitudesh_billing_product_unit_divisor",
            project_id=NEW,
            product_id="si_calls",
        )
        == 1000.0
    )
    # the old shape: the one server behind a line, with its tags
    assert (
        sample(
            samples,
            "latitudesh_billing_server_price",
            project_id="proj_old",
            server_id="sv_gpu",
            currency="BRL",
        )
        == 120.0
    )
    assert sample(samples, "latitudesh_billing_tag_price", project_id="proj_old", tag="ml") == 120.0


def test_divided_units_price_as_quantity_over_divisor_times_unit_price() -> None:
    samples = parse_samples(render(golden_store()))
    labels = {"project_id": NEW, "product_id": "si_calls"}
    quantity = sample(samples, "latitudesh_billing_product_quantity", **labels)
    unit_price = sample(samples, "latitudesh_billing_product_unit_price", **labels)
    divisor = sample(samples, "latitudesh_billing_product_unit_divisor", **labels)
    price = sample(samples, "latitudesh_billing_product_price", **labels)
    assert quantity and unit_price and divisor and price
    assert quantity / divisor * unit_price == pytest.approx(price)


def test_a_vanished_product_vanishes_from_the_exposition() -> None:
    payload = load_fixture("billing_usage_new.json")
    store = store_with((NEW, payload, "USD"))
    assert 'product_id="si_on0fybnq"' in render(store)
    del payload["data"]["attributes"]["products"][1]
    store.record_success("default", usage_of(payload, NEW), duration=0.1, now=2.0)
    text = render(store)
    assert 'product_id="si_on0fybnq"' not in text
    assert "bkt_1" not in text and 'product_id="si_aslft06m"' in text


def test_failed_poll_keeps_last_values_and_sets_up_to_zero() -> None:
    store = golden_store()
    store.record_failure("default", "proj_old", "server_error", duration=3.0)
    samples = parse_samples(render(store))
    assert sample(samples, "latitudesh_up", project_id="proj_old") == 0.0
    assert sample(samples, "latitudesh_billing_price", project_id="proj_old") == 120.505
    assert (
        sample(
            samples, "latitudesh_poll_errors_total", project_id="proj_old", reason="server_error"
        )
        == 1.0
    )
    assert sample(samples, "latitudesh_up", project_id="proj_tricky") == 1.0


def test_a_project_never_polled_successfully_has_no_billing_series() -> None:
    store = SnapshotStore()
    store.add_team("t")
    store.set_projects("t", [("proj_new", "")])
    store.record_failure("t", "proj_new", "not_found", duration=0.1)
    samples = parse_samples(render(store))
    assert sample(samples, "latitudesh_up", project_id="proj_new") == 0.0
    assert not any(n.startswith("latitudesh_billing") for n, _ in samples)


def test_no_created_series_and_every_family_is_in_the_table() -> None:
    text = render(golden_store())
    assert "_created" not in text
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert families == {spec.name for spec in ALL_METRICS}


@pytest.mark.parametrize(
    "spec", [*PROJECT_FAMILIES, *TEAM_FAMILIES, *BUDGET_FAMILIES], ids=lambda s: s.name
)
def test_metric_names_follow_prometheus_conventions(spec: Any) -> None:
    name = spec.name
    assert name.startswith("latitudesh_")
    assert name == name.lower()
    assert (spec.type == "counter") == name.endswith("_total")
    assert spec.help.strip() and "\n" not in spec.help
    assert len(set(spec.labels)) == len(spec.labels)


def series(text: str) -> list[tuple[str, frozenset[tuple[str, str]]]]:
    """Every sample's identity, duplicates kept (a dict would merge them silently)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (s.name, frozenset(s.labels.items()))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def test_values_from_the_api_never_collide_with_the_exporters_markers() -> None:
    """A real product, server or tag named like a marker: before, duplicate series with
    different values (Prometheus keeps one, silently) and real tags swallowed into the
    untagged bucket."""
    line = {
        "resource": "bare_metal",
        "unit": "hour",
        "usage_type": "metered",
        "quantity": 1,
    }
    answer: dict[str, Any] = {
        "data": {
            "attributes": {
                "price": 600,
                "products": [
                    {
                        **line,
                        "id": "__other__",
                        "name": "a",
                        "price": 100,
                        "metadata": {"servers": [{"id": "__other__", "tags": ["__untagged__"]}]},
                    },
                    {
                        **line,
                        "id": "si_b",
                        "name": "b",
                        "price": 200,
                        "metadata": {"servers": [{"id": "sv_2", "tags": []}]},
                    },
                    {**line, "id": "si_c", "name": "c", "price": 300},
                ],
            }
        }
    }
    answer["data"]["attributes"]["products"][0]["price"] = 250  # the biggest server
    folded = store_with(("proj_markers", answer, "USD"), limits=default_limits(servers=1))
    text = render(folded)
    found = series(text)
    assert len(found) == len(set(found)), "duplicate series"
    samples = parse_samples(text)
    server = "latitudesh_billing_server_price"
    assert sample(samples, server, server_id="___other__") == 2.5  # the API's own
    assert sample(samples, server, server_id="__other__") == 2.0  # folded by the cap
    tag = "latitudesh_billing_tag_price"
    assert sample(samples, tag, tag="___untagged__") == 2.5  # a real tag, kept apart
    assert sample(samples, tag, tag="__other__") == 2.0  # the folded server's
    assert sample(samples, tag, tag="__unattributed__") == 3.0  # lines without servers
    product = "latitudesh_billing_product_price"
    assert sample(samples, product, product_id="___other__") == 2.5
    store = folded
    ours = b"".join(exposition_of(store).render().chunks).decode()
    assert sorted(series(ours)) == sorted(found)  # the served exposition agrees
