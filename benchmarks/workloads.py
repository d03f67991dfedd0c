"""The processes the benchmarks measure, each run as `python -m benchmarks.workloads KIND`.

Each kind prints one line (its URL or port) and serves until terminated, so that the
benchmark's own client never shares a GIL with what it measures.

  api P N LAT [TEAMS]  a fast fake Latitude API: TEAMS keys ("bench-0", ...) of P
                       projects x N products each, LAT seconds of latency per request.
                       Every answer carries a new sequence number as its price in cents
                       (the poll changes the data, as in life); /__bench__/log tells
                       what was served when; POST {"storm": [key, ...]} answers those
                       keys 429 until the next POST, {"latency": seconds} sets LAT.
  floor FILE ENC       FILE's bytes, already encoded (ENC: gzip or identity), as /metrics
                       from a minimal server: the floor of a scrape
  gauges P N           the same samples in labelled Gauges behind prometheus_client's
                       start_http_server: how most hand-written exporters do it
  churn CYCLES         poll a churning fake API CYCLES times in-process, printing RSS
"""

from __future__ import annotations

import random
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from testing.largeapi import PLANS, SEQ, LargeApi, LargeServer, project_body


def _limits() -> Any:
    from exporter.usage import Limits

    return Limits(products=1000, servers=1000, tags_per_server=20)


class FloorHandler(BaseHTTPRequestHandler):
    server: FloorServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        if self.server.encoding != "identity":
            self.send_header("Content-Encoding", self.server.encoding)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)


class FloorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, body: bytes, encoding: str) -> None:
        super().__init__(("127.0.0.1", 0), FloorHandler)
        self.body = body
        self.encoding = encoding


def synthetic_store(projects: int, products: int) -> Any:
    """A store holding P x N, as a poll of `project_body` answers would leave it."""
    from exporter.models import BillingUsageDocument, parse_document
    from exporter.store import SnapshotStore
    from exporter.usage import build_usage

    store = SnapshotStore()
    store.add_team("bench")
    ids = [f"proj_b00_{i:05d}" for i in range(projects)]
    store.set_projects("bench", ((pid, "") for pid in ids))
    for index, pid in enumerate(ids):
        body = project_body(0, index, products).replace(SEQ, b"100000000001")
        attributes = parse_document(BillingUsageDocument, body).usage_for(pid)
        assert attributes is not None
        store.record_success(
            "bench",
            build_usage(pid, attributes, currency="USD", limits=_limits(), at=1_795_000_000.0),
            duration=0.2,
            now=1_795_000_000.0,
        )
    return store


def gauges(projects: int, products: int) -> int:
    """Every sample of our exposition, set into labelled Gauges of a fresh registry."""
    from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, start_http_server
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from exporter.collector import ProjectCollector, TeamCollector

    store = synthetic_store(projects, products)
    reference = CollectorRegistry(auto_describe=False)
    reference.register(ProjectCollector(store.view))
    reference.register(TeamCollector(store.view))
    registry = CollectorRegistry(auto_describe=False)
    for family in text_string_to_metric_families(generate_latest(reference).decode()):
        names = sorted({k for s in family.samples for k in s.labels})
        gauge = Gauge(
            family.name if family.type != "counter" else family.name + "_total",
            family.documentation,
            names,
            registry=registry,
        )
        for sample in family.samples:
            (gauge.labels(**{n: sample.labels.get(n, "") for n in names}) if names else gauge).set(
                sample.value
            )
    ProcessCollector(registry=registry)
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    return int(server.server_port)


def churn(cycles: int) -> None:
    """The poll → store → exposition path against an API whose projects, products and
    hostnames change every refresh: RSS every 50 refreshes."""
    import urllib.request

    from pydantic import SecretStr

    from benchmarks.measure import rss_mib
    from exporter.client import LatitudeClient
    from exporter.config import ApiSettings
    from exporter.poller import Poller
    from exporter.ratelimit import RequestBudget
    from exporter.simulation import DemoAccount, DemoProduct, DemoProject, DemoServer
    from exporter.store import SnapshotStore
    from testing.fakeapi import FakeApi

    rng = random.Random(3)

    def account() -> DemoAccount:
        team = []
        for p in rng.sample(range(40), rng.randint(5, 25)):
            lines = [
                DemoProduct(
                    f"si_{p}_{i}",
                    f"product {i}",
                    "bare_metal",
                    "hour",
                    "metered",
                    unit_price=5,
                    rate=1,
                    servers=(
                        DemoServer(
                            f"sv_{i}",
                            f"host-{rng.randint(0, 999)}",
                            rng.choice(PLANS),
                            (f"tag-{rng.randint(0, 9)}",),
                        ),
                    ),
                )
                for i in rng.sample(range(200), rng.randint(5, 50))
            ]
            team.append(DemoProject(f"proj_{p}", f"churn-{p}", f"Churn {p}", 1000, 0, lines))
        return DemoAccount(team)

    api = FakeApi(account()).start()
    store = SnapshotStore()
    client = LatitudeClient(
        token=lambda: SecretStr("x"),
        budget=RequestBudget(1e9),
        api=ApiSettings(base_url=api.url),
    )
    poller = Poller(
        client,
        store,
        team=None,
        interval=300,
        concurrency=4,
        limits=_limits(),
        budget_seconds=lambda requests: 0.0,
        grace=15,
    )
    port = warm_over(store)
    for cycle in range(cycles + 1):
        api.account = account()
        poller.refresh()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as answer:
            lines = answer.read().count(b"\n")
        if cycle % 50 == 0:
            print(f"{cycle} {rss_mib():.1f} {lines}", flush=True)
    poller.stop()
    client.close()
    api.stop()


def warm_over(store: Any) -> int:
    from prometheus_client import CollectorRegistry

    from exporter.collector import TeamCollector
    from exporter.exposition import Exposition
    from exporter.httpserver import HttpServer
    from exporter.web import WebApp

    tail = CollectorRegistry(auto_describe=False)
    tail.register(TeamCollector(store.view))
    exposition = Exposition(tail)
    store.subscribe(exposition)
    server = HttpServer(WebApp(exposition, store.view), "127.0.0.1", 0)
    server.start()
    return server.port


def main(argv: list[str]) -> None:
    kind, *args = argv
    if kind == "churn":
        churn(int(args[0]))
        return
    if kind == "api":
        teams = int(args[3]) if len(args) > 3 else 1
        server = LargeServer(LargeApi(int(args[0]), int(args[1]), float(args[2]), teams))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    elif kind == "floor":
        floor = FloorServer(Path(args[0]).read_bytes(), args[1])
        threading.Thread(target=floor.serve_forever, daemon=True).start()
        print(floor.server_address[1], flush=True)
    elif kind == "gauges":
        print(gauges(int(args[0]), int(args[1])), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
