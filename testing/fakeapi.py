"""A fake Latitude.sh API for the tests and the benchmarks: the demo's answers, plus faults.

`FakeApi` serves `exporter.demo.respond` (the demo's public seam) over real sockets,
with a request log and faults injected per project (or for any request): status codes
with JSON:API error bodies, 429 waits in the body and/or `Retry-After`, slow and
trickling answers, connection resets, truncated, non-JSON and hostile bodies
(compression bombs, millions of tiny products, endless pages, deep nesting,
unencodable strings), schema drift and both response shapes.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from exporter.demo import Answer, BackgroundServer, error_body, respond, send
from exporter.simulation import DemoAccount, accounts_of

TITLES = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted misbehaviour.

    kind: `status` (answer `status` with a JSON:API error body, or `body` if given),
    `rate_limited` (429; `retry_after` in the body and/or header as `where` says:
    body, header, both, neither; `header` overrides the header text), `reset` (close
    without answering), `delay` (answer normally after `delay` seconds), `trickle`
    (send the answer one byte every `delay` seconds), `truncated`, `not_json`,
    `empty_data`, `data_list`, `wrong_project`, `strings` (numbers as strings),
    `drift` (unknown enum values and fields), `huge` (`products` extra products),
    `tiny` (`products` empty objects as products), `redirect` (`status`, default 308,
    to `header`, where `{url}` is the request's own path and query), `old_shape`, `new_shape`,
    `gzip` (`layers` gzip layers of the answer, or of `body`), `body` (answer 200
    with `body` as it is), `pages` (/projects: full pages of new ids forever, or of
    the same ids when `same`), `scale` (every price times `factor`: a spending spree).
    """

    kind: str
    status: int = 500
    body: str | None = None
    retry_after: float | str | None = None
    where: str = "body"
    header: str | None = None
    delay: float = 0.0
    products: int = 0
    layers: int = 1
    same: bool = False
    factor: float = 1.0


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
    key: str | None


