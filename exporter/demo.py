"""A simulated Latitude.sh API, for `--demo` and as the tests' fake over real sockets.

It serves `GET /billing/usage` and `GET /projects` on 127.0.0.1 with a small team whose
usage grows with (accelerated) time: hourly metered servers, per-minute VMs, licensed
items, object storage in GB, a percent and an amount discount, one project without a
threshold, one close to it, one running out of credit. Answers validate against the
billing_usage schema of the newest official spec; `shape="old"` answers as the older
one that live accounts may still return.

Faults can be injected per project (or for every request) from Python, or over HTTP
with `POST /__demo__/faults` when the API runs in another process (`python -m
exporter.demo`): status codes with JSON:API error bodies, 429 waits in the body and/or
the `Retry-After` header, slow answers, connection resets, truncated and non-JSON
bodies, schema drift and huge payloads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

HOUR = 3600.0
DAY = 24 * HOUR
PERIOD = 30 * DAY
#: The demo starts this far into its billing period, so there is spend to look at.
START_ELAPSED = 12 * DAY
#: Simulated seconds per real second: one real minute is a simulated hour.
DEFAULT_SPEED = 60.0


@dataclass(frozen=True, slots=True)
class DemoServer:
    id: str
    hostname: str
    plan: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DemoProduct:
    id: str
    name: str
    resource: str
    unit: str  # hour, minute, quantity, GB
    usage_type: str  # metered, licensed
    unit_price: float  # cents
    #: metered: units used per simulated hour, counted in hours (a server running all
    #: the time is 1; a `minute` unit converts it); licensed: the fixed quantity
    rate: float
    servers: tuple[DemoServer, ...] = ()
    bucket: tuple[str, str, str | None] | None = None
    billing_unit_divisor: int | None = None
    discounts: tuple[tuple[str, str, float], ...] = ()


@dataclass(slots=True)
class DemoProject:
    id: str
    slug: str
    name: str
    threshold: int | None
    credit: int
    products: list[DemoProduct]
    boost: float = 1.0


def default_projects() -> list[DemoProject]:
    web1 = DemoServer("sv_web01", "web-01", "c2-small-x86", ("web", "prod"))
    web2 = DemoServer("sv_web02", "web-02", "c2-small-x86", ("web", "prod"))
    gpu = DemoServer("sv_gpu01", "trainer-01", "g3-h100-large", ("ml",))
    return [
        DemoProject("proj_demo_web", "web-platform", "Web Platform", threshold=200_000,
                    credit=30_000, products=[
            DemoProduct("si_bm_web", "c2.small.x86", "bare_metal", "hour", "metered",
                        unit_price=30, rate=2, servers=(web1, web2),
                        discounts=(("Monthly Discount - Accelerate", "percent", 10.0),)),
            DemoProduct("si_vm_ci", "vm.tiny", "virtual_machine", "minute", "metered",
                        unit_price=0.1, rate=1,
                        servers=(DemoServer("vm_ci01", "ci-runner", "vm-tiny"),)),
            DemoProduct("si_lic_win", "Windows Server license", "license", "quantity",
                        "licensed", unit_price=2500, rate=2),
            DemoProduct("si_eip", "Elastic IP", "elastic_ip", "hour", "metered",
                        unit_price=0.5, rate=1),
        ]),
        DemoProject("proj_demo_gpu", "ml-training", "ML Training", threshold=130_000,
                    credit=500_000, products=[
            DemoProduct("si_gpu", "g3.h100.large", "bare_metal", "hour", "metered",
                        unit_price=450, rate=1, servers=(gpu,),
                        discounts=(("Startup program credit", "amount", 5000.0),)),
        ]),
        DemoProject("proj_demo_data", "data-lake", "Data Lake", threshold=None,
                    credit=80_000, products=[
            DemoProduct("si_obj", "Object storage", "object_storage", "GB", "metered",
                        unit_price=2, rate=5,
                        bucket=("bkt_lake", "lake-raw", "SAO")),
            DemoProduct("si_api_calls", "Storage API calls", "object_storage", "quantity",
                        "metered", unit_price=1, rate=40_000, billing_unit_divisor=1000,
                        bucket=("bkt_lake", "lake-raw", "SAO")),
        ]),
        DemoProject("proj_demo_dev", "dev-sandbox", "Dev Sandbox", threshold=50_000,
                    credit=12_000, products=[
            DemoProduct("si_vm_dev", "vm.small", "virtual_machine", "hour", "metered",
                        unit_price=4, rate=3,
                        servers=(DemoServer("vm_dev01", "dev-01", "vm-small"),
                                 DemoServer("vm_dev02", "dev-02", "vm-small"),
                                 DemoServer("vm_dev03", "dev-03", "vm-small"))),
        ]),
    ]


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted misbehaviour.

    kind: `status` (answer `status` with a JSON:API error body, or `body` if given),
    `rate_limited` (429; `retry_after` in the body and/or header as `where` says:
    body, header, both, neither), `reset` (close without answering), `delay` (answer
    normally after `delay` seconds), `truncated`, `not_json`, `empty_data`,
    `data_list`, `wrong_project`, `strings` (numbers as strings), `drift` (unknown enum
    values and fields), `huge` (`products` extra products), `old_shape`, `new_shape`.
    """

    kind: str
    status: int = 500
    body: str | None = None
    retry_after: float | None = None
    where: str = "body"
    delay: float = 0.0
    products: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(slots=True)
