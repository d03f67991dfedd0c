"""Deterministic synthetic accounts, and the server processes the benchmarks measure.

Run as `python -m benchmarks.workloads KIND ...`; each kind prints one line (its port
or URL) and serves until terminated, so that the benchmark client never shares a GIL
with the server it measures.

  ours P N         the exporter's own HTTP stack over a store of P projects x N products
  gauges P N       the same samples in labelled Gauges behind prometheus_client's
                   start_http_server: how most hand-written exporters do it
  floor P N        the same exposition bytes, pre-rendered, from a minimal server
  fakeapi P N LAT  the simulated Latitude API with P projects x N products, LAT seconds
                   of latency per request; P=0 gives an empty team
  churn CYCLES     poll a churning simulated API CYCLES times in-process, printing RSS
"""

from __future__ import annotations

import random
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, start_http_server
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.cli import build_exposition
from exporter.collector import BillingCollector, ExporterCollector
from exporter.demo import DemoAccount, DemoApi, DemoProduct, DemoProject, DemoServer, Fault
from exporter.server import HttpServer, MetricsApp
from exporter.snapshot import (
    DiscountInfo,
    ProductUsage,
    ServerInfo,
    SnapshotStore,
    UsageSnapshot,
)

PLANS = ("c2-small-x86", "c3-medium-x86", "g3-h100-large", "m4-metal-large")
RESOURCES = ("bare_metal", "virtual_machine", "object_storage", "elastic_ip")


def synthetic_store(projects: int, products: int) -> SnapshotStore:
    rng = random.Random(7)
    store = SnapshotStore()
    ids = [f"proj_bench_{p:05d}" for p in range(projects)]
    store.set_projects(ids)
    for p, pid in enumerate(ids):
        lines = []
        for i in range(products):
            plan = PLANS[i % len(PLANS)]
            lines.append(ProductUsage(
                product_id=f"si_{p:05d}_{i:03d}", name=f"{plan} #{i}",
                resource=RESOURCES[i % len(RESOURCES)], unit="hour", usage_type="metered",
                plan=plan, hostname=f"host-{p}-{i}", price=rng.uniform(1, 500),
                amount=rng.uniform(1, 500), price_without_discount=rng.uniform(1, 600),
                unit_price=rng.uniform(0.01, 5), quantity=float(rng.randint(1, 720)),
                discounts=(DiscountInfo("Monthly Discount", 0.05, None),) if i % 10 == 0
                else (),
                servers=(ServerInfo(f"sv_{p}_{i}", f"host-{p}-{i}", plan),),
            ))
        store.record_success(UsageSnapshot(
            project_id=pid, project_slug=f"bench-{p}", project_name=f"Bench {p}",
            currency="USD", price=rng.uniform(100, 9000), amount=rng.uniform(100, 9000),
            available_credit_balance=rng.uniform(-10, 5000), threshold=10_000.0,
            period_start=1_793_491_200.0, period_end=1_796_083_200.0,
            products=tuple(lines),
        ), duration=0.2, now=1_795_000_000.0)
    return store


def synthetic_account(projects: int, products: int) -> DemoAccount:
    team = []
    for p in range(projects):
        lines = [DemoProduct(f"si_{p}_{i}", f"product {i}", RESOURCES[i % 4], "hour",
                             "metered", unit_price=1 + i % 50, rate=1,
                             servers=(DemoServer(f"sv_{p}_{i}", f"host-{p}-{i}",
                                                 PLANS[i % 4]),))
                 for i in range(products)]
        team.append(DemoProject(f"proj_bench_{p:05d}", f"bench-{p}", f"Bench {p}",
                                threshold=1_000_000, credit=0, products=lines))
    return DemoAccount(team, speed=1.0)


def ours(store: SnapshotStore) -> HttpServer:
    """The exporter's HTTP side exactly as the CLI wires it."""
    server = HttpServer(MetricsApp(build_exposition(store), ready=lambda: True,
                                   projects=list), "127.0.0.1", 0)
    server.start()
    return server


def rendered(store: SnapshotStore) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BillingCollector(store.view))
    registry.register(ExporterCollector(store.view))
    return generate_latest(registry)


def gauges(store: SnapshotStore) -> int:
    """Every sample of our exposition, set into labelled Gauges of a fresh registry."""
    registry = CollectorRegistry(auto_describe=False)
    for family in text_string_to_metric_families(rendered(store).decode()):
        names = sorted({k for s in family.samples for k in s.labels})
        gauge = Gauge(family.name if family.type != "counter" else family.name + "_total",
                      family.documentation, names, registry=registry)
        for sample in family.samples:
            (gauge.labels(**{n: sample.labels.get(n, "") for n in names}) if names
             else gauge).set(sample.value)
    ProcessCollector(registry=registry)
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    return int(server.server_port)


def floor(store: SnapshotStore) -> int:
    body = rendered(store)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.server_address[1])


def busiest_window(times: list[float], window: float) -> int:
    """The most requests in any half-open window [t, t + window): what a per-minute
    rate limit counts."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        while ordered[start] + window <= t:
            start += 1
        best = max(best, end - start + 1)
    return best


def rss_bytes(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def churn(cycles: int) -> None:
    """The exporter's poll → store → render path against an API whose projects,
    products and hostnames change every refresh."""
    from pydantic import SecretStr

    from exporter.client import LatitudeClient
    from exporter.poller import Poller
    from exporter.ratelimit import RequestBudget

    rng = random.Random(3)

    def account() -> DemoAccount:
        team = []
        for p in rng.sample(range(40), rng.randint(5, 25)):
            lines = [DemoProduct(f"si_{p}_{i}", f"product {i}", "bare_metal", "hour",
                                 "metered", unit_price=5, rate=1,
                                 servers=(DemoServer(f"sv_{i}", f"host-{rng.randint(0, 999)}",
                                                     rng.choice(PLANS)),))
                     for i in rng.sample(range(200), rng.randint(5, 50))]
            team.append(DemoProject(f"proj_{p}", f"churn-{p}", f"Churn {p}", 1000, 0, lines))
        return DemoAccount(team)

    api = DemoApi(account()).start()
    store = SnapshotStore()
    client = LatitudeClient(token=lambda: SecretStr("x"), budget=RequestBudget(1e9),
                            base_url=api.url)
    poller = Poller(client, store, concurrency=4)
    server = ours(store)
    import urllib.request

    for cycle in range(cycles + 1):
        api.account = account()
        api.requests.clear()
        poller.refresh()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics") as answer:
            lines = answer.read().count(b"\n")
        if cycle % 50 == 0:
            print(f"{cycle} {rss_bytes()} {lines}", flush=True)
    poller.stop()
    client.close()
    server.stop()
    api.stop()


def main(argv: list[str]) -> None:
    kind, *args = argv
    if kind == "churn":
        churn(int(args[0]))
        return
    projects, products = int(args[0]), int(args[1])
    if kind == "fakeapi":
        api = DemoApi(synthetic_account(projects, products)).start()
        if float(args[2]) > 0:
            api.inject(Fault("delay", delay=float(args[2])), times=None)
        print(api.url, flush=True)
    else:
        store = synthetic_store(projects, products)
        port = {"ours": lambda: ours(store).port, "gauges": lambda: gauges(store),
                "floor": lambda: floor(store)}[kind]()
        print(port, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
