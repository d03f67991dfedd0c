"""The HTTP application: routing, basic auth, /metrics, /healthz, /readyz, the status page.

Transport-free. The listening server takes a request in up to three steps, so that
neither a render nor bcrypt ever stalls its connections or its probes:

- `WebApp.admit`, on its event loop, at no cost (no bcrypt, no rendering): the probes,
  405, 429, and 401 for missing or already-refused credentials are answered at once
  (the server holds a refusal a moment while it is flooded: `httpserver.REFUSAL_DELAY`);
  credentials already verified pass; a (user, password) pair not seen before becomes
  a `PasswordCheck`;
- that check, in the server's own small pool (`CHECK_WORKERS` threads), within a
  budget per source whatever user names it claims (`CHECK_BURST`, then
  `CHECKS_PER_SECOND`: beyond it 429 without bcrypt) and a bound for all sources
  (`CHECK_QUEUE` checks waiting: beyond it 503 without bcrypt), so that guessing
  passwords from any number of addresses costs at most `CHECK_WORKERS` cores and
  never delays a probe, a render or a verified scrape;
- `WebApp.render`, in the render pool: /metrics, the status page, 404.

`WebApp.handle` is the three in a row, in the caller's thread. It reads the store's
view and the exposition cache only; it imports neither the poller nor the client, so
a request cannot reach the API even by accident.

Measured against the daemon, with a hash of cost 10 (`tests/test_auth_bounds.py` holds
the bounds): 500 user names claimed from one address cost 10 checks and 0.8
CPU-seconds (the rest 429),
where they cost 500 checks and 31 CPU-seconds; 15 s of such requests, 25 checks. After
a reload, while 4 threads at Prometheus's address send `prom` with wrong passwords,
its scrapes with the right one answer 200 (12 of 12; before, 429 all 12).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http
import ipaddress
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import bcrypt

from exporter import __version__, statuspage
from exporter.downloads import Downloads, Refusal
from exporter.exposition import Exposition
from exporter.snapshot import StoreView
from exporter.webconfig import WebSettings

log = logging.getLogger(__name__)
_T = TypeVar("_T")

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
#: Clients (sources or users) whose rate-limit buckets are remembered at once.
MAX_RATE_CLIENTS = 4096
#: Password checks one source may start at once, whatever user names it claims (a
#: check runs bcrypt once per distinct cost among the configured hashes). Only a
#: (user, password) pair not seen before needs one (verified and refused pairs are
#: remembered), so Prometheus needs one per user after a start or a changed
#: password: ten cover several users or Prometheus servers behind one address.
CHECK_BURST = 10
#: Password checks a source may start per second beyond the burst; more are answered
#: 429 without bcrypt. At cost 10 (about 60 ms a check) a guesser then costs a
#: sixteenth of a core, and 86,400 guesses a day reach only a weak password.
CHECKS_PER_SECOND = 1.0
#: Threads that run bcrypt, apart from the render pool: the most CPU that password
#: checks take, from any number of sources (one core).
CHECK_WORKERS = 1
#: Checks that may wait for a thread; more are answered 503 without a check. At cost
#: 10 the last one waits about a second.
CHECK_QUEUE = 16
#: Refused (user, password) pairs remembered, by HMAC: asking again is a 401 without
#: bcrypt and spends no budget.
MAX_REMEMBERED_FAILURES = 4096
#: One IPv6 source is a /64: a host commonly holds a whole /64.
IPV6_SOURCE_PREFIX = 64
#: Seconds between two "password checks saturated" log lines.
BUSY_LOG_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request as the application sees it.

    Parameters:
        method: "GET", "HEAD", ...
        path: the target's path, percent-decoded.
        headers: by name in lower case.
        query: the target's query string, as sent.
        client: the client's address.
    """

    method: str
    path: str
    #: Header names in lower case.
    headers: Mapping[str, str] = field(default_factory=dict)
    query: str = ""
    #: The client's address: its source (`source_of`) for rate limits and checks.
    client: str = ""


@dataclass(frozen=True, slots=True)
class Response:
    """An answer, for the server to send.

    Parameters:
        status: the status code.
        headers: (name, value) pairs, the framing ones left to the server.
        body: the body's bytes, in chunks.
        length: the body's length in bytes; None when it is made as it is sent (then
            the server sends it in chunks).
        costly: producing the body is CPU work.
        close: the connection closes after it.
    """

    status: int
    headers: list[tuple[str, str]]
    #: Bytes, or chunks produced as they are sent (/metrics is produced so).
    body: Iterable[bytes]
    length: int | None
    #: Producing the body is CPU work (plain text inflated): not on the event loop.
    costly: bool = False
    #: The connection closes after this answer (a refusal: 401, 429, 503), so that one
    #: connection cannot pipeline a series of failed password checks.
    close: bool = False

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
    *,
    close: bool = False,
) -> Response:
    return Response(
        status, [("Content-Type", content_type), *headers], (body,), len(body), close=close
    )


