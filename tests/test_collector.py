"""The collectors: exact exposition (golden files), escaping, promtool, no stale series."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.collector import ALL_METRICS, BillingCollector, ExporterCollector
from exporter.models import BillingUsageDocument
from exporter.snapshot import SnapshotStore, build_usage
from tests.conftest import load_fixture, parse_samples, require_binary, sample

GOLDEN = Path(__file__).parent / "golden"

TRICKY = {"data": {"attributes": {
    "project": {"id": "proj_tricky", "slug": 'quote"slash\\', "name": "Café Ωmega\nline two"},
    "price": 150, "products": [
        {"id": "si_x", "name": 'GPU "big" \\ box\nv2', "resource": "bare_metal", "unit": "hour",
         "usage_type": "metered", "price": 150, "quantity": 1.5,
         "metadata": {"id": "sv_1", "hostname": "hôte-01", "plan": "plan\\with\\slashes"}},
    ],
}}}


def store_with(*payloads: tuple[str, dict[str, object], str]) -> SnapshotStore:
    store = SnapshotStore()
    store.set_projects(pid for pid, _, _ in payloads)
    for pid, payload, currency in payloads:
        attributes = BillingUsageDocument.model_validate(payload).usage_for(pid)
        assert attributes is not None
        store.record_success(build_usage(pid, attributes, currency=currency, max_products=1000),
                             duration=0.25, now=1_795_000_000.0)
    return store


def render_billing(store: SnapshotStore) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BillingCollector(store.view))
    return generate_latest(registry).decode()


def render_all(store: SnapshotStore) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BillingCollector(store.view))
    registry.register(ExporterCollector(store.view))
    return generate_latest(registry).decode()


def golden_store() -> SnapshotStore:
    return store_with(
        ("proj_r0MK4O4kDa95w", load_fixture("billing_usage_new.json"), "USD"),
        ("proj_old", load_fixture("billing_usage_old.json"), "BRL"),
        ("proj_tricky", TRICKY, "EUR"),
    )


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"exposition differs from {path}; UPDATE_GOLDEN=1 rewrites"


def test_billing_exposition_matches_the_golden_file() -> None:
    check_golden("billing.prom", render_billing(golden_store()))


def test_golden_files_pass_promtool_check_metrics() -> None:
    promtool = require_binary("promtool")
    for path in sorted(GOLDEN.glob("*.prom")):
        result = subprocess.run([promtool, "check", "metrics"], input=path.read_bytes(),
                                capture_output=True, check=False)
        assert result.returncode == 0, (path, result.stdout, result.stderr)


def test_whole_exposition_passes_promtool() -> None:
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "metrics"],
                            input=render_all(golden_store()).encode(), capture_output=True,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_label_values_are_escaped_and_parse_back_exactly() -> None:
    text = render_billing(golden_store())
    assert r'project_slug="quote\"slash\\"' in text
    assert r'product_name="GPU \"big\" \\ box\nv2"' in text
    assert 'project_name="Café Ωmega\\nline two"' in text
    samples = parse_samples(text)
    assert sample(samples, "latitudesh_billing_product_quantity", project_id="proj_tricky",
                  product_name='GPU "big" \\ box\nv2', hostname="hôte-01",
                  plan="plan\\with\\slashes") == 1.5
    assert sample(samples, "latitudesh_project_info", project_slug='quote"slash\\',
                  project_name="Café Ωmega\nline two", currency="EUR") == 1.0


def test_exact_values_and_labels() -> None:
    samples = parse_samples(render_all(golden_store()))
    p = {"project_id": "proj_r0MK4O4kDa95w", "project_slug": "fantastic-iron-clock"}
    assert sample(samples, "latitudesh_billing_price", **p, currency="USD") == 512.30
    assert sample(samples, "latitudesh_billing_threshold", **p) == 1000.0
    assert sample(samples, "latitudesh_billing_threshold", project_id="proj_old") is None
    assert sample(samples, "latitudesh_billing_amount", project_id="proj_old") is None
    assert sample(samples, "latitudesh_billing_available_credit_balance",
                  project_id="proj_old", currency="BRL") == -5.0
    assert sample(samples, "latitudesh_billing_product_price", **p, product_id="si_aslft06m",
                  product_name="c2.small.x86", resource="bare_metal", unit="hour",
                  usage_type="metered", plan="c2-small-x86", hostname="", currency="USD") == 456.0
    assert sample(samples, "latitudesh_billing_product_discount_ratio", **p,
                  product_id="si_aslft06m",
                  description="Monthly Discount - Accelerate") == 0.05
    assert sample(samples, "latitudesh_billing_product_discount_amount", **p,
                  product_id="si_on0fybnq", currency="USD") == 2.5
    servers = {ls for (n, ls) in samples if n == "latitudesh_billing_product_server_info"
               and ("project_id", "proj_r0MK4O4kDa95w") in ls}
    assert {dict(ls)["hostname"] for ls in servers} == {"web-01", "web-02"}
    assert sample(samples, "latitudesh_up", project_id="proj_old") == 1.0
    assert sample(samples, "latitudesh_last_success_timestamp_seconds",
                  project_id="proj_old") == 1_795_000_000.0
    assert sample(samples, "latitudesh_poll_duration_seconds", project_id="proj_old") == 0.25
    assert sample(samples, "latitudesh_poll_errors_total", project_id="proj_old",
                  reason="timeout") == 0.0
    assert sample(samples, "latitudesh_api_requests_total", endpoint="/billing/usage",
                  code="200") == 0.0


def test_a_vanished_product_vanishes_from_the_exposition() -> None:
    payload = load_fixture("billing_usage_new.json")
    store = store_with(("proj_r0MK4O4kDa95w", payload, "USD"))
    assert 'product_id="si_on0fybnq"' in render_billing(store)
    del payload["data"]["attributes"]["products"][1]
    attributes = BillingUsageDocument.model_validate(payload).usage_for("proj_r0MK4O4kDa95w")
    assert attributes is not None
    store.record_success(build_usage("proj_r0MK4O4kDa95w", attributes, currency="USD",
                                     max_products=1000), duration=0.1, now=2.0)
    text = render_billing(store)
    assert 'product_id="si_on0fybnq"' not in text
    assert "bkt_1" not in text and 'product_id="si_aslft06m"' in text


def test_failed_poll_keeps_last_values_and_sets_up_to_zero() -> None:
    store = golden_store()
    store.record_failure("proj_old", "server_error", duration=3.0)
    samples = parse_samples(render_all(store))
    assert sample(samples, "latitudesh_up", project_id="proj_old") == 0.0
    assert sample(samples, "latitudesh_billing_price", project_id="proj_old") == 120.505
    assert sample(samples, "latitudesh_poll_errors_total", project_id="proj_old",
                  reason="server_error") == 1.0
    assert sample(samples, "latitudesh_up", project_id="proj_tricky") == 1.0


def test_a_project_never_polled_successfully_has_no_billing_series() -> None:
    store = SnapshotStore()
    store.set_projects(["proj_new"])
    store.record_failure("proj_new", "not_found", duration=0.1)
    samples = parse_samples(render_all(store))
    assert sample(samples, "latitudesh_up", project_id="proj_new") == 0.0
    assert not any(n.startswith("latitudesh_billing") for n, _ in samples)


def test_no_created_series_and_every_family_is_in_the_spec_table() -> None:
    text = render_all(golden_store())
    assert "_created" not in text
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    names = {spec.name for spec in ALL_METRICS}
    assert families == names


@pytest.mark.parametrize("name", [spec.name for spec in ALL_METRICS])
def test_metric_names_follow_prometheus_conventions(name: str) -> None:
    assert name.startswith("latitudesh_")
    assert name == name.lower()
    spec = next(s for s in ALL_METRICS if s.name == name)
    assert (spec.type == "counter") == name.endswith("_total")
    assert spec.help.strip() and "\n" not in spec.help
