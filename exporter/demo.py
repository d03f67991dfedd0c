"""The simulated Latitude.sh API behind `--demo`, over HTTP on 127.0.0.1.

`respond` answers one request as the API would, from the accounts of `simulation.py`
(one account per API key): `GET /billing/usage` and `GET /projects`, JSON:API errors
for the rest. It is the public seam: `DemoApi` serves it, and so does any other server
that wants the demo's answers (the tests' fault-injecting fake wraps it). Run on its
own with `python -m exporter.demo`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from exporter.models import PROJECTS_ENDPOINT, USAGE_ENDPOINT
from exporter.simulation import (
    DEFAULT_SPEED,
    DEMO_TOKENS,
    DemoAccount,
    accounts_of,
    default_accounts,
)

log = logging.getLogger(__name__)

__all__ = ["DEMO_TOKENS", "Answer", "DemoApi", "error_body", "main", "respond"]


def error_body(status: int, title: str, detail: str, meta: dict[str, Any] | None = None) -> str:
    return json.dumps(
        {
            "errors": [
                {
                    "status": str(status),
                    "code": title.lower().replace(" ", "_"),
                    "title": title,
                    "detail": detail,
                    "meta": meta or {},
                }
            ]
        }
    )


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/vnd.api+json"


def respond(
    accounts: Sequence[DemoAccount],
    path: str,
    query: Mapping[str, Sequence[str]],
    key: str | None,
) -> Answer:
    """The answer the API would give to `GET path?query` with API key `key`."""
    if path not in (USAGE_ENDPOINT, PROJECTS_ENDPOINT):
        return Answer(404, error_body(404, "Not Found", "no such route"))
    account = account_for(accounts, key)
    if account is None:
        return Answer(401, error_body(401, "Unauthorized", "invalid or missing API key"))
    if path == PROJECTS_ENDPOINT:
        return _projects_page(account, query)
    project = account.projects.get((query.get("filter[project]") or [""])[0])
    if project is None:
        return Answer(404, error_body(404, "Not Found", "Specified Record Not Found"))
    plans = query.get("filter[plan]")
    plan = plans[0] if plans else None
    wanted = tuple(query.get("filter[products][]", []))
    return Answer(200, json.dumps(account.usage(project, plan=plan, products=wanted)))


def account_for(accounts: Sequence[DemoAccount], key: str | None) -> DemoAccount | None:
    """The account a key opens: one whose `token` it is, or one without a token (which
    answers any key; there should then be only one)."""
    for account in accounts:
        if account.token is None or account.token == key:
            return account
    return None


def _projects_page(account: DemoAccount, query: Mapping[str, Sequence[str]]) -> Answer:
    try:
        size = int((query.get("page[size]") or ["20"])[0])
        number = int((query.get("page[number]") or ["1"])[0])
    except ValueError:
        return Answer(400, error_body(400, "Bad Request", "page must be a number"))
    items = account.project_resources()
    page = items[(number - 1) * size : number * size]
    return Answer(200, json.dumps({"data": page, "meta": {}}))


class _Handler(BaseHTTPRequestHandler):
    """`respond`, over HTTP/1.1."""

    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "latitude-demo/1"
    # Headers and body go out in two writes on a kept-alive connection: with Nagle's
    # algorithm the second waits for the client's delayed ACK, ~40 ms a request.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("demo api request", extra={"request": format % args})

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        answer = respond(
            self.server.accounts, url.path, parse_qs(url.query), self.headers.get("Authorization")
        )
        send(self, answer)


def send(handler: BaseHTTPRequestHandler, answer: Answer) -> None:
    """Write `answer` as the API would: JSON:API content type, a length, its headers."""
    data = answer.body.encode()
    handler.send_response(answer.status)
    handler.send_header("Content-Type", answer.content_type)
    handler.send_header("Content-Length", str(len(data)))
    for name, value in answer.headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    try:
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        handler.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], accounts: list[DemoAccount]) -> None:
        super().__init__(address, _Handler)
        self.accounts = accounts

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback for a client that hung up mid-answer.
        log.debug("demo api connection failed", exc_info=True)


class BackgroundServer:
    """An HTTP server answering in a daemon thread of its own, for as long as a `with`
    block lasts (`start`, `stop`): the demo's API, and any server built on `respond`.

    Parameters:
        server: the server, bound (port 0: a free one, read back from `url`).
        name: its thread's name.
    """

    def __init__(self, server: ThreadingHTTPServer, name: str) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=name, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DemoApi(BackgroundServer):
    """`respond` served for one or more `DemoAccount`s, on a free local port.

    Parameters:
        accounts: the simulated accounts (default: `default_accounts()`).
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
        super().__init__(_Server((host, port), self.accounts), "demo-api")


def main(argv: list[str] | None = None) -> int:
    """Run the simulated API on its own (for experiments and the compose stack)."""
    parser = argparse.ArgumentParser(
        prog="python -m exporter.demo",
        description="A simulated Latitude.sh API: two teams whose usage grows as you watch. "
        f"Their API keys: {' and '.join(DEMO_TOKENS)}. Prints its URL, then serves until "
        "SIGTERM or Ctrl-C.",
        epilog="Then, in another shell: LATITUDESH_EXPORTER_API__BASE_URL=URL "
        f"LATITUDESH_AUTH_TOKEN={DEMO_TOKENS[0]} latitudesh-exporter --once",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument(
        "--speed",
        type=float,
        default=DEFAULT_SPEED,
        help=f"simulated seconds per real second (default {DEFAULT_SPEED:g}: a real "
        "minute is a simulated hour)",
    )
    parser.add_argument(
        "--shape",
        choices=("new", "old"),
        default="new",
        help="answer in the newest billing_usage shape, or the older one live accounts "
        "may still return",
    )
    args = parser.parse_args(argv)
    api = DemoApi(
        default_accounts(speed=args.speed, shape=args.shape), host=args.host, port=args.port
    ).start()
    print(api.url, flush=True)
    print(
        f"keys: {', '.join(DEMO_TOKENS)}; try: LATITUDESH_EXPORTER_API__BASE_URL={api.url} "
        f"LATITUDESH_AUTH_TOKEN={DEMO_TOKENS[0]} latitudesh-exporter --once",
        file=sys.stderr,
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    api.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
