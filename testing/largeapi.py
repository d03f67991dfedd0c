"""A large Latitude.sh account, fast: prebuilt answers of many projects of many products.

For the benchmarks (which run it in a process of their own) and the tests of a large
daemon: each answer carries a sequence number where its figures change, so every poll
lands new data, and the server logs what it served when.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PLANS = ("c2-small-x86", "c3-medium-x86", "g3-h100-large", "m4-metal-large")
RESOURCES = ("bare_metal", "virtual_machine", "object_storage", "elastic_ip")
SEQ = b"424242424242"  # replaced by each answer's sequence number (same width)


def project_body(team: int, index: int, products: int) -> bytes:
    """One project's billing answer, with SEQ where the figures change per poll."""
    project_id = f"proj_b{team:02d}_{index:05d}"
    lines = []
    for i in range(products):
        plan = PLANS[i % len(PLANS)]
        lines.append(
            {
                "id": f"si_{index:05d}_{i:03d}",
                "resource": RESOURCES[i % len(RESOURCES)],
                "name": f"{plan} #{i}",
                "description": f"{plan} server",
                "proration": True,
                "discounts": (
                    [{"description": "Monthly Discount", "type": "percent", "value": 5}]
                    if i % 10 == 0
                    else []
                ),
                "discountable": i % 10 == 0,
                "amount_without_discount": 1000 + i,
                "start": "2026-11-01T00:00:00+00:00",
                "end": None,
                "unit": "hour",
                "unit_amount": 20,
                "unit_price": 20,
                "usage_type": "metered",
                "quantity": 720 + i,
                "amount": 1000 + i,
                "price": 1000 + i,
                "metadata": {
                    "servers": [
                        {
                            "id": f"sv_{index}_{i}",
                            "hostname": f"host-{index}-{i}",
                            "plan": plan,
                            "tags": ["web", f"team-{i % 5}"],
                        }
                    ]
                },
            }
        )
    document = {
        "data": {
            "id": "",
            "type": "billing_usage",
            "attributes": {
                "project": {
                    "id": project_id,
                    "slug": f"bench-{team}-{index}",
                    "name": f"Bench {team}.{index}",
                },
                "period": {
                    "start": "2026-11-01T00:00:00+00:00",
                    "end": "2026-12-01T00:00:00+00:00",
                },
                "available_credit_balance": 500_000,
                "amount": 0,
                "threshold": 10_000_000,
                "products": lines,
                "price": 0,
            },
        },
        "meta": {},
    }
    text = json.dumps(document).encode()
    # the project's price and its first product's quantity move with every poll
    text = text.replace(b'"amount": 0, "threshold"', b'"amount": 1, "threshold"')
    text = text.replace(b'"price": 0}', b'"price": ' + SEQ + b"}")
    return text.replace(b'"quantity": 720,', b'"quantity": ' + SEQ + b",", 1)


class LargeApi:
    """A large account, fast: prebuilt answers of `projects` x `products` for each of
    `teams` keys (`bench-0`, ...), the log of what was served when, and controls
    (`POST {"storm": [keys]}` answers those keys 429; `{"latency": s}`) for the
    benchmarks, which run it in a process of its own."""

    def __init__(self, projects: int, products: int, latency: float, teams: int) -> None:
        self.latency = latency
        self.keys = {f"bench-{t}": t for t in range(teams)}
        self.ids = {t: [f"proj_b{t:02d}_{i:05d}" for i in range(projects)] for t in range(teams)}
        self.bodies = {
            pid: project_body(t, i, products)
            for t, ids in self.ids.items()
            for i, pid in enumerate(ids)
        }
        self.lock = threading.Lock()
        self.seq = 10**11  # twelve digits, the width of SEQ
        self.requests: dict[str, deque[float]] = {key: deque(maxlen=500_000) for key in self.keys}
        self.pages: dict[str, deque[float]] = {key: deque(maxlen=100_000) for key in self.keys}
        #: (project, sequence number, monotonic time) of every billing answer, in order
        self.served: deque[tuple[str, int, float]] = deque(maxlen=2_000_000)
        self.storm: set[str] = set()  # keys answered 429 for now
        #: False: every answer carries the same figures (a quiet account's steady bill)
        self.moving = True

    def log(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": {k: list(v) for k, v in self.requests.items()},
                "pages": {k: list(v) for k, v in self.pages.items()},
                "served": list(self.served),
            }


class LargeHandler(BaseHTTPRequestHandler):
    server: LargeServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        api = self.server.api
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        with api.lock:
            if "storm" in body:
                api.storm = set(body["storm"])
            if "latency" in body:
                api.latency = float(body["latency"])
        self.send(200, b"{}")

    def do_GET(self) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/__bench__/log":
            self.send(200, json.dumps(api.log()).encode())
            return
        key = self.headers.get("Authorization") or ""
        team = api.keys.get(key)
        now = time.monotonic()
        if team is None:
            self.send(401, b'{"errors": [{"title": "Unauthorized"}]}')
            return
        with api.lock:
            api.requests[key].append(now)
            storm = key in api.storm
        if api.latency:
            time.sleep(api.latency)
        if storm:
            self.send(429, b'{"errors": [{"meta": {"retry_after": 2}}]}', {"Retry-After": "2"})
            return
        if url.path == "/projects":
            with api.lock:
                api.pages[key].append(now)
            size = int((query.get("page[size]") or ["100"])[0])
            number = int((query.get("page[number]") or ["1"])[0])
            ids = api.ids[team][(number - 1) * size : number * size]
            page = [
                {
                    "id": pid,
                    "type": "projects",
                    "attributes": {
                        "name": pid,
                        "slug": pid.replace("_", "-"),
                        "team": {"slug": f"team-{team}", "currency": {"code": "USD"}},
                    },
                }
                for pid in ids
            ]
            self.send(200, json.dumps({"data": page, "meta": {}}).encode())
            return
        project = (query.get("filter[project]") or [""])[0]
        body = api.bodies.get(project)
        if body is None:
            self.send(404, b'{"errors": [{"title": "Not Found"}]}')
            return
        with api.lock:
            api.seq += 1
            seq = api.seq if api.moving else 10**11
            api.served.append((project, seq, time.monotonic()))
        self.send(200, body.replace(SEQ, str(seq).encode()))

    def send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.api+json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class LargeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: LargeApi) -> None:
        super().__init__(("127.0.0.1", 0), LargeHandler)
        self.api = api


@contextmanager
def large_api(
    projects: int, products: int, teams: int = 1, moving: bool = True
) -> Iterator[tuple[str, LargeApi]]:
    """A `LargeApi` served on a free local port (keys `bench-0`, ...): its URL and state.
    `moving=False`: the figures never change (a quiet account, for alerts to settle)."""
    state = LargeApi(projects, products, 0.0, teams)
    state.moving = moving
    server = LargeServer(state)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
