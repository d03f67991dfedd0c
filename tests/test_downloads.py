"""Showback and FOCUS 1.2 files for finance (issue 33): every line of the kept answers,
rows that add up to each project's price, a closed period by its start, the FOCUS
rules, and the same protection as /metrics, over real sockets and real SQLite files."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from exporter.downloads import Downloads, File, Refusal, opencost, showback
from exporter.downloads import focus as focus_file
from exporter.downloads.text import decimal, timestamp
from exporter.simulation import DemoAccount
from exporter.state import NoState, StoredAnswer
from exporter.state.sqlite import SqliteState
from exporter.store import SnapshotStore
from testing import periods
from testing.fakeapi import FakeApi
from testing.periods import period_before
from testing.waits import wait_for
from tests.conftest import (
    DEMO_PROJECTS,
    ROOT,
    TOKEN,
    ExporterProcess,
    api_env,
    http_get,
    parse_samples,
    reference_exposition,
    sample,
)

NOV_1 = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
DEC_1 = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
JAN_1 = datetime(2027, 1, 1, tzinfo=UTC).timestamp()


def product(**fields: Any) -> dict[str, Any]:
    line = {
        "id": "si_bm",
        "resource": "bare_metal",
        "name": "c2.small",
        "description": "c2.small server",
        "unit": "hour",
        "usage_type": "metered",
        "quantity": 100,
        "unit_price": 50,
        "amount_without_discount": 5000,
        "price": 5000,
        "discounts": [],
        "start": "2026-11-01T00:00:00Z",
        "end": None,
        "metadata": {"servers": [{"id": "sv_1", "hostname": "web-1", "plan": "c2", "tags": []}]},
    }
    return line | fields


#: An answer with a line of each kind a file must show: one server, two servers (a
#: split), a bucket with a divided unit, a licensed line, a discount, none named.
LINES = [
    product(
        metadata={
            "servers": [{"id": "sv_1", "hostname": "web-1", "plan": "c2", "tags": ["web", "prod"]}]
        }
    ),
    product(
        id="si_pair",
        quantity=20,
        amount_without_discount=1000,
        price=900,
        discounts=[{"description": "Accelerate", "type": "percent", "value": 10}],
        metadata={
            "servers": [
                {"id": "sv_2", "hostname": "db-1", "plan": "m4", "tags": ["db"]},
                {"id": "sv_3", "hostname": "db-2", "plan": "m4", "tags": ["db"]},
            ]
        },
    ),
    product(
        id="si_calls",
        resource="object_storage",
        name="API calls",
        description="Storage API calls",
        unit="quantity",
        quantity=2_500_000,
        unit_price=1,
        amount_without_discount=2500,
        price=2500,
        metadata={
            "bucket": {"id": "bkt_1", "name": "lake", "location": "SAO"},
            "billing_unit_divisor": 1000,
            "servers": [],
        },
    ),
    product(
        id="si_lic",
        resource="license",
        name="Windows",
        description="Windows license",
        unit="quantity",
        usage_type="licensed",
        quantity=1,
        unit_price=2000,
        amount_without_discount=2000,
        price=2000,
        metadata={"servers": []},
    ),
]


def answer(
    start: str, end: str, *, price: int, lines: list[dict[str, Any]] = LINES, project: str = "p"
) -> bytes:
    return json.dumps(
        {
            "data": {
                "attributes": {
                    "project": {"id": project, "slug": "shop", "name": "Shop"},
                    "period": {"start": start, "end": end},
                    "price": price,
                    "products": lines,
                }
            }
        }
    ).encode()


#: The lines add up to 104.00; the project's price says 104.50 (an adjustment).
NOVEMBER = answer("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", price=10_450)
DECEMBER = answer("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z", price=10_400)
OTHER = answer("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z", price=10_400, project="q")


def kept(path: Path, *rows: tuple[str, str, bytes, float, float]) -> SqliteState:
    """(team, project, body, received at, period start) kept one after another, each
    written before the next (so a later period closes the one before); the state
    then opened again, as a new process would."""
    periods.keep(
        path,
        *(
            [StoredAnswer(team, pid, body, at, "USD", "shop", "Shop", period_start=start)]
            for team, pid, body, at, start in rows
        ),
    )
    state = SqliteState(path, on_status=lambda up, reason: None, max_body_bytes=1 << 24)
    state.load()
    state.start()
    return state


@pytest.fixture
def two_periods(tmp_path: Path) -> Iterator[SqliteState]:
    state = kept(
        tmp_path / "state.db",
        ("default", "p", NOVEMBER, DEC_1 - 60, NOV_1),
        ("default", "p", DECEMBER, DEC_1 + 3600, DEC_1),
        ("other", "q", OTHER, DEC_1 + 3600, DEC_1),
    )
    yield state
    state.close(10)


def download(downloads: Downloads, path: str, query: str = "") -> tuple[str, bytes]:
    served = downloads.serve(path, query)
    assert isinstance(served, File), served
    return served.filename, b"".join(served.chunks)


def table(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode())))


# --- the files, from a real SQLite file ---------------------------------------------


def test_showback_has_every_line_and_each_server_of_a_split(two_periods: SqliteState) -> None:
    name, body = download(Downloads(two_periods), "/showback.csv", "team=default")
    assert name == "latitudesh-showback_default_2026-12-01.csv"
    rows = table(body)
    assert list(rows[0]) == list(showback.COLUMNS)
    by = {(r["product_id"], r["server_id"] or r["bucket_id"]): r for r in rows}
    assert set(by) == {
        ("si_bm", "sv_1"),
        ("si_pair", "sv_2"),
        ("si_pair", "sv_3"),
        ("si_calls", "bkt_1"),
        ("si_lic", ""),
    }
    assert by["si_bm", "sv_1"]["tags"] == "web;prod"
    assert by["si_bm", "sv_1"]["hostname"] == "web-1" and by["si_bm", "sv_1"]["plan"] == "c2"
    pair = [by["si_pair", "sv_2"], by["si_pair", "sv_3"]]
    assert [(r["share"], r["price"], r["quantity"]) for r in pair] == [("0.5", "4.5", "10")] * 2
    assert pair[0]["price_without_discount"] == "5" and pair[0]["discounts"] == "Accelerate: 10 %"
    calls = by["si_calls", "bkt_1"]
    assert (calls["bucket_name"], calls["bucket_location"]) == ("lake", "SAO")
    assert (calls["billing_unit_divisor"], calls["unit_price"], calls["price"]) == (
        "1000",
        "0.01",
        "25",
    )
    assert {r["period_start"] for r in rows} == {"2026-12-01T00:00:00Z"}
    assert {r["observed_at"] for r in rows} == {timestamp(DEC_1 + 3600)}
    assert sum(Decimal(r["price"]) for r in rows) == Decimal("104")  # December adds up


def test_a_project_whose_lines_do_not_add_up_gets_one_adjustment_row(
    two_periods: SqliteState,
) -> None:
    _, body = download(Downloads(two_periods), "/showback.csv", "period=previous")
    rows = table(body)
    (adjustment,) = [r for r in rows if r["row_type"] == showback.ADJUSTMENT]
    assert adjustment["price"] == "0.5"
    assert sum(Decimal(r["price"]) for r in rows) == Decimal("104.5")  # November's price


def test_a_closed_period_by_previous_or_by_its_start_day(two_periods: SqliteState) -> None:
    downloads = Downloads(two_periods)
    name, previous = download(downloads, "/focus.csv", "period=previous")
    assert name == "latitudesh-focus-1.2_all-teams_2026-11-01.csv"
    named, by_day = download(downloads, "/focus.csv", "period=2026-11-01")
    assert named == "latitudesh-focus-1.2_all-teams_2026-11-01.csv"
    assert previous == by_day
    rows = table(previous)
    assert {r["BillingPeriodStart"] for r in rows} == {"2026-11-01T00:00:00Z"}
    assert {r["SubAccountId"] for r in rows} == {"p"}  # q has no closed period
    unknown = downloads.serve("/focus.csv", "period=2026-10-01")
    assert unknown == Refusal(404, "no closed period starts on 2026-10-01 (kept: 2026-11-01)")
    assert downloads.serve("/showback.json", "period=soon") == Refusal(
        400, "period: expected current, previous or a day as YYYY-MM-DD, not 'soon'"
    )
    assert downloads.serve("/elsewhere.csv", "") is None


def test_no_closed_period_yet_and_no_state_say_so(tmp_path: Path) -> None:
    state = kept(tmp_path / "state.db", ("default", "p", DECEMBER, DEC_1 + 60, DEC_1))
    try:
        assert Downloads(state).serve("/showback.csv", "period=previous") == Refusal(
            404, "no closed period is kept yet"
        )
    finally:
        state.close(10)
    refused = Downloads(NoState()).serve("/focus.csv", "")
    assert isinstance(refused, Refusal) and refused.status == 503
    assert "state.enabled: false" in refused.reason


def test_an_answer_kept_a_moment_ago_is_in_the_file(tmp_path: Path) -> None:
    """A download shows every answer kept before it was asked for, written or not."""
    path = tmp_path / "state.db"
    state = SqliteState(
        path, on_status=lambda up, reason: None, max_body_bytes=1 << 24, flush_seconds=3600
    )
    state.load()
    state.start()
    try:
        state.keep(StoredAnswer("default", "p", DECEMBER, DEC_1 + 60, "USD", period_start=DEC_1))
        _, body = download(Downloads(state), "/showback.json")
    finally:
        state.close(10)
    document = json.loads(body)
    assert document["columns"] == list(showback.COLUMNS)
    assert {r["product_id"] for r in document["rows"]} == {"si_bm", "si_pair", "si_calls", "si_lic"}
    assert all(isinstance(r["price"], float) for r in document["rows"])
    assert document["rows"][0]["tags"] == ["web", "prod"]


def test_a_kept_answer_that_no_longer_reads_is_left_out_and_counted(tmp_path: Path) -> None:
    """A stored answer the models refuse now (written by another version): the file
    holds the others, the store counts it once a download, and the metric says so."""
    state = SqliteState(
        tmp_path / "state.db", on_status=lambda up, reason: None, max_body_bytes=1 << 24
    )
    state.load()
    state.start()
    store = SnapshotStore()
    store.record_state(True)
    try:
        state.keep(StoredAnswer("default", "p", DECEMBER, DEC_1 + 60, "USD", period_start=DEC_1))
        state.keep(StoredAnswer("default", "q", b'{"data": []}', DEC_1 + 60, "USD"))
        downloads = Downloads(state, on_skipped=store.record_download_skipped)
        for path in ("/showback.csv", "/focus.csv"):
            _, body = download(downloads, path)
            assert {r.get("project_id") or r.get("SubAccountId") for r in table(body)} == {"p"}
    finally:
        state.close(10)
    assert store.view().state.skipped_in_downloads == 2
    samples = parse_samples(reference_exposition(store).decode())
    assert sample(samples, "latitudesh_download_skipped_answers_total") == 2.0


def test_an_answer_the_writer_is_still_writing_is_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that outlasts the reader's wait (a stalled disk): the answer it holds
    is read from memory, not missed."""
    from exporter.state import sqlite

    entered, release = threading.Event(), threading.Event()
    write = sqlite._write

    def stalled(*args: Any, **kwargs: Any) -> None:
        entered.set()
        release.wait(30)
        write(*args, **kwargs)

    monkeypatch.setattr(sqlite, "_write", stalled)
    monkeypatch.setattr(sqlite, "READ_FLUSH_SECONDS", 0.05)
    state = SqliteState(
        tmp_path / "state.db", on_status=lambda up, reason: None, max_body_bytes=1 << 24
    )
    state.load()
    state.start()
    try:
        state.keep(StoredAnswer("default", "p", DECEMBER, DEC_1 + 60, "USD", period_start=DEC_1))
        assert entered.wait(30), "the writer never started"
        _, body = download(Downloads(state), "/showback.csv")
    finally:
        release.set()
        state.close(10)
    assert {r["product_id"] for r in table(body)} == {"si_bm", "si_pair", "si_calls", "si_lic"}


