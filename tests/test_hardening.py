"""Faults and bad input over real sockets: chaos, churn, slow API, bad keys, rotation."""

from __future__ import annotations

import json
import os
import random
import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from exporter.demo import DemoAccount, DemoApi, DemoProduct, DemoProject, DemoServer, Fault
from exporter.poller import Poller
from exporter.snapshot import OTHER_PRODUCT_ID, SnapshotStore
from tests.conftest import (
    TOKEN,
    ExporterProcess,
    frozen_account,
    http_get,
    make_client,
    parse_samples,
    sample,
    wait_for,
)
from tests.test_server import serve

PROJECTS = ["proj_demo_web", "proj_demo_gpu", "proj_demo_data", "proj_demo_dev"]
JSONAPI_ERROR = json.dumps({"errors": [{"status": "422", "code": "invalid_filter",
                                        "title": "Unprocessable", "detail": "bad filter"}]})

#: Each fault and the reason it must be counted under (None: the poll must succeed).
CHAOS: list[tuple[Fault, str | None]] = [
    (Fault("status", status=401), "unauthorized"),
    (Fault("status", status=403), "forbidden"),
    (Fault("status", status=404), "not_found"),
    (Fault("rate_limited", retry_after=0.01, where="body"), "rate_limited"),
    (Fault("rate_limited", retry_after=0.01, where="header"), "rate_limited"),
    (Fault("rate_limited", retry_after=0.01, where="both"), "rate_limited"),
    (Fault("rate_limited", where="neither"), "rate_limited"),
    (Fault("rate_limited", retry_after=86_400, where="both"), "rate_limited"),  # capped
    (Fault("status", status=500), "server_error"),
    (Fault("status", status=502, body="<html>bad gateway</html>"), "server_error"),
    (Fault("status", status=503), "server_error"),
    (Fault("reset"), "network"),
    (Fault("delay", delay=2.5), "timeout"),
    (Fault("truncated"), "network"),
    (Fault("not_json"), "invalid_response"),
    (Fault("status", status=422, body=JSONAPI_ERROR), "invalid_response"),
    (Fault("status", status=200, body=JSONAPI_ERROR), "invalid_response"),
    (Fault("empty_data"), "invalid_response"),
    (Fault("wrong_project"), "invalid_response"),
    (Fault("huge", products=40_000), "invalid_response"),  # over the size cap
    (Fault("data_list"), None),
    (Fault("strings"), None),
    (Fault("drift"), None),
    (Fault("old_shape"), None),
    (Fault("huge", products=20_000), None),  # folded by the cardinality guard
]


@dataclass
class Rig:
    api: DemoApi
    store: SnapshotStore
    poller: Poller
    metrics_url: str
    clock: list[float]


@pytest.fixture
def rig() -> Iterator[Rig]:
    api = DemoApi(frozen_account(), token=TOKEN).start()
    store = SnapshotStore()
    client = make_client(api.url, on_request=store.record_request, max_retries=1,
                         timeout=2.0, max_retry_wait=0.05, unauthorized_backoff=0,
                         max_response_bytes=10 * 1024 * 1024)
    clock = [1000.0]
    poller = Poller(client, store, concurrency=4, now=lambda: clock[0], max_products=1000)
    server = serve(store)
    yield Rig(api, store, poller, f"http://127.0.0.1:{server.port}/metrics", clock)
    server.stop()
    poller.stop()
    api.stop()