@dataclass(frozen=True, slots=True)
class Credentials:
    """An `Authorization: Basic` header, parsed.

    Parameters:
        user: the user name it claims (unverified).
        password: the password it gives.
        digest: the pair's HMAC under the checker's key: how the pair is remembered
            (verified or refused), never in clear.
    """

    user: str
    password: bytes
    digest: bytes


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes in the same time whoever asks.

    Every check runs bcrypt once per distinct cost among the configured hashes (the
    user's own hash at its cost, a dummy at the others; an unknown user gets dummies
    at every cost), so neither a user name's existence nor its hash's cost shows in
    the response time. Passwords over 72 bytes fail after the same work. bcrypt is
    slow on purpose, so the outcome of every check is remembered by the pair's HMAC
    under a per-process key, never in clear: a verified pair (a scrape every 15 s
    would otherwise pay bcrypt every time) and a refused one (`MAX_REMEMBERED_FAILURES`,
    the least recent forgotten first: repeating a wrong pair costs no bcrypt and
    tells the client nothing it did not know).

    Parameters:
        users: user name → bcrypt hash.
        previous: the checker this one replaces at a reload, or None. Its key, its
            dummies at the costs still configured and what it remembers of each user
            whose hash is unchanged are kept (so a reload makes nobody check again);
            what it remembers of a user whose hash changed or went is dropped.
    """

    #: Verified pairs remembered (the least recent forgotten first).
    _VERIFIED = 64

    def __init__(self, users: Mapping[str, bytes], previous: BasicAuth | None = None) -> None:
        self._users = {name: (hashed, _cost(hashed)) for name, hashed in users.items()}
        costs = sorted({cost for _, cost in self._users.values()})
        kept: dict[int, bytes] = previous._dummies if previous is not None else {}
        self._dummies: dict[int, bytes] = {
            cost: kept.get(cost) or bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(rounds=cost))
            for cost in costs
        }
        self._key: bytes = previous._key if previous is not None else os.urandom(32)
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        self._refused: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()
        if previous is not None:
            with previous._lock:
                carried = (
                    (previous._verified, self._verified),
                    (previous._refused, self._refused),
                )
                for old, new in carried:
                    for digest, user in old.items():
                        if self._hash(user) == previous._hash(user):
                            new[digest] = user

    def _hash(self, user: str) -> bytes | None:
        known = self._users.get(user)
        return known[0] if known is not None else None

    def parse(self, header: str | None) -> Credentials | None:
        """The credentials of an `Authorization` header, or None (missing, not Basic,
        malformed): no bcrypt."""
        parsed = _credentials(header)
        if parsed is None:
            return None
        user_raw, password = parsed
        digest = hmac.new(self._key, user_raw + b"\0" + password, hashlib.sha256).digest()
        return Credentials(user_raw.decode(), password, digest)

    def remembered(self, credentials: Credentials) -> bool | None:
        """True for a pair verified before, False for one refused before, None for one
        not seen (or forgotten): a lookup, no bcrypt."""
        with self._lock:
            for seen, outcome in ((self._verified, True), (self._refused, False)):
                if credentials.digest in seen:
                    seen.move_to_end(credentials.digest)
                    return outcome
        return None

    def verify(self, credentials: Credentials) -> bool:
        """bcrypt, the same work whoever asks; the outcome is remembered."""
        known = self._users.get(credentials.user)
        password = credentials.password
        candidate = password[:MAX_PASSWORD_BYTES]
        ok = False
        for cost, dummy in self._dummies.items():
            if known is not None and known[1] == cost:
                ok = bcrypt.checkpw(candidate, known[0])
            else:
                bcrypt.checkpw(candidate, dummy)
        ok = ok and known is not None and len(password) <= MAX_PASSWORD_BYTES
        seen, bound = (
            (self._verified, self._VERIFIED) if ok else (self._refused, MAX_REMEMBERED_FAILURES)
        )
        with self._lock:
            seen[credentials.digest] = credentials.user
            seen.move_to_end(credentials.digest)
            while len(seen) > bound:
                seen.popitem(last=False)
        return ok

    def check(self, header: str | None) -> bool:
        """Whether the header's credentials are right: remembered, else `verify`."""
        credentials = self.parse(header)
        if credentials is None:
            return False
        known = self.remembered(credentials)
        return known if known is not None else self.verify(credentials)


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
    from, any other request is its source (`source_of`), whatever user name it claims.
    At most `MAX_RATE_CLIENTS` buckets are remembered (the least recent is forgotten:
    a full bucket again, which costs an attacker nothing it did not have). The same
    bucket, one per source, bounds the password checks (`CHECK_BURST`).

    Parameters:
        interval: seconds for one more request.
        burst: requests at once (a full bucket).
        clock: the monotonic clock.
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