class _FaultyHandler(BaseHTTPRequestHandler):
    """The demo's answers over HTTP/1.1, with the fault scripted for each request."""

    server: _FakeServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def fake(self) -> FakeApi:
        return self.server.fake

    def answer(self, path: str, query: dict[str, list[str]]) -> Answer:
        return respond(self.fake.accounts, path, query, self.headers.get("Authorization"))

    def send(self, answer: Answer) -> None:
        send(self, answer)

    def do_GET(self) -> None:
        fake = self.fake
        with fake.lock:
            fake.arrivals += 1
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        project = query.get("filter[project]", [""])[0] or None
        key = self.headers.get("Authorization")
        fault = fake.next_fault(project if url.path == "/billing/usage" else "/projects", key)
        if fault is not None and self._misbehave(fault, url.path, project, query):
            return
        answer = self.answer(url.path, query)
        if fault is not None and answer.status == 200:
            answer = _distort(answer, fault, self.fake, url.path, project, query)
        if fault is not None and fault.kind == "gzip":
            self._send_gzip(answer, fault, url.path, project)
            return
        fake.record(url.path, project, answer.status, key)
        self.send(answer)

    def _send_gzip(self, answer: Answer, fault: Fault, path: str, project: str | None) -> None:
        data = (fault.body or answer.body).encode()
        for _ in range(fault.layers):
            data = gzip.compress(data, 9)
        self.fake.record(path, project, answer.status, self.headers.get("Authorization"))
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Encoding", ", ".join(["gzip"] * fault.layers))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _misbehave(
        self, fault: Fault, path: str, project: str | None, query: dict[str, list[str]]
    ) -> bool:
        """Act out a fault that replaces the answer; False for those that alter it."""
        key = self.headers.get("Authorization")
        if fault.kind == "delay" and fault.delay:
            time.sleep(fault.delay)
            return False
        if fault.kind == "status":
            body = fault.body or error_body(
                fault.status, TITLES.get(fault.status, "Error"), "injected fault"
            )
            self.fake.record(path, project, fault.status, key)
            self.send(Answer(fault.status, body))
        elif fault.kind == "rate_limited":
            meta = (
                {"retry_after": fault.retry_after}
                if fault.where in ("body", "both") and fault.retry_after is not None
                else {}
            )
            headers = {}
            if fault.header is not None:
                headers["Retry-After"] = fault.header
            elif fault.where in ("header", "both") and fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            self.fake.record(path, project, 429, key)
            self.send(
                Answer(
                    429, error_body(429, "Too Many Requests", "rate limit exceeded", meta), headers
                )
            )
        elif fault.kind == "reset":
            self.fake.record(path, project, 0, key)
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            self.close_connection = True
            self.connection.close()
        elif fault.kind == "truncated":
            self.fake.record(path, project, 200, key)
            partial = b'{"data": {"id": "", "type": "billing_usage", "attributes": {"pri'
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.api+json")
            self.send_header("Content-Length", str(len(partial) + 100))
            self.end_headers()
            self.wfile.write(partial)
            self.close_connection = True
        elif fault.kind == "trickle":
            answer = self.answer(path, query)
            data = answer.body.encode()
            self.fake.record(path, project, answer.status, key)
            self.send_response(answer.status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for index in range(len(data)):
                    self.wfile.write(data[index : index + 1])
                    self.wfile.flush()
                    if self.fake.stopping.wait(fault.delay):
                        break
            except OSError:
                pass
            self.close_connection = True
        elif fault.kind == "not_json":
            self.fake.record(path, project, 200, key)
            self.send(
                Answer(200, "<html><body>502 Bad Gateway</body></html>", content_type="text/html")
            )
        elif fault.kind == "redirect":
            status = fault.status if fault.status != 500 else 308
            self.fake.record(path, project, status, key)
            location = (fault.header or "{url}").format(url=self.path)
            self.send(Answer(status, "", {"Location": location}))
        elif fault.kind == "body":
            self.fake.record(path, project, fault.status if fault.status != 500 else 200, key)
            self.send(Answer(fault.status if fault.status != 500 else 200, fault.body or ""))
        else:
            return False
        return True


def _distort(
    answer: Answer,
    fault: Fault,
    fake: FakeApi,
    path: str,
    project: str | None,
    query: dict[str, list[str]],
) -> Answer:
    if fault.kind == "pages" and path == "/projects":
        number = int((query.get("page[number]") or ["1"])[0])
        size = int((query.get("page[size]") or ["100"])[0])
        offset = 0 if fault.same else (number - 1) * size
        return Answer(
            200,
            json.dumps(
                {
                    "data": [
                        {
                            "id": f"proj_page_{offset + i:06d}",
                            "attributes": {"slug": f"p{offset + i}"},
                        }
                        for i in range(size)
                    ]
                }
            ),
        )
    if path != "/billing/usage":
        return answer
    document = json.loads(answer.body)
    if fault.kind in ("old_shape", "new_shape"):
        account = fake.account
        demo_project = account.projects.get(project or "")
        assert demo_project is not None
        document = account.usage(demo_project, fault.kind.removesuffix("_shape"))
        return Answer(200, json.dumps(document))
    attributes = document["data"]["attributes"]
    if fault.kind == "empty_data":
        document = {"data": {}, "meta": {}}
    elif fault.kind == "data_list":
        document = {"data": [document["data"]], "meta": {}}
    elif fault.kind == "wrong_project":
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
            {
                "id": f"si_huge_{i:06d}",
                "resource": "bare_metal",
                "name": f"item {i}",
                "unit": "hour",
                "usage_type": "metered",
                "unit_price": 1,
                "quantity": i % 97,
                "price": float(i % 97),
                "amount": float(i % 97),
                "amount_without_discount": i % 97,
                "start": start,
                "end": None,
                "discounts": [],
                "metadata": {
                    "servers": [
                        {
                            "id": f"sv_{i}",
                            "hostname": f"host-{i}",
                            "plan": "c2-small-x86",
                            "tags": [],
                        }
                    ]
                },
            }
            for i in range(fault.products)
        )
    elif fault.kind == "scale":
        attributes["price"] = round(attributes["price"] * fault.factor, 2)
        for product in attributes["products"]:
            product["price"] = round(product["price"] * fault.factor, 2)
    elif fault.kind == "tiny":
        body = answer.body
        marker = '"products": ['
        cut = body.index(marker) + len(marker)
        return Answer(200, body[:cut] + "{}," * fault.products + body[cut:])
    return Answer(200, json.dumps(document))