def test_the_showback_json_says_what_the_csv_says(two_periods: SqliteState) -> None:
    downloads = Downloads(two_periods)
    _, text = download(downloads, "/showback.csv")
    _, data = download(downloads, "/showback.json")
    rows = json.loads(data)["rows"]
    as_csv = table(text)
    assert len(rows) == len(as_csv)
    for a, b in zip(rows, as_csv, strict=True):
        assert a["project_id"] == b["project_id"] and a["product_id"] == b["product_id"]
        assert Decimal(str(a["price"])) == Decimal(b["price"])


def test_the_opencost_pricing_file_prices_each_running_server_by_the_hour(
    two_periods: SqliteState,
) -> None:
    downloads = Downloads(two_periods)
    name, body = download(downloads, "/opencost/pricing.csv", "team=default")
    assert name == "latitudesh-opencost-pricing_default_2026-12-01.csv"
    rows = table(body)
    assert list(rows[0]) == list(opencost.COLUMNS)
    # 0.50/h for web-1; the pair's 0.50/h less 10 %, split over db-1 and db-2; the
    # licence and the API calls have no hourly rate
    assert {(r["InstanceID"], r["InstanceType"], r["MarketPriceHourly"]) for r in rows} == {
        ("web-1", "c2", "0.5"),
        ("db-1", "m4", "0.225"),
        ("db-2", "m4", "0.225"),
    }
    assert {(r["AssetClass"], r["InstanceIDField"], r["EndTimestamp"]) for r in rows} == {
        ("node", "metadata.name", "2027-01-01T00:00:00Z")
    }
    _, body = download(
        downloads,
        "/opencost/pricing.csv",
        "instance_id=server_id&instance_id_field=spec.providerID",
    )
    assert {(r["InstanceID"], r["InstanceIDField"]) for r in table(body)} >= {
        ("sv_1", "spec.providerID")
    }
    for query, reason in (
        ("period=previous", "the pricing file is of what runs now"),
        ("instance_id=ip", "instance_id: expected one of hostname, server_id"),
        ("instance_id_field=a%20b", "instance_id_field: a field name"),
    ):
        refused = downloads.serve("/opencost/pricing.csv", query)
        assert isinstance(refused, Refusal) and refused.status == 400, query
        assert reason in refused.reason, query


