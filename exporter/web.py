"""The HTTP application: routing, basic auth, /metrics, /healthz, /readyz, the status page.

Transport-free: `WebApp.handle(Request) -> Response` is called by the listening server
in a worker thread, so that a slow render or a bcrypt check never stalls the
connections the server holds. It reads the store's view and the exposition cache only;
it imports neither the poller nor the client, so a request cannot reach the API even
by accident.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import bcrypt

from exporter import __version__, statuspage
from exporter.exposition import Exposition
from exporter.snapshot import StoreView
from exporter.webconfig import WebSettings

log = logging.getLogger(__name__)

#: bcrypt reads at most 72 bytes of a password; exporter-toolkit refuses longer ones.
MAX_PASSWORD_BYTES = 72
#: Sent with every answer unless the web config's `http_server_config.headers` sets the
#: same header: the status page needs no script, frame or foreign resource, and no
#: answer should be sniffed into another type.
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
#: Clients (addresses or users) whose rate-limit buckets are remembered at once.
MAX_RATE_CLIENTS = 4096


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    #: Header names in lower case.
    headers: Mapping[str, str] = field(default_factory=dict)
    query: str = ""
    #: The client's address, for its own rate-limit bucket.
    client: str = ""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    #: Bytes, or chunks produced as they are sent (/metrics is produced so).
    body: Iterable[bytes]
    length: int
    #: Producing the body is CPU work (plain text inflated): not on the event loop.
    costly: bool = False

    @property
    def reason(self) -> str:
        try:
            return http.HTTPStatus(self.status).phrase
        except ValueError:
            return ""


def reply(
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    return Response(status, [("Content-Type", content_type), *headers], (body,), len(body))


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes in the same time whoever asks.

    Every check runs bcrypt once per distinct cost among the configured hashes (the
    user's own hash at its cost, a dummy at the others; an unknown user gets dummies
    at every cost), so neither a user name's existence nor its hash's cost shows in
    the response time. Passwords over 72 bytes fail after the same work. bcrypt is
    slow on purpose; a scrape every 15 s would pay that every time, so a verified pair
    is remembered by its HMAC under a per-process key, never in clear.
    """

    _CACHE = 64

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = {name: (hashed, _cost(hashed)) for name, hashed in users.items()}
        costs = sorted({cost for _, cost in self._users.values()})
        self._dummies = {
            cost: bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(rounds=cost)) for cost in costs
        }
        self._key = os.urandom(32)
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()

    def verified_user(self, header: str | None) -> str | None:
        """The user of credentials already verified (no bcrypt: a lookup), else None."""
        parsed = _credentials(header)
        if parsed is None:
            return None
        user_raw, password = parsed
        digest = hmac.new(self._key, user_raw + b"\0" + password, hashlib.sha256).digest()
        with self._lock:
            return user_raw.decode() if digest in self._verified else None

    @staticmethod
    def claimed_user(header: str | None) -> str:
        """The user name the credentials claim (unverified), or ""."""
        parsed = _credentials(header)
        return parsed[0].decode() if parsed is not None else ""

    def check(self, header: str | None) -> bool:
        parsed = _credentials(header)
        if parsed is None:
            return False
        user_raw, password = parsed
        user = user_raw.decode()
        digest = hmac.new(self._key, user_raw + b"\0" + password, hashlib.sha256).digest()
        with self._lock:
            if digest in self._verified:
                return True
        known = self._users.get(user)
        candidate = password[:MAX_PASSWORD_BYTES]
        ok = False
        for cost, dummy in self._dummies.items():
            if known is not None and known[1] == cost:
                ok = bcrypt.checkpw(candidate, known[0])
            else:
                bcrypt.checkpw(candidate, dummy)
        ok = ok and known is not None and len(password) <= MAX_PASSWORD_BYTES
        if ok:
            with self._lock:
                if len(self._verified) >= self._CACHE:
                    self._verified.clear()
                self._verified.add(digest)
        return ok