class _FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], fake: FakeApi) -> None:
        super().__init__(address, _FaultyHandler)
        self.fake = fake

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-answer: routine here


class FakeApi(BackgroundServer):
    """The demo's accounts over real sockets, with a request log and scripted faults.

    Parameters:
        accounts: the simulated accounts (default: the demo's two teams).
        host, port: where to listen (port 0: a free one, read back from `url`).
    """

    def __init__(
        self,
        accounts: Sequence[DemoAccount] | DemoAccount | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.accounts = accounts_of(accounts)
        self.lock = threading.Lock()
        self._faults: dict[str, deque[_Scripted]] = {}
        #: The latest requests; bounded so that a long run can't leak.
        self.requests: deque[RequestRecord] = deque(maxlen=200_000)
        #: Requests received, counted before any fault delays or drops them.
        self.arrivals = 0
        self.stopping = threading.Event()
        super().__init__(_FakeServer((host, port), self), "fake-api")

    @property
    def account(self) -> DemoAccount:
        """The first account: the only one in most tests."""
        return self.accounts[0]

    @account.setter
    def account(self, account: DemoAccount) -> None:
        """Serve another account from now on (churn tests)."""
        self.accounts[0] = account

    def stop(self) -> None:
        self.stopping.set()  # faults that hold a request let it go first
        super().stop()

    def inject(
        self,
        fault: Fault,
        *,
        project: str | None = None,
        times: int | None = 1,
        key: str | None = None,
    ) -> None:
        """Script `fault` for the next `times` requests of `project` (None: any request;
        "/projects" for discovery), optionally only for requests with API key `key`."""
        with self.lock:
            self._faults.setdefault(f"{key or ''}|{project or '*'}", deque()).append(
                _Scripted(fault, times)
            )

    def pending(self) -> int:
        """Scripted faults not yet served (those scripted until cleared count once)."""
        with self.lock:
            return sum(len(queue) for queue in self._faults.values())

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def next_fault(self, project: str | None, key: str | None) -> Fault | None:
        with self.lock:
            for name in (f"{key or ''}|{project}", f"{key or ''}|*", f"|{project}", "|*"):
                queue = self._faults.get(name)
                if not queue:
                    continue
                scripted = queue[0]
                if scripted.remaining is not None:
                    scripted.remaining -= 1
                    if scripted.remaining <= 0:
                        queue.popleft()
                return scripted.fault
        return None

    def record(self, path: str, project: str | None, status: int, key: str | None) -> None:
        with self.lock:
            self.requests.append(RequestRecord(time.monotonic(), path, project, status, key))

    def request_count(
        self, path: str | None = None, project: str | None = None, key: str | None = None
    ) -> int:
        with self.lock:
            return sum(
                1
                for r in self.requests
                if (path is None or r.path == path)
                and (project is None or r.project == project)
                and (key is None or r.key == key)
            )

    def times(self, path: str | None = None, key: str | None = None) -> list[float]:
        with self.lock:
            return [
                r.at
                for r in self.requests
                if (path is None or r.path == path) and (key is None or r.key == key)
            ]


JSONAPI_ERROR = json.dumps(
    {
        "errors": [
            {
                "status": "422",
                "code": "invalid_filter",
                "title": "Unprocessable",
                "detail": "bad filter",
            }
        ]
    }
)

#: Each fault and the reason a poll hit by it must be counted under (None: it succeeds).
CHAOS: list[tuple[Fault, str | None]] = [
    (Fault("status", status=401), "unauthorized"),
    (Fault("status", status=403), "forbidden"),
    (Fault("status", status=404), "not_found"),
    (Fault("rate_limited", retry_after=0.01, where="body"), "rate_limited"),
    (Fault("rate_limited", retry_after=0.01, where="header"), "rate_limited"),
    (Fault("rate_limited", retry_after=0.01, where="both"), "rate_limited"),
    (Fault("rate_limited", where="neither"), "rate_limited"),
    (Fault("rate_limited", retry_after=86_400, where="both"), "rate_limited"),  # capped
    (Fault("rate_limited", header="Fri, 31 Dec 99999 23:59:59 GMT"), "rate_limited"),
    (Fault("status", status=500), "server_error"),
    (Fault("status", status=502, body="<html>bad gateway</html>"), "server_error"),
    (Fault("status", status=503), "server_error"),
    (Fault("reset"), "network"),
    (Fault("delay", delay=2.5), "timeout"),
    (Fault("trickle", delay=0.2), "timeout"),
    (Fault("truncated"), "network"),
    (Fault("not_json"), "invalid_response"),
    (Fault("status", status=422, body=JSONAPI_ERROR), "invalid_response"),
    (Fault("status", status=200, body=JSONAPI_ERROR), "invalid_response"),
    (Fault("empty_data"), "invalid_response"),
    (Fault("wrong_project"), "invalid_response"),
    (Fault("huge", products=15_000), "invalid_response"),  # over the size cap (4 MiB in tests)
    (Fault("tiny", products=10_001), "invalid_response"),  # over the products cap
    (Fault("body", body="[" * 100_000 + "]" * 100_000), "invalid_response"),
    (Fault("gzip", layers=3), "invalid_response"),
    (Fault("data_list"), None),
    (Fault("strings"), None),
    (Fault("drift"), None),
    (Fault("old_shape"), None),
    (Fault("gzip", layers=2), None),
    (Fault("huge", products=9_000), None),  # folded by the cardinality guard
]


#: Each hostile answer for `proj_demo_web` and what becomes of it: refused, or (just
#: under every cap) read. The hardening tests and the benchmarks share the list; the
#: faults are built on demand (the bomb is 256 MiB before compression).
HOSTILE: dict[str, tuple[Callable[[], Fault], str]] = {
    "gzip bomb, two layers": (
        lambda: Fault("gzip", layers=2, body=" " * (256 * 1024 * 1024)),
        "REFUSED invalid_response",
    ),
    "millions of tiny products": (
        lambda: Fault("tiny", products=3_000_000),
        "REFUSED invalid_response",
    ),
    "millions of tiny values": (
        lambda: Fault(
            "body", body='{"data": {"attributes": {"products": [' + "0," * 3_000_000 + "0]}}}"
        ),
        "REFUSED invalid_response",
    ),
    "nesting 100,000 deep": (
        lambda: Fault("body", body="[" * 100_000 + "]" * 100_000),
        "REFUSED invalid_response",
    ),
    "10,000 products, the cap": (lambda: Fault("huge", products=9_996), "READ"),
    "10,001 products": (lambda: Fault("huge", products=9_997), "REFUSED invalid_response"),
}


def probe_script(
    url: str, token: str, *, project: str = "proj_demo_web", timeout: float = 30
) -> str:
    """Python code that asks `url` for one project's usage once and prints what became of
    it (READ or REFUSED reason), its peak RSS in MiB and the seconds it took: run in a
    child, under a memory limit, so that a blow-up can't take the caller down."""
    return f"""
import time
from pathlib import Path
from pydantic import SecretStr
from exporter import errors
from exporter.client import LatitudeClient
from exporter.ratelimit import RequestBudget
from exporter.config import ApiSettings
client = LatitudeClient(token=lambda: SecretStr({token!r}), budget=RequestBudget(1e6),
                        api=ApiSettings(base_url={url!r}, max_retries=0,
                                        timeout_seconds={timeout!r}))
started = time.monotonic()
try:
    client.billing_usage({project!r})
    print("READ yes")
except errors.LatitudeError as exc:
    print("REFUSED", exc.reason)
status = Path("/proc/self/status").read_text()  # ru_maxrss counts the forking parent
print("PEAK", int(status.split("VmHWM:")[1].split()[0]) // 1024)
print("SECONDS", round(time.monotonic() - started, 2))
"""