def test_a_line_that_ended_adds_nothing_to_a_server_price(tmp_path: Path) -> None:
    ended = product(end="2026-12-01T12:00:00Z")
    body = answer("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z", price=5000, lines=[ended])
    state = kept(tmp_path / "state.db", ("default", "p", body, DEC_1 + 86400, DEC_1))
    try:
        _, csv_body = download(Downloads(state), "/opencost/pricing.csv")
    finally:
        state.close(10)
    assert table(csv_body) == []


# --- FOCUS 1.2: the rules, ported -------------------------------------------------------

DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
SERVICE_CATEGORIES = {
    "AI and Machine Learning",
    "Analytics",
    "Business Applications",
    "Compute",
    "Databases",
    "Developer Tools",
    "Multicloud",
    "Identity",
    "Integration",
    "Internet of Things",
    "Management and Governance",
    "Media",
    "Migration",
    "Mobile",
    "Networking",
    "Security",
    "Storage",
    "Web",
    "Other",
}
CHARGE_CATEGORIES = {"Usage", "Purchase", "Tax", "Credit", "Adjustment"}
CHARGE_FREQUENCIES = {"One-Time", "Recurring", "Usage-Based"}
#: The FOCUS 1.2 columns this file may carry; any other must start with x_.
SPEC_COLUMNS = set(focus_file.MANDATORY) | {
    "AvailabilityZone",
    "ChargeFrequency",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedUnitPrice",
    "InvoiceId",
    "ListUnitPrice",
    "PricingCategory",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceSubcategory",
    "SkuId",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "SubAccountType",
    "Tags",
    # FOCUS 1.3's provider names
    "ServiceProviderName",
    "HostProviderName",
}
UNITS = re.compile(r"(\d+ )?(Hours|Minutes|GB|Units)")
#: The 1.2 subcategories this file uses, by category (each also has "Other (...)").
SUBCATEGORIES = {
    "Compute": ("Virtual Machines", "Containers"),
    "Storage": ("Block Storage", "File Storage", "Object Storage"),
    "Networking": ("Network Connectivity",),
}