def _credentials(header: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) of an `Authorization: Basic` header, or None."""
    if not header or not header.startswith("Basic "):
        return None
    try:
        user_raw, sep, password = base64.b64decode(header[6:], validate=True).partition(b":")
        user_raw.decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return (user_raw, password) if sep else None


def _cost(hashed: bytes) -> int:
    return int(hashed.split(b"$")[2])


class RateLimit:
    """exporter-toolkit's `rate_limit` (a token bucket of `burst` requests, one more
    every `interval` seconds), one bucket per client.

    exporter-toolkit has one bucket for all: an unauthenticated flood then spends
    Prometheus's allowance and its scrapes get 429. Here each client has its own: a
    user whose credentials are already verified is its own client wherever it comes
    from, any other request is its address (and the user name it claims). At most
    `MAX_RATE_CLIENTS` buckets are remembered (the least recent is forgotten: a full
    bucket again, which costs an attacker nothing it did not have).
    """

    def __init__(
        self, interval: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval
        self._burst = burst
        self._clock = clock
        self._buckets: OrderedDict[tuple[str, ...], tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, client: tuple[str, ...] = ()) -> bool:
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.pop(client, (float(self._burst), now))
            tokens = min(self._burst, tokens + (now - at) / self._interval)
            allowed = tokens >= 1
            self._buckets[client] = (tokens - 1 if allowed else tokens, now)
            if len(self._buckets) > MAX_RATE_CLIENTS:
                self._buckets.popitem(last=False)
            return allowed


@dataclass(frozen=True, slots=True)
class _Security:
    auth: BasicAuth | None
    headers: tuple[tuple[str, str], ...]
    limit: RateLimit | None


class WebApp:
    """Routes a request to its answer; transport-free.

    Parameters:
        exposition: the bodies of /metrics.
        view: the store's current view (status page, readiness).
        telemetry_path: where /metrics is served.
        web: the web config: users, headers, rate limit (replaced by `configure`).
        now: the wall clock, for the status page.
    """

    #: Probes must work without credentials or rate limits; they reveal nothing but
    #: "ok"/"ready" (or why not ready).
    PROBES = frozenset({"/healthz", "/readyz"})

    def __init__(
        self,
        exposition: Exposition,
        view: Callable[[], StoreView],
        *,
        telemetry_path: str = "/metrics",
        web: WebSettings = WebSettings(),  # noqa: B008 (frozen)
        now: Callable[[], float] = time.time,
    ) -> None:
        self._exposition = exposition
        self._view = view
        self._telemetry_path = telemetry_path
        self._now = now
        self._security = self._secure(web)

    def configure(self, web: WebSettings) -> None:
        """Apply a reloaded web config (SIGHUP): users, headers and rate limit at once."""
        self._security = self._secure(web)

    @staticmethod
    def _secure(web: WebSettings) -> _Security:
        configured = {name.lower() for name, _ in web.headers}
        defaults = tuple((k, v) for k, v in SECURITY_HEADERS if k.lower() not in configured)
        return _Security(
            auth=BasicAuth(web.users) if web.users else None,
            # A configured header replaces the default of its name; "" leaves it out.
            headers=defaults + tuple((k, v) for k, v in web.headers if v),
            limit=RateLimit(*web.rate_limit) if web.rate_limit else None,
        )

    def answers_at_once(self, request: Request) -> bool:
        """Whether the answer costs nothing (a probe): the server gives it on its event
        loop, so that no render or bcrypt queued in its pool can delay a probe."""
        return request.path in self.PROBES and request.method in ("GET", "HEAD")

    def handle(self, request: Request) -> Response:
        security = self._security
        # The other of the two broad catches: one bad request must never stop the server.
        try:
            response = self._route(request, security)
        except Exception:
            log.exception("request failed", extra={"path": request.path})
            response = reply(500, b"internal error\n")
        response.headers.extend(security.headers)
        return response

    def _route(self, request: Request, security: _Security) -> Response:
        if request.method not in ("GET", "HEAD"):
            return reply(405, b"only GET and HEAD\n", headers=[("Allow", "GET, HEAD")])
        path = request.path
        if path == "/healthz":
            return reply(200, b"ok\n")
        if path == "/readyz":
            reason = self._view().not_ready
            if reason is None:
                return reply(200, b"ready\n")
            return reply(503, f"not ready: {reason}\n".encode())
        authorization = request.headers.get("authorization")
        if security.limit is not None and not security.limit.allow(
            self._client(request, security, authorization)
        ):
            return reply(429, b"too many requests\n", headers=[("Retry-After", "1")])
        if security.auth is not None and not security.auth.check(authorization):
            return reply(
                401,
                b"unauthorized\n",
                headers=[
                    ("WWW-Authenticate", 'Basic realm="latitudesh-exporter", charset="UTF-8"')
                ],
            )
        if path == self._telemetry_path:
            body = self._exposition.render(
                request.headers.get("accept", ""), request.headers.get("accept-encoding", "")
            )
            headers = [("Content-Type", body.content_type), ("Vary", "Accept, Accept-Encoding")]
            if body.gzipped:
                headers.append(("Content-Encoding", "gzip"))
            return Response(200, headers, body.chunks, body.length, costly=body.costly)
        if path == "/":
            page = statuspage.render(
                self._view(),
                now=self._now(),
                telemetry_path=self._telemetry_path,
                version=__version__,
            )
            return reply(200, page, "text/html; charset=utf-8", [("Cache-Control", "no-store")])
        return reply(404, b"not found\n")

    @staticmethod
    def _client(
        request: Request, security: _Security, authorization: str | None
    ) -> tuple[str, ...]:
        """Whose rate-limit bucket a request spends: a verified user's own, else its
        address's (with the user name it claims)."""
        if security.auth is not None:
            user = security.auth.verified_user(authorization)
            if user is not None:
                return ("user", user)
            return ("client", request.client, BasicAuth.claimed_user(authorization))
        return ("client", request.client)
