"""The HTTP endpoints: /metrics, /healthz, /readyz and a landing page.

Gets callables (readiness, project status) and two registries from the CLI; imports
neither the poller nor the client, so a scrape cannot reach the API even by accident.
`start_http_server` from prometheus_client answers every path with metrics and can't do
basic auth, hence this small WSGI app.
"""

from __future__ import annotations

import gzip
import html
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter import __version__

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

_OPENMETRICS_EOF = b"# EOF\n"


@dataclass(frozen=True, slots=True)
class ProjectRow:
    """What the landing page shows of one project."""

    project_id: str
    project_slug: str
    up: bool
    polled: bool
    last_success: float | None
    last_error: str | None


class Exposition:
    """Renders /metrics: the billing part once per data change, the rest every scrape.

    At large accounts rendering is the whole cost of a scrape (hundreds of thousands of
    series), yet the billing data only changes when a poll lands. So its bytes, and their
    gzip, are cached per `data_version`; the small, live part (up, counters, process_*)
    is rendered fresh and appended. Concatenated gzip members form one valid gzip stream
    (RFC 1952 §2.2), which every Prometheus reads.
    """

    def __init__(
        self, cached: CollectorRegistry, live: CollectorRegistry, version: Callable[[], int]
    ) -> None:
        self._cached = cached
        self._live = live
        self._version = version
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, bool], tuple[int, bytes]] = {}

    def render(self, accept: str, *, compress: bool) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        head = self._cached_part(encoder, content_type, compress=compress)
        tail = encoder(self._live)
        if compress:
            tail = gzip.compress(tail, compresslevel=6)
        return head + tail, content_type

    def _cached_part(
        self, encoder: Callable[[CollectorRegistry], bytes], content_type: str, *, compress: bool
    ) -> bytes:
        version = self._version()
        key = (content_type, compress)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == version:
                return hit[1]
            body = encoder(self._cached).removesuffix(_OPENMETRICS_EOF)
            if compress:
                body = gzip.compress(body, compresslevel=6)
            self._cache[key] = (version, body)
            return body


class MetricsApp:
    """The WSGI application."""

    def __init__(
        self,
        exposition: Exposition,
        *,
        ready: Callable[[], bool],
        projects: Callable[[], Sequence[ProjectRow]],
        telemetry_path: str = "/metrics",
    ) -> None:
        self._exposition = exposition
        self._ready = ready
        self._projects = projects
        self._telemetry_path = telemetry_path

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        # The other of the two broad catches: one bad request must never stop the server.
        try:
            return self._dispatch(environ, start_response)
        except Exception:
            log.exception("request failed", extra={"path": environ.get("PATH_INFO", "")})
            return _reply(start_response, "500 Internal Server Error", b"internal error\n")

    def _dispatch(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        if method not in ("GET", "HEAD"):
            return _reply(start_response, "405 Method Not Allowed", b"only GET and HEAD\n",
                          extra=[("Allow", "GET, HEAD")], head=False)
        head = method == "HEAD"
        if path == self._telemetry_path:
            compress = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")
            body, content_type = self._exposition.render(
                environ.get("HTTP_ACCEPT", ""), compress=compress
            )
            extra = [("Content-Encoding", "gzip")] if compress else []
            return _reply(start_response, "200 OK", body, content_type=content_type,
                          extra=[*extra, ("Vary", "Accept, Accept-Encoding")], head=head)
        if path == "/healthz":
            return _reply(start_response, "200 OK", b"ok\n", head=head)
        if path == "/readyz":
            if self._ready():
                return _reply(start_response, "200 OK", b"ready\n", head=head)
            return _reply(start_response, "503 Service Unavailable",
                          b"not ready: some projects have not been polled yet\n", head=head)
        if path == "/":
            return _reply(start_response, "200 OK", self._landing(),
                          content_type="text/html; charset=utf-8", head=head)
        return _reply(start_response, "404 Not Found", b"not found\n", head=head)

    def _landing(self) -> bytes:
        rows = []
        for p in self._projects():
            state = "up" if p.up else ("down" if p.polled else "pending")
            seen = (datetime.fromtimestamp(p.last_success, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                    if p.last_success is not None else "never")
            rows.append(
                f"<tr><td>{html.escape(p.project_id)}</td><td>{html.escape(p.project_slug)}</td>"
                f"<td class={state}>{state}</td><td>{seen}</td>"
                f"<td>{html.escape(p.last_error or '')}</td></tr>"
            )
        path = html.escape(self._telemetry_path)
        page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Latitude.sh exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}
.up{{color:#1a7f37}}.down{{color:#cf222e}}.pending{{color:#9a6700}}</style></head>
<body><h1>Latitude.sh exporter</h1><p>version {html.escape(__version__)}</p>
<ul><li><a href="{path}">{path}</a></li><li><a href="/healthz">/healthz</a></li>
<li><a href="/readyz">/readyz</a></li></ul>
<table><tr><th>project</th><th>slug</th><th>last poll</th><th>last success</th>
<th>last error</th></tr>
{"".join(rows) or '<tr><td colspan=5>no projects yet</td></tr>'}
</table></body></html>
"""
        return page.encode()


def _reply(
    start_response: StartResponse,
    status: str,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: Sequence[tuple[str, str]] = (),
    head: bool = False,
) -> list[bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra]
    start_response(status, headers)
    return [] if head else [body]


class _QuietHandler(WSGIRequestHandler):
    """Logs requests at debug (scrapes every 15 s would drown everything else)."""

    #: Seconds a client may take to send its request: a slow client can't hold a thread.
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http request", extra={"client": self.client_address[0],
                                         "request": format % args})


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class HttpServer:
    """The WSGI app on a threaded server, started in a background thread."""

    def __init__(self, app: MetricsApp, host: str, port: int) -> None:
        server_class = _ThreadingServer
        if ":" in host:

            class _V6(_ThreadingServer):
                address_family = socket.AF_INET6

            server_class = _V6
        self._server = make_server(host, port, app, server_class=server_class,
                                   handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