def focus_violations(rows: list[dict[str, str]], prices: dict[str, Decimal]) -> list[str]:
    """What a FOCUS 1.2 validator would find in `rows`: the rules of the issue, each
    a line naming the row; and whether each project's BilledCost adds up to
    `prices`."""
    found: list[str] = []
    if not rows:
        return ["no rows"]
    columns = set(rows[0])
    found += [f"missing {c}" for c in focus_file.MANDATORY if c not in columns]
    found += [
        f"{c}: not a FOCUS column and no x_"
        for c in columns - SPEC_COLUMNS
        if not c.startswith("x_")
    ]
    totals: dict[str, Decimal] = {}
    for n, r in enumerate(rows):

        def bad(rule: str, n: int = n) -> None:
            found.append(f"row {n}: {rule}")

        for c in ("BilledCost", "ContractedCost", "EffectiveCost", "ListCost"):
            if not re.fullmatch(r"-?\d+(\.\d+)?", r[c]):
                bad(f"{c} is not a decimal: {r[c]!r}")
        for c in ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd"):
            if not DATE.fullmatch(r[c]):
                bad(f"{c} is not YYYY-MM-DDTHH:MM:SSZ: {r[c]!r}")
        if not (
            r["BillingPeriodStart"]
            <= r["ChargePeriodStart"]
            <= r["ChargePeriodEnd"]
            <= r["BillingPeriodEnd"]
        ):
            bad("the charge period is not within the billing period")
        if r["BillingPeriodStart"] >= r["BillingPeriodEnd"]:
            bad("the billing period ends before it starts")
        for c in (
            "BillingAccountId",
            "InvoiceIssuerName",
            "ProviderName",
            "PublisherName",
            "ServiceName",
        ):
            if not r[c]:
                bad(f"{c} is empty")
        if not re.fullmatch(r"[A-Z]{3}", r["BillingCurrency"]):
            bad("BillingCurrency is not ISO 4217")
        if r["ChargeCategory"] not in CHARGE_CATEGORIES:
            bad(f"ChargeCategory {r['ChargeCategory']!r}")
        if r["ChargeClass"] not in ("", "Correction"):
            bad("ChargeClass")
        if r["ChargeFrequency"] not in CHARGE_FREQUENCIES:
            bad("ChargeFrequency")
        if r["ChargeCategory"] == "Purchase" and r["ChargeFrequency"] == "Usage-Based":
            bad("a Purchase is not Usage-Based")
        if r["ChargeCategory"] == "Purchase" and Decimal(r["EffectiveCost"] or 0) != 0:
            bad("a Purchase pays future charges: its EffectiveCost is 0")
        subcategory = r.get("ServiceSubcategory", "")
        allowed = (*SUBCATEGORIES.get(r["ServiceCategory"], ()), f"Other ({r['ServiceCategory']})")
        if subcategory and subcategory not in allowed:
            bad(f"ServiceSubcategory {subcategory!r} is not of {r['ServiceCategory']}")
        if r["ServiceCategory"] not in SERVICE_CATEGORIES:
            bad(f"ServiceCategory {r['ServiceCategory']!r}")
        if r["EffectiveCost"] != r["BilledCost"]:
            bad("EffectiveCost is not BilledCost (nothing is amortised)")
        priced = r["PricingQuantity"] and UNITS.fullmatch(r["PricingUnit"])
        if r["ChargeCategory"] in ("Usage", "Purchase") and not priced:
            bad("PricingQuantity/PricingUnit on a Usage or Purchase row")
        if r["ListUnitPrice"] and r["PricingQuantity"]:
            product = Decimal(r["ListUnitPrice"]) * Decimal(r["PricingQuantity"])
            if abs(product - Decimal(r["ListCost"])) > Decimal("0.000001"):
                bad(f"ListCost {r['ListCost']} is not ListUnitPrice x PricingQuantity {product}")
        if r["ContractedUnitPrice"] and r["PricingQuantity"]:
            product = Decimal(r["ContractedUnitPrice"]) * Decimal(r["PricingQuantity"])
            if abs(product - Decimal(r["ContractedCost"])) > Decimal("0.0001"):
                bad("ContractedCost is not ContractedUnitPrice x PricingQuantity")
        if r["ConsumedQuantity"] and r["ChargeCategory"] != "Usage":
            bad("ConsumedQuantity on a row that is not Usage")
        if bool(r["ConsumedQuantity"]) != bool(r["ConsumedUnit"]):
            bad("ConsumedQuantity without ConsumedUnit, or the other way")
        if r["Tags"]:
            tags = json.loads(r["Tags"])
            if not isinstance(tags, dict) or not all(
                v is True or isinstance(v, str) for v in tags.values()
            ):
                bad("Tags is not a JSON object of strings (true for a tag without a value)")
        if bool(r["ResourceId"]) != bool(r["ResourceType"]):
            bad("ResourceId without ResourceType, or the other way")
        key = r["SubAccountId"]
        totals[key] = totals.get(key, Decimal(0)) + Decimal(r["BilledCost"])
    for project, price in prices.items():
        if abs(totals.get(project, Decimal(0)) - price) > Decimal("0.000001"):
            found.append(f"{project}: BilledCost adds up to {totals.get(project)}, price {price}")
    return found