def test_chaos_many_cycles_every_error_counted_others_fresh(rig: Rig) -> None:
    stop = threading.Event()
    scrape_failures: list[str] = []
    scrapes = [0]

    def scraper() -> None:  # scrapes all along: /metrics must answer every time
        while not stop.is_set():
            try:
                status, _, body = http_get(rig.metrics_url, timeout=10)
                parse_samples(body.decode())
                if status != 200:
                    scrape_failures.append(str(status))
            except Exception as exc:
                scrape_failures.append(repr(exc))
            scrapes[0] += 1

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    assert rig.poller.refresh()
    try:
        for cycle, (fault, reason) in enumerate(CHAOS * 2):
            target = PROJECTS[cycle % len(PROJECTS)]
            before = dict(rig.store.view().poll_errors)
            rig.clock[0] += 60
            rig.api.inject(fault, project=target, times=None)
            rig.poller.refresh()
            rig.api.clear_faults()
            view = rig.store.view()
            status = {p.project_id: p for p in view.projects}
            where = f"cycle {cycle}: {fault} on {target}"
            if reason is None:
                assert status[target].up, where
            else:
                assert not status[target].up, where
                assert status[target].last_error == reason, where
                assert status[target].usage is not None, f"{where}: last good values lost"
            changed = {k: v - before.get(k, 0) for k, v in view.poll_errors.items()
                       if v != before.get(k, 0)}
            assert changed == ({(target, reason): 1} if reason else {}), where
            for other in PROJECTS:
                if other != target:
                    assert status[other].up, f"{where}: {other} was affected"
                    assert status[other].last_success == rig.clock[0], where
    finally:
        stop.set()
        thread.join(timeout=15)
    assert scrape_failures == []
    assert scrapes[0] > 0
    # the last cycle was a good one: everyone recovered and the guard held
    rig.clock[0] += 60
    rig.api.inject(Fault("huge", products=20_000), project="proj_demo_web", times=None)
    assert rig.poller.refresh()
    web = next(p for p in rig.store.view().projects if p.project_id == "proj_demo_web")
    assert web.usage is not None
    assert len(web.usage.products) == 1001
    assert web.usage.products[-1].product_id == OTHER_PRODUCT_ID
    assert web.usage.products_folded == 20_004 - 1000


def test_a_project_with_20000_products_stays_bounded_in_the_exposition(rig: Rig) -> None:
    rig.api.inject(Fault("huge", products=20_000), project="proj_demo_gpu", times=None)
    assert rig.poller.refresh()
    samples = parse_samples(http_get(rig.metrics_url)[2].decode())
    prices = [ls for (name, ls) in samples if name == "latitudesh_billing_product_price"
              and ("project_id", "proj_demo_gpu") in ls]
    assert len(prices) == 1001
    assert sample(samples, "latitudesh_billing_products_folded",
                  project_id="proj_demo_gpu") == 19_001.0
    assert sample(samples, "latitudesh_billing_product_price", project_id="proj_demo_gpu",
                  product_id=OTHER_PRODUCT_ID) is not None


def test_a_scrape_answers_at_once_while_a_poll_hangs(rig: Rig) -> None:
    assert rig.poller.refresh()
    rig.api.inject(Fault("delay", delay=5.0), times=None)
    arrived = rig.api.arrivals
    hanging = threading.Thread(target=rig.poller.refresh, daemon=True)
    hanging.start()
    wait_for(lambda: rig.api.arrivals > arrived, timeout=10, message="a poll in flight")
    status, _, body = http_get(rig.metrics_url, timeout=2)  # would time out if it waited
    assert status == 200
    assert sample(parse_samples(body.decode()), "latitudesh_up",
                  project_id="proj_demo_web") == 1.0
    rig.api.clear_faults()
    hanging.join(timeout=15)


def test_a_bad_key_is_not_hammered(tmp_path: Path) -> None:
    with DemoApi(frozen_account(), token="the-real-token") as api:
        store = SnapshotStore()
        client = make_client(api.url, token="a-wrong-token", max_retries=3)
        poller = Poller(client, store, concurrency=2)
        for _ in range(5):
            poller.refresh()
        assert api.request_count() == 1  # one 401, then nothing until the back-off ends
        assert store.view().discovery_errors["unauthorized"] == 5
        poller.stop()