_QUEUED, _RUNNING, _DONE, _DISCARDED = range(4)


class PasswordCheck:
    """One bcrypt check of a pair not seen before, admitted by `WebApp.admit`.

    It holds one of the `CHECK_WORKERS + CHECK_QUEUE` slots from its admission until
    it has run or has been discarded, so the checks waiting and running never exceed
    them. The server runs it on its check pool, and discards it when its connection
    closes first: a check discarded before it started never runs bcrypt.

    Parameters:
        auth: the checker it asks.
        credentials: the pair to check.
        release: gives its slot back (called once).
        headers: the headers its refusal carries.
    """

    def __init__(
        self,
        auth: BasicAuth,
        credentials: Credentials,
        release: Callable[[], None],
        headers: tuple[tuple[str, str], ...],
    ) -> None:
        self._auth = auth
        self._credentials = credentials
        self._release = release
        self._headers = headers
        self._state = _QUEUED
        self._lock = threading.Lock()

    def run(self) -> Response | None:
        """None when the password is right, else the answer (401): bcrypt, so in a
        worker thread. Once discarded, it refuses without bcrypt."""
        with self._lock:
            if self._state != _QUEUED:
                return _finish(_busy(), self._headers)
            self._state = _RUNNING
        try:
            refusal = _guarded(self._check, "password check")
        finally:
            with self._lock:
                self._state = _DONE
            self._release()
        return None if refusal is None else _finish(refusal, self._headers)

    def _check(self) -> Response | None:
        # The same pair may have been checked while this one waited.
        known = self._auth.remembered(self._credentials)
        ok = known if known is not None else self._auth.verify(self._credentials)
        return None if ok else _unauthorized()

    def discard(self) -> None:
        """Give the slot back if the check has not started (its connection closed)."""
        with self._lock:
            if self._state != _QUEUED:
                return
            self._state = _DISCARDED
        self._release()


@dataclass(frozen=True, slots=True)
class Admission:
    """What `WebApp.admit` decided for a request, on the event loop at no cost.

    Parameters:
        request: the request.
        headers: what every answer to it carries (the configured and default headers).
        answer: the answer to give at once (a probe, 405, 401, 429, 503), or None.
        check: a password check to run in the check pool first, or None; then, when
            it passes (and when neither is set), `WebApp.render` in a worker thread.
    """

    request: Request
    headers: tuple[tuple[str, str], ...]
    answer: Response | None = None
    check: PasswordCheck | None = None