def test_the_focus_file_of_both_periods_keeps_the_rules(two_periods: SqliteState) -> None:
    downloads = Downloads(two_periods)
    _, current = download(downloads, "/focus.csv")
    _, closed = download(downloads, "/focus.csv", "period=previous")
    rows = table(current)
    assert focus_violations(rows, {"p": Decimal("104"), "q": Decimal("104")}) == []
    assert focus_violations(table(closed), {"p": Decimal("104.5")}) == []
    line = {(r["SubAccountId"], r["x_ProductId"]): r for r in rows}
    server = line["p", "si_bm"]
    assert (server["ResourceId"], server["ResourceName"], server["ResourceType"]) == (
        "sv_1",
        "web-1",
        "Bare Metal Server",
    )
    assert json.loads(server["Tags"]) == {"web": True, "prod": True}
    assert (server["ServiceCategory"], server["ChargeCategory"], server["PricingUnit"]) == (
        "Compute",
        "Usage",
        "Hours",
    )
    assert (server["ListUnitPrice"], server["PricingQuantity"], server["ListCost"]) == (
        "0.5",
        "100",
        "50",
    )
    pair = line["p", "si_pair"]
    assert pair["ResourceId"] == ""  # two servers: no one resource
    assert (pair["BilledCost"], pair["ListCost"], pair["x_Discounts"]) == (
        "9",
        "10",
        "Accelerate: 10 %",
    )
    calls = line["p", "si_calls"]
    assert (calls["PricingUnit"], calls["PricingQuantity"], calls["ListUnitPrice"]) == (
        "1000 Units",
        "2500",
        "0.01",
    )
    assert (calls["ConsumedQuantity"], calls["ConsumedUnit"]) == ("2500000", "Units")
    assert (calls["ServiceCategory"], calls["ResourceType"]) == ("Storage", "Object Storage Bucket")
    licence = line["p", "si_lic"]
    assert (licence["ChargeCategory"], licence["ChargeFrequency"], licence["ConsumedQuantity"]) == (
        "Usage",
        "Recurring",
        "1",
    )  # a licence a month: not a Purchase (FOCUS reads one as paying future charges)
    assert (server["ServiceSubcategory"], calls["ServiceSubcategory"]) == (
        "Other (Compute)",
        "Object Storage",
    )
    assert {r["InvoiceId"] for r in rows} == {""}  # not invoiced yet
    assert {r["ProviderName"] for r in rows} == {"Latitude.sh"}
    assert {r["SubAccountType"] for r in rows} == {"Project"}