class _Scripted:
    fault: Fault
    remaining: int | None  # None: until cleared


@dataclass(slots=True)
class RequestRecord:
    at: float
    path: str
    project: str | None
    status: int


class DemoAccount:
    """The simulated team: projects, the clock, and the usage they have run up."""

    def __init__(
        self,
        projects: list[DemoProject] | None = None,
        *,
        speed: float = DEFAULT_SPEED,
        shape: str = "new",
        currency: str = "USD",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.projects = {p.id: p for p in (projects if projects is not None
                                           else default_projects())}
        self.speed = speed
        self.shape = shape
        self.currency = currency
        self._clock = clock
        self._started = clock()

    def period(self) -> tuple[float, float, float]:
        """(period start, period end, simulated now) as Unix times."""
        elapsed = START_ELAPSED + (self._clock() - self._started) * self.speed
        into = elapsed % PERIOD
        sim_now = self._started + elapsed
        start = sim_now - into
        return start, start + PERIOD, sim_now

    def usage(self, project: DemoProject, shape: str | None = None) -> dict[str, Any]:
        shape = shape or self.shape
        start, end, now = self.period()
        hours = (now - start) / HOUR
        products = [self._product(p, hours, start, shape, project.boost)
                    for p in project.products]
        price = sum(p["price"] for p in products)
        attributes: dict[str, Any] = {
            "project": {"id": project.id, "slug": project.slug, "name": project.name},
            "period": {"start": _iso(start), "end": _iso(end)},
            "available_credit_balance": math.floor(project.credit - price),
            "price": round(price, 2),
            "threshold": project.threshold,
            "products": products,
        }
        if shape == "new":
            attributes["amount"] = round(price, 2)
        return {"data": {"id": "", "type": "billing_usage", "attributes": attributes},
                "meta": {}}

    @staticmethod
    def _product(
        product: DemoProduct, hours: float, start: float, shape: str, boost: float
    ) -> dict[str, Any]:
        if product.usage_type == "licensed":
            quantity = product.rate
        else:
            quantity = product.rate * hours * (60 if product.unit == "minute" else 1) * boost
            quantity = round(quantity, 3)
        billable = quantity / (product.billing_unit_divisor or 1)
        gross = round(billable * product.unit_price)
        price = float(gross)
        discounts = []
        for description, kind, value in product.discounts:
            price -= gross * value / 100 if kind == "percent" else value
            discounts.append({"description": description, "type": kind, "value": value})
        price = round(max(price, 0.0), 2)
        out: dict[str, Any] = {
            "id": product.id,
            "resource": product.resource,
            "name": product.name,
            "description": product.name,
            "proration": product.usage_type == "metered",
            "discounts": discounts,
            "discountable": bool(discounts),
            "amount_without_discount": gross,
            "start": _iso(start),
            "end": None,
            "unit": product.unit,
            "unit_price": product.unit_price,
            "usage_type": product.usage_type,
            "quantity": quantity,
            "price": price,
        }
        servers = [{"id": s.id, "hostname": s.hostname, "plan": s.plan, "tags": list(s.tags)}
                   for s in product.servers]
        if shape == "new":
            out["amount"] = price
            out["unit_amount"] = product.unit_price
            metadata: dict[str, Any] = {"servers": servers}
            if product.bucket:
                bucket_id, name, location = product.bucket
                metadata["bucket"] = {"id": bucket_id, "name": name, "location": location}
            if product.billing_unit_divisor:
                metadata["billing_unit_divisor"] = product.billing_unit_divisor
            out["metadata"] = metadata
        else:
            if out["unit"] == "GB":
                out["unit"] = "quantity"  # the older enum had no GB
            first = servers[0] if servers else None
            out["metadata"] = {
                "id": first["id"] if first else (product.bucket[0] if product.bucket else None),
                "hostname": first["hostname"] if first else None,
                "plan": first["plan"] if first else None,
                "tags": first["tags"] if first else [],
            }
        return out

    def project_resources(self) -> list[dict[str, Any]]:
        return [{
            "id": p.id,
            "type": "projects",
            "attributes": {
                "name": p.name, "slug": p.slug, "description": None,
                "billing_type": "Hourly", "provisioning_type": "on_demand",
                "team": {"id": "team_demo", "name": "Demo Team", "slug": "demo-team",
                         "currency": {"id": "cur_demo", "code": self.currency,
                                      "name": self.currency, "currency_id": None}},
            },
        } for p in self.projects.values()]


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def error_body(status: int, title: str, detail: str, meta: dict[str, Any] | None = None) -> str:
    return json.dumps({"errors": [{"status": str(status), "code": title.lower()
                                   .replace(" ", "_"), "title": title, "detail": detail,
                                   "meta": meta or {}}]})


_TITLES = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class DemoApi:
    """The HTTP server around a `DemoAccount`, on 127.0.0.1 and a free port."""

    def __init__(
        self,
        account: DemoAccount | None = None,
        *,
        token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.account = account or DemoAccount()
        self.token = token
        self._faults: dict[str, deque[_Scripted]] = {}
        self._lock = threading.Lock()
        #: The latest requests, for tests and benchmarks; bounded so a long demo can't leak.
        self.requests: deque[RequestRecord] = deque(maxlen=200_000)
        #: Requests received, counted before any fault delays or drops them.
        self.arrivals = 0
        handler = type("Handler", (_Handler,), {"api": self})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="demo-api", daemon=True)

    @property
    def url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def start(self) -> DemoApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> DemoApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, fault: Fault, *, project: str | None = None, times: int | None = 1) -> None:
        """Script `fault` for the next `times` requests of `project` (None: any request)."""
        with self._lock:
            self._faults.setdefault(project or "*", deque()).append(_Scripted(fault, times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def request_count(self, path: str | None = None, project: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests
                       if (path is None or r.path == path)
                       and (project is None or r.project == project))

    def _next_fault(self, project: str | None) -> Fault | None:
        with self._lock:
            for key in (project, "*"):
                queue = self._faults.get(key) if key else None
                if not queue:
                    continue
                scripted = queue[0]
                if scripted.remaining is not None:
                    scripted.remaining -= 1
                    if scripted.remaining <= 0:
                        queue.popleft()
                return scripted.fault
        return None

    def _record(self, path: str, project: str | None, status: int) -> None:
        with self._lock:
            self.requests.append(RequestRecord(time.monotonic(), path, project, status))


class _Handler(BaseHTTPRequestHandler):
    api: DemoApi
    protocol_version = "HTTP/1.1"
    server_version = "latitude-demo/1"
    # Headers and body go out in two writes on a kept-alive connection: with Nagle's
    # algorithm the second waits for the client's delayed ACK, ~40 ms a request.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("demo api request", extra={"request": format % args})

    def do_GET(self) -> None:
        with self.api._lock:
            self.api.arrivals += 1
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/__demo__/requests":
            with self.api._lock:
                counts: dict[str, int] = {}
                for record in self.api.requests:
                    key = f"{record.path} {record.project or ''}".strip()
                    counts[key] = counts.get(key, 0) + 1
                times = [record.at for record in self.api.requests]
            self._send(200, json.dumps({"counts": counts, "times": times}))
            return
        project = query.get("filter[project]", [""])[0] or None
        if url.path not in ("/billing/usage", "/projects"):
            self._answer(url.path, project, 404, error_body(404, "Not Found", "no such route"))
            return
        if self.api.token is not None and self.headers.get("Authorization") != self.api.token:
            self._answer(url.path, project, 401,
                         error_body(401, "Unauthorized", "invalid or missing API key"))
            return
        fault = self._fault_for(url.path, project)
        if fault is not None and self._misbehave(fault, url.path, project):
            return
        if url.path == "/projects":
            self._projects(query)
            return
        self._usage(project, fault)

    def _fault_for(self, path: str, project: str | None) -> Fault | None:
        return self.api._next_fault(project if path == "/billing/usage" else "/projects")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        try:
            data = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._send(400, '{"error": "not JSON"}')
            return
        if url.path == "/__demo__/faults":
            if data.get("clear"):
                self.api.clear_faults()
            if "fault" in data:
                self.api.inject(Fault.from_json(data["fault"]), project=data.get("project"),
                                times=data.get("times", 1))
            self._send(200, "{}")
        elif url.path == "/__demo__/boost":
            target = self.api.account.projects.get(data.get("project", ""))
            if target is None:
                self._send(404, '{"error": "unknown project"}')
                return
            target.boost = float(data.get("factor", 1.0))
            self._send(200, "{}")
        else:
            self._send(404, '{"error": "not found"}')

    def _projects(self, query: dict[str, list[str]]) -> None:
        size = int((query.get("page[size]") or ["20"])[0])
        number = int((query.get("page[number]") or ["1"])[0])
        items = self.api.account.project_resources()
        page = items[(number - 1) * size: number * size]
        self._answer("/projects", None, 200, json.dumps({"data": page, "meta": {}}))

    def _usage(self, project_id: str | None, fault: Fault | None) -> None:
        account = self.api.account
        project = account.projects.get(project_id or "")
        if project is None:
            self._answer("/billing/usage", project_id, 404,
                         error_body(404, "Not Found", "Specified Record Not Found"))
            return
        shape = None
        if fault is not None and fault.kind in ("old_shape", "new_shape"):
            shape = fault.kind.removesuffix("_shape")
        document = account.usage(project, shape)
        if fault is not None:
            document = _distort(document, fault)
        self._answer("/billing/usage", project_id, 200, json.dumps(document))

    def _misbehave(self, fault: Fault, path: str, project: str | None) -> bool:
        """Act out a fault that replaces the answer; False for those that alter it."""
        if fault.delay:
            time.sleep(fault.delay)
        if fault.kind == "status":
            body = fault.body or error_body(fault.status, _TITLES.get(fault.status, "Error"),
                                            "injected fault")
            self._answer(path, project, fault.status, body)
        elif fault.kind == "rate_limited":
            meta = ({"retry_after": fault.retry_after}
                    if fault.where in ("body", "both") and fault.retry_after is not None else {})
            headers = ({"Retry-After": str(fault.retry_after)}
                       if fault.where in ("header", "both") and fault.retry_after is not None
                       else {})
            self._answer(path, project, 429,
                         error_body(429, "Too Many Requests", "rate limit exceeded", meta),
                         headers=headers)
        elif fault.kind == "reset":
            self.api._record(path, project, 0)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close_connection = True
            self.connection.close()
        elif fault.kind == "truncated":
            self.api._record(path, project, 200)
            partial = b'{"data": {"id": "", "type": "billing_usage", "attributes": {"pri'
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.api+json")
            self.send_header("Content-Length", str(len(partial) + 100))
            self.end_headers()
            self.wfile.write(partial)
            self.close_connection = True
        elif fault.kind == "not_json":
            self._answer(path, project, 200, "<html><body>502 Bad Gateway</body></html>",
                         content_type="text/html")
        else:
            return False
        return True

    def _answer(
        self, path: str, project: str | None, status: int, body: str, *,
        headers: dict[str, str] | None = None, content_type: str = "application/vnd.api+json",
    ) -> None:
        self.api._record(path, project, status)
        self._send(status, body, headers, content_type)

    def _send(
        self, status: int, body: str, headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def _distort(document: dict[str, Any], fault: Fault) -> dict[str, Any]:
    attributes = document["data"]["attributes"]
    if fault.kind == "empty_data":
        return {"data": {}, "meta": {}}
    if fault.kind == "data_list":
        return {"data": [document["data"]], "meta": {}}
    if fault.kind == "wrong_project":
        attributes["project"] = {"id": "proj_someone_else", "slug": "other", "name": "Other"}
    elif fault.kind == "strings":
        attributes["price"] = str(attributes["price"])
        attributes["available_credit_balance"] = str(attributes["available_credit_balance"])
        for product in attributes["products"]:
            product["quantity"] = str(product["quantity"])
            product["unit_price"] = str(product["unit_price"])
    elif fault.kind == "drift":
        attributes["brand_new_field"] = {"nested": [1, 2, 3]}
        for product in attributes["products"]:
            product["unit"] = "petaflop"
            product["usage_type"] = "prepaid"
            product["discounts"].append({"description": "Legacy", "type": "fixed", "value": 7})
            product["surprise"] = True
    elif fault.kind == "huge":
        start = attributes["period"]["start"]
        attributes["products"].extend(
            {"id": f"si_huge_{i:06d}", "resource": "bare_metal", "name": f"item {i}",
             "unit": "hour", "usage_type": "metered", "unit_price": 1, "quantity": i % 97,
             "price": float(i % 97), "amount": float(i % 97), "amount_without_discount": i % 97,
             "start": start, "end": None, "discounts": [],
             "metadata": {"servers": [{"id": f"sv_{i}", "hostname": f"host-{i}",
                                       "plan": "c2-small-x86", "tags": []}]}}
            for i in range(fault.products)
        )
    return document


def main(argv: list[str] | None = None) -> int:
    """Run the simulated API on its own (for end-to-end tests and experiments)."""
    parser = argparse.ArgumentParser(prog="python -m exporter.demo", description=__doc__
                                     and __doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--speed", type=float, default=DEFAULT_SPEED)
    parser.add_argument("--shape", choices=("new", "old"), default="new")
    parser.add_argument("--token", default=None)
    args = parser.parse_args(argv)
    api = DemoApi(DemoAccount(speed=args.speed, shape=args.shape), token=args.token,
                  host=args.host, port=args.port).start()
    print(api.url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    api.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