class WebApp:
    """Routes a request to its answer; transport-free.

    Parameters:
        exposition: the bodies of /metrics.
        view: the store's current view (status page, readiness).
        downloads: the finance files (`/showback.csv`, `/showback.json`, `/focus.csv`),
            behind the same protection as /metrics; None: not served.
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
        downloads: Downloads | None = None,
        telemetry_path: str = "/metrics",
        web: WebSettings = WebSettings(),  # noqa: B008 (frozen)
        now: Callable[[], float] = time.time,
    ) -> None:
        self._exposition = exposition
        self._view = view
        self._downloads = downloads
        self._telemetry_path = telemetry_path
        self._now = now
        self._security = self._secure(web, None)
        # Both outlive reloads: a reload never refills a guesser's budget or frees
        # the slots of checks still queued.
        self._budget = RateLimit(1.0 / CHECKS_PER_SECOND, CHECK_BURST)
        self._slots = threading.BoundedSemaphore(CHECK_WORKERS + CHECK_QUEUE)
        self._busy = 0
        self._busy_logged = -float("inf")
        self._busy_lock = threading.Lock()

    def configure(self, web: WebSettings) -> None:
        """Apply a reloaded web config (SIGHUP): users, headers and rate limit at once.
        Users whose hash is unchanged stay verified (see `BasicAuth`)."""
        self._security = self._secure(web, self._security.auth)

    @staticmethod
    def _secure(web: WebSettings, previous: BasicAuth | None) -> _Security:
        configured = {name.lower() for name, _ in web.headers}
        defaults = tuple((k, v) for k, v in SECURITY_HEADERS if k.lower() not in configured)
        return _Security(
            auth=BasicAuth(web.users, previous) if web.users else None,
            # A configured header replaces the default of its name; "" leaves it out.
            headers=defaults + tuple((k, v) for k, v in web.headers if v),
            limit=RateLimit(*web.rate_limit) if web.rate_limit else None,
        )

    def handle(self, request: Request) -> Response:
        """The whole answer at once, in the caller's thread: `admit`, the password
        check if any, then `render`."""
        admission = self.admit(request)
        if admission.answer is not None:
            return admission.answer
        if admission.check is not None:
            refused = admission.check.run()
            if refused is not None:
                return refused
        return self.render(admission)

    def admit(self, request: Request) -> Admission:
        """What to do with a request, at no cost (no bcrypt, no rendering): the server
        calls it on its event loop. Probes, 405, 429, 503 and 401 for missing or
        already-refused credentials are answered at once; verified credentials pass;
        a pair not seen before is a `PasswordCheck`, within its source's budget
        (`CHECK_BURST`, `CHECKS_PER_SECOND`) and the checks' slots (`CHECK_QUEUE`)."""
        security = self._security
        admission = _guarded(lambda: self._admit(request, security), request.path)
        if isinstance(admission, Response):
            return Admission(request, security.headers, _finish(admission, security.headers))
        return admission

    def _admit(self, request: Request, security: _Security) -> Admission:
        def answer(response: Response) -> Admission:
            return Admission(request, security.headers, _finish(response, security.headers))

        if request.method not in ("GET", "HEAD"):
            return answer(reply(405, b"only GET and HEAD\n", headers=[("Allow", "GET, HEAD")]))
        if request.path == "/healthz":
            return answer(reply(200, b"ok\n"))
        if request.path == "/readyz":
            reason = self._view().not_ready
            if reason is None:
                return answer(reply(200, b"ready\n"))
            return answer(reply(503, f"not ready: {reason}\n".encode()))
        auth = security.auth
        source = source_of(request.client)
        credentials = auth.parse(request.headers.get("authorization")) if auth else None
        known = auth.remembered(credentials) if auth and credentials else None
        # Authenticated first: a verified user spends its own allowance wherever it
        # comes from, never one that wrong passwords share; any other request spends
        # its source's, whatever user name it claims.
        client = ("user", credentials.user) if credentials and known else ("client", source)
        if security.limit is not None and not security.limit.allow(client):
            return answer(_too_many())
        if auth is None or known:
            return Admission(request, security.headers)
        if credentials is None or known is False:
            return answer(_unauthorized())
        if not self._slots.acquire(blocking=False):
            self._note_busy()
            return answer(_busy())
        if not self._budget.allow(("client", source)):
            self._slots.release()
            return answer(_too_many())
        return Admission(
            request,
            security.headers,
            check=PasswordCheck(auth, credentials, self._slots.release, security.headers),
        )

    def _note_busy(self) -> None:
        with self._busy_lock:
            self._busy += 1
            now = time.monotonic()
            if now - self._busy_logged < BUSY_LOG_SECONDS:
                return
            count, self._busy, self._busy_logged = self._busy, 0, now
        log.warning(
            "password checks saturated: new credentials answered 503 without a check",
            extra={"count": count, "workers": CHECK_WORKERS, "queue": CHECK_QUEUE},
        )

    def render(self, admission: Admission) -> Response:
        """The answer to an admitted request: /metrics, the status page or 404. CPU
        work: the server calls it in a worker thread."""
        response = _guarded(lambda: self._render(admission.request), admission.request.path)
        return _finish(response, admission.headers)

    def _render(self, request: Request) -> Response:
        path = request.path
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
        download = self._downloads.serve(path, request.query) if self._downloads else None
        if isinstance(download, Refusal):
            return reply(download.status, f"{download.reason}\n".encode())
        if download is not None:
            headers = [
                ("Content-Type", download.media_type),
                ("Content-Disposition", f'attachment; filename="{download.filename}"'),
                ("Cache-Control", "no-store"),
            ]
            return Response(200, headers, download.chunks, None, costly=True)
        return reply(404, b"not found\n")


def _guarded(step: Callable[[], _T], path: str) -> _T | Response:
    """What `step` returns, or 500 when it raises: the one broad catch here, as one bad
    request must never stop the server (admission, password check or render)."""
    try:
        return step()
    except Exception:
        log.exception("request failed", extra={"path": path})
        return reply(500, b"internal error\n", close=True)


def _finish(response: Response, headers: tuple[tuple[str, str], ...]) -> Response:
    response.headers.extend(headers)
    return response


def _unauthorized() -> Response:
    return reply(
        401,
        b"unauthorized\n",
        headers=[("WWW-Authenticate", 'Basic realm="latitudesh-exporter", charset="UTF-8"')],
        close=True,
    )


def _too_many() -> Response:
    return reply(429, b"too many requests\n", headers=[("Retry-After", "1")], close=True)


def _busy() -> Response:
    return reply(503, b"too many password checks\n", headers=[("Retry-After", "1")], close=True)


def source_of(address: str) -> str:
    """Whose budget of password checks a request spends: its IPv4 address, or the /64
    of its IPv6 one (a host commonly holds a whole /64, so every address in it is one
    source); an IPv4-mapped IPv6 address is its IPv4 one."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_SOURCE_PREFIX), strict=False))
    return str(ip)
