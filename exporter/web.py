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
import logging
import os
import threading
import time
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
_REASONS = {
    200: "OK",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    #: Header names in lower case.
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    #: Bytes, or chunks produced as they are sent (plain /metrics is decompressed so).
    body: Iterable[bytes]
    length: int

    @property
    def reason(self) -> str:
        return _REASONS.get(self.status, "")


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

    def check(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user_raw, sep, password = base64.b64decode(header[6:], validate=True).partition(b":")
            user = user_raw.decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        if not sep:
            return False
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


def _cost(hashed: bytes) -> int:
    return int(hashed.split(b"$")[2])


class RateLimit:
    """exporter-toolkit's `rate_limit`: a token bucket over all requests."""

    def __init__(
        self, interval: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval
        self._burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._at) / self._interval)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


@dataclass(frozen=True, slots=True)
class _Security:
    auth: BasicAuth | None
    headers: tuple[tuple[str, str], ...]
    limit: RateLimit | None


class WebApp:
    #: Probes must work without credentials; they reveal nothing but "ok"/"ready".
    UNAUTHENTICATED = frozenset({"/healthz", "/readyz"})

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
        return _Security(
            auth=BasicAuth(web.users) if web.users else None,
            headers=web.headers,
            limit=RateLimit(*web.rate_limit) if web.rate_limit else None,
        )

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
        if security.limit is not None and not security.limit.allow():
            return reply(429, b"too many requests\n", headers=[("Retry-After", "1")])
        path = request.path
        if (
            security.auth is not None
            and path not in self.UNAUTHENTICATED
            and (not security.auth.check(request.headers.get("authorization")))
        ):
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
            return Response(200, headers, body.chunks, body.length)
        if path == "/healthz":
            return reply(200, b"ok\n")
        if path == "/readyz":
            if self._view().ready:
                return reply(200, b"ready\n")
            return reply(503, b"not ready: the first refresh has not been attempted yet\n")
        if path == "/":
            page = statuspage.render(
                self._view(),
                now=self._now(),
                telemetry_path=self._telemetry_path,
                version=__version__,
            )
            return reply(200, page, "text/html; charset=utf-8", [("Cache-Control", "no-store")])
        return reply(404, b"not found\n")
