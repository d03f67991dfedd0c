"""The HTTP endpoints: /metrics, /healthz, /readyz and a landing page; TLS and basic auth.

Gets callables (readiness, project status) and two registries from the CLI; imports
neither the poller nor the client, so a scrape cannot reach the API even by accident.
`start_http_server` from prometheus_client answers every path with metrics and can't do
basic auth, hence this small WSGI app. The server is bounded: a cap on connections, a
deadline for a client to send its request (a slowloris holds one thread for seconds,
not forever), the stdlib's limits on request line and header size and count.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import hashlib
import hmac
import html
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import bcrypt
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
    """Renders /metrics from parts, each re-rendered only when its version changes.

    At large accounts rendering is the whole cost of a scrape (hundreds of thousands of
    series), yet the billing data only changes when a poll lands, and the exporter's
    own counters only when a request is made. So each part's bytes, and their gzip, are
    cached per version; a part without a version (process_*) is rendered every time.
    Concatenated gzip members form one valid gzip stream (RFC 1952 §2.2), which every
    Prometheus reads.
    """

    #: zlib level 1: a tenth of the size for half the CPU of the default level 6.
    GZIP_LEVEL = 1

    def __init__(
        self, parts: Sequence[tuple[CollectorRegistry, Callable[[], int] | None]]
    ) -> None:
        self._parts = list(parts)
        self._lock = threading.Lock()
        # (part, content type, gzipped) → (version, bytes); the gzip is made from the
        # cached text, so a data change costs one render whatever the clients ask for.
        self._cache: dict[tuple[int, str, bool], tuple[int, bytes]] = {}

    def render(self, accept: str, *, compress: bool) -> tuple[list[bytes], str]:
        """The exposition as chunks, one per part: joining them would copy tens of MB
        per scrape at large accounts (it was 40 % of a scrape's CPU), and WSGI sends
        an iterable of chunks as it is."""
        encoder, content_type = choose_encoder(accept)
        chunks = []
        last = len(self._parts) - 1
        for index, (registry, version) in enumerate(self._parts):
            if version is None:
                body = self._encode(encoder, registry, last=index == last)
                chunks.append(gzip.compress(body, self.GZIP_LEVEL) if compress else body)
                continue
            current = version()
            with self._lock:
                text = self._cached((index, content_type, False), current, partial(
                    self._encode, encoder, registry, last=index == last))
                if compress:
                    text = self._cached((index, content_type, True), current,
                                        partial(gzip.compress, text, self.GZIP_LEVEL))
            chunks.append(text)
        return chunks, content_type

    def _cached(self, key: tuple[int, str, bool], version: int,
                make: Callable[[], bytes]) -> bytes:
        hit = self._cache.get(key)
        if hit is None or hit[0] != version:
            hit = (version, make())
            self._cache[key] = hit
        return hit[1]

    @staticmethod
    def _encode(encoder: Callable[[CollectorRegistry], bytes], registry: CollectorRegistry,
                *, last: bool) -> bytes:
        body = encoder(registry)
        if not last:  # OpenMetrics allows one "# EOF", at the very end
            body = body.removesuffix(_OPENMETRICS_EOF)
        return body


_TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                 "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "RequestClientCert": ssl.CERT_OPTIONAL,
                "RequireAnyClientCert": ssl.CERT_REQUIRED,
                "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}


def tls_context(
    cert_file: str, key_file: str, *, client_ca_file: str | None = None,
    client_auth_type: str = "NoClientCert", min_version: str = "TLS12",
    max_version: str | None = None,
) -> ssl.SSLContext:
    """A server context as exporter-toolkit's tls_server_config describes it.

    Python verifies any client certificate it asks for against the CA file, so
    `RequestClientCert` and `RequireAnyClientCert` need `client_ca_file` here too.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _TLS_VERSIONS[min_version]
    if max_version is not None:
        context.maximum_version = _TLS_VERSIONS[max_version]
    context.load_cert_chain(cert_file, key_file)
    context.verify_mode = _CLIENT_AUTH[client_auth_type]
    if client_ca_file is not None:
        context.load_verify_locations(client_ca_file)
    return context


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes, in constant time per user.

    An unknown user is checked against a dummy hash so that response time does not tell
    which user names exist. bcrypt is slow on purpose (~50 ms at cost 10); a scrape every
    15 s would pay that every time, so a verified pair is remembered by its SHA-256 keyed
    with a per-process secret, never in clear.
    """

    _DUMMY = bcrypt.hashpw(b"latitudesh-exporter", bcrypt.gensalt(rounds=10))

    def __init__(self, users: dict[str, bytes]) -> None:
        self._users = users
        self._key = hashlib.sha256(str(id(self)).encode() + bcrypt.gensalt()).digest()
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()

    def check(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(
                ":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        digest = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        with self._lock:
            if digest in self._verified:
                return True
        hashed = self._users.get(user)
        ok = bcrypt.checkpw(password.encode(), hashed or self._DUMMY) and hashed is not None
        if ok:
            with self._lock:
                if len(self._verified) > 64:
                    self._verified.clear()
                self._verified.add(digest)
        return ok


class MetricsApp:
    """The WSGI application."""

    #: Probes must work without credentials; they reveal nothing but "ok"/"ready".
    UNAUTHENTICATED = frozenset({"/healthz", "/readyz"})

    def __init__(
        self,
        exposition: Exposition,
        *,
        ready: Callable[[], bool],
        projects: Callable[[], Sequence[ProjectRow]],
        telemetry_path: str = "/metrics",
        auth: BasicAuth | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._exposition = exposition
        self._ready = ready
        self._projects = projects
        self._telemetry_path = telemetry_path
        self._auth = auth
        self._headers = list(headers)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self._headers:
            start_response = self._with_headers(start_response)
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
        if (self._auth is not None and path not in self.UNAUTHENTICATED
                and not self._auth.check(environ.get("HTTP_AUTHORIZATION"))):
            return _reply(start_response, "401 Unauthorized", b"unauthorized\n", head=head,
                          extra=[("WWW-Authenticate",
                                  'Basic realm="latitudesh-exporter", charset="UTF-8"')])
        if path == self._telemetry_path:
            compress = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")
            chunks, content_type = self._exposition.render(
                environ.get("HTTP_ACCEPT", ""), compress=compress
            )
            extra = [("Content-Encoding", "gzip")] if compress else []
            return _reply(start_response, "200 OK", chunks, content_type=content_type,
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

    def _with_headers(self, start_response: StartResponse) -> StartResponse:
        def wrapped(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            return start_response(status, [*headers, *self._headers], *args)
        return wrapped

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
    body: bytes | list[bytes],
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: Sequence[tuple[str, str]] = (),
    head: bool = False,
) -> list[bytes]:
    chunks = body if isinstance(body, list) else [body]
    length = sum(len(chunk) for chunk in chunks)
    headers = [("Content-Type", content_type), ("Content-Length", str(length)), *extra]
    start_response(status, headers)
    return [] if head else chunks


class _BoundedHandler(WSGIRequestHandler):
    """Logs requests at debug (scrapes every 15 s would drown everything else), and
    gives a client `header_deadline` seconds for the TLS handshake and its request."""

    #: Seconds one read may block.
    timeout = 10
    header_deadline = 10.0

    def setup(self) -> None:
        self._watchdog = threading.Timer(self.header_deadline, self._too_slow)
        self._watchdog.daemon = True
        self._watchdog.start()
        if isinstance(self.request, ssl.SSLSocket):
            # Before super().setup() opens rfile/wfile on the socket: when setup()
            # raises, finish() never runs, and files left open would hold the socket's
            # descriptor until the garbage collector found them (plain HTTP on the TLS
            # port, scanners and old clients would each keep one).
            try:
                self.request.settimeout(self.timeout)
                self.request.do_handshake()
            except OSError:  # SSLError and timeouts too
                self._watchdog.cancel()
                raise
        super().setup()

    def _too_slow(self) -> None:
        log.debug("closing a client too slow to send its request",
                  extra={"client": self.client_address[0]})
        with contextlib.suppress(OSError):
            self.request.shutdown(socket.SHUT_RDWR)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self._watchdog.cancel()  # the request is in; answering may take its time
        return ok

    def finish(self) -> None:
        self._watchdog.cancel()
        with contextlib.suppress(OSError):  # the client may already have hung up
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http request", extra={"client": self.client_address[0],
                                         "request": format % args})


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    ssl_context: ssl.SSLContext | None = None
    #: Connections served at once; more are closed at once rather than queued forever.
    max_connections = 64

    def server_activate(self) -> None:
        super().server_activate()
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.ssl_context is not None:
            # The handshake happens in the connection's own thread (see _BoundedHandler),
            # so a client that stalls it cannot block accept().
            sock = self.ssl_context.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("too many connections; closing one", extra={"limit":
                                                                     self.max_connections})
            self.shutdown_request(request)
            return
        started = False
        try:
            super().process_request(request, client_address)
            started = True
        finally:
            if not started:  # the thread that would release the slot never ran
                self._slots.release()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints tracebacks to stderr; a failed handshake or a client that
        # hung up is routine for a server on a network.
        log.debug("connection failed", exc_info=True, extra={"client": client_address[0]})


class HttpServer:
    """The WSGI app on a threaded server, started in a background thread."""

    def __init__(self, app: MetricsApp, host: str, port: int, *,
                 ssl_context: ssl.SSLContext | None = None, request_timeout: float = 10.0,
                 max_connections: int = 64) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (_ThreadingServer,),
                            {"address_family": family, "ssl_context": ssl_context,
                             "max_connections": max_connections})
        handler_class = type("Handler", (_BoundedHandler,),
                             {"header_deadline": request_timeout, "timeout": request_timeout})
        self._server: WSGIServer = make_server(host, port, app, server_class=server_class,
                                               handler_class=handler_class)
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