def test_token_file_rotation_without_restart(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("revoked-token\n")
    token_file.chmod(0o644)  # world-readable: must be warned about
    with DemoApi(frozen_account(), token=TOKEN) as api:
        exporter = ExporterProcess([], env={
            "LATITUDESH_EXPORTER_API__TOKEN_FILE": str(token_file),
            "LATITUDESH_EXPORTER_API__BASE_URL": api.url,
            "LATITUDESH_EXPORTER_API__REQUESTS_PER_MINUTE": "6000",
            "LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS": "1",
        }, cwd=tmp_path)
        try:
            wait_for(lambda: "unauthorized" in exporter.output(), timeout=30,
                     message="the rejected token to be reported")
            token_file.write_text(TOKEN + "\n")
            os.utime(token_file, (1, 1))
            exporter.wait_ready(timeout=30)
            wait_for(lambda: sample(exporter.scrape(), "latitudesh_up",
                                    project_id="proj_demo_web") == 1.0, timeout=30,
                     message="polls to succeed with the rotated token")
        finally:
            exporter.stop()
        output = exporter.output()
    assert 'msg="token file is readable by every user"' in output
    assert "mode=0o644" in output
    assert 'msg="project discovery failed" reason=unauthorized' in output
    assert "LATITUDESH_AUTH_TOKEN or api.token_file" in output  # the one-line fix
    assert TOKEN not in output and "revoked-token" not in output


def churn_account(rng: random.Random) -> DemoAccount:
    projects = []
    for p in rng.sample(range(12), rng.randint(1, 6)):
        products = [
            DemoProduct(f"si_{p}_{i}", f"product {i}", rng.choice(["bare_metal", "vm"]),
                        "hour", "metered", unit_price=rng.randint(1, 500), rate=1,
                        servers=(DemoServer(f"sv_{p}_{i}", f"host-{rng.randint(0, 30)}",
                                            rng.choice(["c2", "c3", "g3"])),))
            for i in rng.sample(range(40), rng.randint(0, 15))
        ]
        projects.append(DemoProject(f"proj_churn_{p}", f"churn-{p}", f"Churn {p}",
                                    threshold=rng.choice([None, 10_000]), credit=0,
                                    products=products))
    return DemoAccount(projects, clock=lambda: 1_795_000_000.0)


def expected_series(account: DemoAccount) -> set[tuple[str, str, str]]:
    """(project, product, hostname) of every product line the API currently shows."""
    found = set()
    for project in account.projects.values():
        attributes = account.usage(project)["data"]["attributes"]
        for product in attributes["products"]:
            (server,) = product["metadata"]["servers"]
            found.add((project.id, product["id"], server["hostname"]))
    return found


def test_churn_leaves_no_stale_series_and_memory_flat() -> None:
    rng = random.Random(20261125)
    with DemoApi(churn_account(rng)) as api:
        store = SnapshotStore()
        poller = Poller(make_client(api.url), store, concurrency=4)
        server = serve(store)
        url = f"http://127.0.0.1:{server.port}/metrics"
        sizes = []
        tracemalloc.start()
        try:
            for cycle in range(120):  # the 500-cycle soak with RSS is benchmarks/
                api.account = churn_account(rng)
                poller.refresh()
                samples = parse_samples(http_get(url)[2].decode())
                seen = {(dict(ls)["project_id"], dict(ls)["product_id"], dict(ls)["hostname"])
                        for (name, ls) in samples
                        if name == "latitudesh_billing_product_price"}
                assert seen == expected_series(api.account), f"cycle {cycle}"
                ups = {dict(ls)["project_id"] for (name, ls) in samples
                       if name == "latitudesh_up"}
                assert ups == set(api.account.projects), f"cycle {cycle}"
                sizes.append(len(samples))
                if cycle == 30:
                    baseline = tracemalloc.get_traced_memory()[0]
            grown = tracemalloc.get_traced_memory()[0] - baseline
        finally:
            tracemalloc.stop()
            server.stop()
            poller.stop()
    assert max(sizes) < 2000  # bounded by what one account can hold, not by history
    assert grown < 4 * 1024 * 1024, f"traced memory grew {grown} bytes over 90 cycles"