def test_the_rules_port_catches_what_it_should() -> None:
    """Each rule fails on a row that breaks it (the port is no rubber stamp)."""
    rows = list(focus_file.rows([]))
    assert focus_violations(rows, {}) == ["no rows"]
    state_rows = table(b"".join(focus_file.csv_file([])))
    assert state_rows == []
    good = dict.fromkeys(focus_file.COLUMNS, "") | {
        "BilledCost": "1",
        "ContractedCost": "1",
        "EffectiveCost": "1",
        "ListCost": "2",
        "BillingAccountId": "t",
        "BillingCurrency": "USD",
        "BillingPeriodStart": "2026-11-01T00:00:00Z",
        "BillingPeriodEnd": "2026-12-01T00:00:00Z",
        "ChargePeriodStart": "2026-11-01T00:00:00Z",
        "ChargePeriodEnd": "2026-11-02T00:00:00Z",
        "ChargeCategory": "Usage",
        "ChargeFrequency": "Usage-Based",
        "InvoiceIssuerName": "L",
        "ProviderName": "L",
        "PublisherName": "L",
        "ServiceName": "S",
        "ServiceCategory": "Compute",
        "PricingQuantity": "2",
        "PricingUnit": "Hours",
        "ListUnitPrice": "1",
        "SubAccountId": "p",
    }
    assert focus_violations([good], {"p": Decimal(1)}) == []
    for change, rule in (
        ({"BilledCost": "1e-5"}, "BilledCost is not a decimal"),
        ({"ChargePeriodEnd": "2026-11-02 00:00:00"}, "ChargePeriodEnd is not"),
        ({"ServiceCategory": "Servers"}, "ServiceCategory"),
        ({"ListCost": "3"}, "ListCost 3 is not"),
        ({"EffectiveCost": "0.9"}, "EffectiveCost is not BilledCost"),
        ({"Tags": '["web"]'}, "Tags is not a JSON object"),
        ({"ChargeCategory": "Purchase"}, "a Purchase is not Usage-Based"),
        ({"ChargeCategory": "Purchase", "ChargeFrequency": "Recurring"}, "EffectiveCost is 0"),
        ({"ServiceSubcategory": "Object Storage"}, "is not of Compute"),
        ({"PricingUnit": "hour"}, "PricingQuantity/PricingUnit"),
        ({"ChargePeriodEnd": "2026-12-02T00:00:00Z"}, "not within the billing period"),
        ({"BillingCurrency": "usd"}, "ISO 4217"),
    ):
        assert any(rule in v for v in focus_violations([good | change], {"p": Decimal(1)})), rule
    assert focus_violations([good], {"p": Decimal(2)}) == ["p: BilledCost adds up to 1, price 2"]
    assert "extra: not a FOCUS column and no x_" in focus_violations([good | {"extra": ""}], {})


def test_values_are_written_as_finance_tools_read_them() -> None:
    assert [decimal(v) for v in (71.7 / 3 * 3, 1e-05, -0.0, 1144.0, None, float("nan"))] == [
        "71.7",
        "0.00001",
        "0",
        "1144",
        "",
        "",
    ]
    assert timestamp(DEC_1) == "2026-12-01T00:00:00Z"
    assert timestamp(None) == timestamp(float("inf")) == timestamp(1e300) == ""


# --- over real sockets, behind basic auth -----------------------------------------------

PASSWORD = "finance"


@pytest.fixture
def protected(tmp_path: Path) -> Iterator[tuple[ExporterProcess, FakeApi]]:
    """The exporter over the demo's account, basic auth on, a state file seeded with
    the period before (each project's last answer a minute before its end)."""
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web.write_text(yaml.safe_dump({"basic_auth_users": {"finance": hashed}}))
    with FakeApi(DemoAccount(token=TOKEN)) as api:
        seed(api.accounts[0], tmp_path / "latitudesh-exporter" / "state.db")
        exporter = ExporterProcess(
            ["--web.config.file", str(web)],
            env=api_env(api, XDG_STATE_HOME=str(tmp_path)),
            cwd=tmp_path,
            tmp=tmp_path,
        )
        try:
            exporter.wait_ready()
            yield exporter, api
        finally:
            exporter.stop()


def seed(account: DemoAccount, path: Path) -> None:
    before, at = period_before(account)
    # the team's name as the exporter that watched the period kept it
    periods.keep(path, periods.answers("default", account, before, at, team_name=account.team.slug))


def basic(password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"finance:{password}".encode()).decode()}


@pytest.mark.slow
def test_downloads_over_real_sockets_behind_basic_auth(
    protected: tuple[ExporterProcess, FakeApi],
) -> None:
    exporter, api = protected
    url = exporter.url

    def every_project() -> set[str] | None:
        """Every project polled by this process (the seeded answers are served at once,
        at `up` 0 until then)."""
        status, _, body = http_get(url + "/metrics", basic())
        samples = parse_samples(body.decode())
        ids = {pid for pid in DEMO_PROJECTS if pid in api.accounts[0].projects}
        found = {pid for pid in ids if sample(samples, "latitudesh_up", project_id=pid) == 1}
        return found if status == 200 and found == ids else None

    ids = wait_for(every_project, timeout=60, message="every project's price on /metrics")
    for path in ("/showback.csv", "/showback.json", "/focus.csv"):
        assert http_get(url + path)[0] == 401
        assert http_get(url + path, basic("wrong"))[0] == 401
    status, headers, body = http_get(url + "/focus.csv", basic())
    assert status == 200
    assert "Content-Length" not in headers and headers["Transfer-Encoding"] == "chunked"
    start = datetime.fromtimestamp(api.accounts[0].period()[0], UTC).date().isoformat()
    assert headers["Content-Disposition"] == (
        f'attachment; filename="latitudesh-focus-1.2_all-teams_{start}.csv"'
    )
    rows = table(body)
    # (the current period's rows against its price: polls land meanwhile; the closed
    # period's below, and the files of a fixed answer above)
    assert focus_violations(rows, {}) == []
    assert {r["SubAccountId"] for r in rows} == ids
    status, _, body = http_get(url + "/showback.csv?period=previous&team=default", basic())
    assert status == 200
    closed = table(body)
    assert {r["project_id"] for r in closed} == ids
    assert {r["period_end"] for r in closed} == {
        datetime.fromtimestamp(api.accounts[0].period()[0], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    }
    samples = parse_samples(http_get(url + "/metrics", basic())[2].decode())
    for pid in ids:
        previous = sample(samples, "latitudesh_billing_previous_period_price", project_id=pid)
        total = sum(Decimal(r["price"]) for r in closed if r["project_id"] == pid)
        assert abs(total - Decimal(str(previous))) < Decimal("0.000001"), pid
    # the status page links each file of the team, this period's and the last one's
    page = http_get(url + "/", basic())[2].decode()
    links = re.findall(r'href="(/(?:showback|focus)[^"]*)"', page)
    assert sorted(link.replace("&amp;", "&") for link in links) == sorted(
        f"/{name}?team={api.accounts[0].team.slug}{period}"
        for name in ("showback.csv", "showback.json", "focus.csv")
        for period in ("", "&period=previous")
    )
    for link in links:
        status, _, body = http_get(url + link.replace("&amp;", "&"), basic())
        assert status == 200, link
        rows = json.loads(body)["rows"] if ".json" in link else table(body)
        assert len(rows) > len(ids), link  # the team's rows: a file is not just a header
    status, _, body = http_get(url + "/showback.csv?period=1999-01-01", basic())
    assert status == 404 and body.startswith(b"no closed period starts on 1999-01-01")
    status, _, body = http_get(url + "/showback.json?team=nobody", basic())
    assert status == 200 and json.loads(body)["rows"] == []


@pytest.mark.slow
def test_the_status_page_links_download_in_a_real_browser(
    browser: object, protected: tuple[ExporterProcess, FakeApi], tmp_path: Path
) -> None:
    """Each link of a team's downloads, clicked in Chromium behind basic auth: a file
    saved under the name the server gives, whose rows are the team's."""
    from playwright.sync_api import Browser

    assert isinstance(browser, Browser)
    exporter, api = protected
    team = api.accounts[0].team.slug
    context = browser.new_context(
        accept_downloads=True, http_credentials={"username": "finance", "password": PASSWORD}
    )
    try:
        page = context.new_page()

        def both_periods() -> bool:
            page.goto(exporter.url + "/")
            return (
                page.locator(f'section[data-team="{team}"] [data-field="downloads"] a').count() == 6
            )

        wait_for(both_periods, timeout=60, message="this period's and the last one's links")
        links = page.locator(f'section[data-team="{team}"] [data-field="downloads"] a')
        names = []
        for index in range(links.count()):
            with page.expect_download() as started:
                links.nth(index).click()
            saved = tmp_path / started.value.suggested_filename
            started.value.save_as(saved)
            names.append(saved.name)
            body = saved.read_bytes()
            rows = json.loads(body)["rows"] if saved.suffix == ".json" else table(body)
            assert rows and {r.get("team") or r.get("BillingAccountName") for r in rows} == {
                team
            }, saved.name
        assert len(set(names)) == 6  # each file's name says its kind and period
        assert all(f"_{team}_" in name for name in names)
    finally:
        context.close()


def test_the_demo_files_the_validator_is_run_on(tmp_path: Path) -> None:
    """`scripts/focus_files.py` (what `scripts/focus-validator.sh` validates) writes the
    demo's files, and they keep the rules."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "focus_files.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    current = table((tmp_path / "focus-current.csv").read_bytes())
    previous = table((tmp_path / "focus-previous.csv").read_bytes())
    assert focus_violations(current, {}) == [] and focus_violations(previous, {}) == []
    assert {r["BillingPeriodEnd"] for r in previous} <= {r["BillingPeriodStart"] for r in current}
    assert {r["SubAccountId"] for r in current} == set(DEMO_PROJECTS)
