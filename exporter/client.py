"""`LatitudeClient`: the HTTP side of the exporter; returns models or raises `errors.*`.

Every request goes through one `RequestBudget`, is retried with capped exponential
backoff and jitter on 429, 5xx, timeouts and connection errors, honours the wait a 429
asks for, and is reported once to `on_request(endpoint, code)` when its outcome is
known. httpx does what httpx does: it decodes Content-Encoding and follows redirects.
What the exporter adds sits in one small transport under it (`_Hops`): a redirect is
followed only within the API's origin, each hop takes its own budget slot and deadline
and is counted once, and raw bytes reach httpx's decoders in slices small enough that
no decode call can blow up. An answer is bounded three ways before it is believed: in
time (`timeout` bounds connect, headers and the whole body together, so a body that
trickles in a byte at a time fails like any timeout), in decoded size (counted while
httpx decodes, so a small gzip bomb is refused before it expands in memory) and in
JSON values (see `models.parse_document`).
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import httpx
from pydantic import SecretStr

from exporter import __version__, errors
from exporter.config import ApiSettings
from exporter.models import (
    PROJECTS_ENDPOINT,
    PROJECTS_PAGE_SIZE,
    USAGE_ENDPOINT,
    PayloadError,
    ProjectResource,
    ProjectsPage,
    UsageAnswer,
    parse_document,
    parse_error_document,
    read_usage,
)
from exporter.ratelimit import RequestBudget
from exporter.transport import NETWORK_ERRORS, TIMEOUTS, Deadlines, DeadlineTransport

log = logging.getLogger(__name__)

#: Retry backoff: the wait before retry n (from 0) is at most min(cap, base x 2^n)
#: seconds, jittered over its upper half. The watchdog's stall margin counts them.
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
#: Pins the response shape; see the spec's info.version.
API_VERSION = "2023-06-01"
#: Pages of /projects one discovery may read: 10,000 projects, far beyond what one
#: key's budget can poll; an API that never ends its pages is cut off here.
MAX_PROJECT_PAGES = 100
#: Characters of the API's own error text kept for the log, after secrets are scrubbed.
MAX_DETAIL_CHARS = 200
#: Same-origin redirects httpx follows for one request (each hop takes its own budget
#: slot); the official SDK follows redirects, so a moved path must not fail polls.
MAX_REDIRECTS = 5
#: The Content-Encodings asked for and read: those httpx decodes with zlib, whose
#: output per byte of input has a known ceiling (`DEFLATE_EXPANSION`).
ENCODINGS = frozenset({"gzip", "deflate"})
#: Most bytes one zlib `decompress` call yields per byte it is given: deflate's limit
#: (a 258-byte match in two bits). Measured: 1,032 on a gzip bomb of spaces, and
#: 1,032² = 1,065,024 through two layers.
DEFLATE_EXPANSION = 1032
#: Most bytes one call of httpx's decoders may yield. httpx decompresses whatever raw
#: bytes it is given at once (no max_length), so the raw bytes are handed to it in
#: slices of `DECODE_STEP // DEFLATE_EXPANSION ** layers` bytes: 4,064 through one
#: layer, 3 through two (see `_Hops`). Target: a gzip bomb (256 MiB of spaces, one
#: or two layers) refused within the same order of memory as the hand-written inflater
#: it replaces, ≤ ~100 MiB peak RSS (tests/test_hardening.py). Measured: 76 and 70 MiB
#: (63 before; 175 and 560 MiB with httpx's decoders fed unsliced).
DECODE_STEP = 4 * 1024 * 1024
#: Content-Encoding layers one answer may stack: the most for which a raw slice of at
#: least one byte keeps one decode call within `DECODE_STEP`. A third layer could
#: yield 1,032³ bytes (a GiB) from one byte, so it is refused before the body is read.
#: No real API encodes twice (the official one does not); two layers are still read,
#: three raw bytes a call, because a proxy that gzips what it forwards stacks a
#: second layer, and the cost is small (a 10,000-product answer gzipped twice, 52 KB,
#: decodes and parses in 0.29 s, as fast as before).
MAX_ENCODINGS = 2
USER_AGENT = (
    f"latitudesh-exporter/{__version__} "
    f"(python {sys.version_info.major}.{sys.version_info.minor}; httpx {httpx.__version__})"
)

RequestObserver = Callable[[str, str], None]
TokenGetter = Callable[[], SecretStr]
Params = list[tuple[str, str | int | float | bool | None]]
M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """What one request with a key says about it (`--check-config`)."""

    sees_projects: bool
    currency: str | None
    team: str | None


#: The client's own generator: backoff jitter never draws from (or disturbs) the global
#: `random` state that the application or a test framework may rely on.
_JITTER = random.Random()


class LatitudeClient:
    """The Latitude.sh API as the exporter uses it: billing usage, projects, a key check.

    Parameters:
        token: returns the current API key (re-read from a file when it changes).
        budget: the key's request budget; every request, retries included, takes a slot.
        api: the `api` section of the config: base URL, timeout, retries, retry-wait
            cap and the decoded size cap of an answer.
        backoff_base, backoff_cap: the exponential backoff of retries, in seconds.
        unauthorized_backoff: seconds a key the API refused (401) is not sent again.
        transport: an httpx transport in place of the deadline transport (tests).
        on_request: told `(endpoint, code)` once per request, when its outcome is known.
        stop: set when the exporter stops: waits end and requests are cancelled.
        clock: the monotonic clock of deadlines and back-offs.
        jitter: the random source of backoff jitter.
        max_connections: connections kept to the API (the team's poll concurrency).
    """

    def __init__(
        self,
        *,
        token: TokenGetter,
        budget: RequestBudget,
        api: ApiSettings = ApiSettings(),  # noqa: B008 (frozen)
        backoff_base: float = BACKOFF_BASE_SECONDS,
        backoff_cap: float = BACKOFF_CAP_SECONDS,
        unauthorized_backoff: float = 300.0,
        transport: httpx.BaseTransport | None = None,
        on_request: RequestObserver | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = _JITTER.random,
        max_connections: int = 10,
    ) -> None:
        base_url = api.base_url
        timeout = api.timeout_seconds
        self._max_retries = api.max_retries
        self._max_retry_wait = api.max_retry_wait_seconds
        self._max_bytes = api.max_response_bytes
        self._token = token
        self._budget = budget
        self._timeout = timeout
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._unauthorized_backoff = unauthorized_backoff
        self._on_request = on_request or (lambda endpoint, code: None)
        self._stop = stop or threading.Event()
        self._clock = clock
        self._jitter = jitter
        self._rejected: tuple[int, float] | None = None
        self._rejected_lock = threading.Lock()
        self._deadlines = Deadlines(clock)
        self._origin = _origin(httpx.URL(base_url))
        self._hops = _Hops(
            transport or DeadlineTransport(base_url, self._deadlines, max_connections),
            self._before_hop,
        )
        self._http = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(timeout),
            transport=self._hops,
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            headers={
                "Accept": "application/vnd.api+json, application/json;q=0.9",
                # `ENCODINGS`: only what `_read` can bound while httpx decodes it.
                "Accept-Encoding": "gzip, deflate",
                "API-Version": API_VERSION,
                "User-Agent": USER_AGENT,
            },
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LatitudeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def billing_usage(
        self,
        project_id: str,
        *,
        plan: str | None = None,
        products: Sequence[str] = (),
        retries: int | None = None,
    ) -> UsageAnswer:
        """One project's usage, read by `models.read_usage`, and the body it came in;
        `retries` other than `api.max_retries` (0 for a check that says what the API
        answered)."""
        params: Params = [("filter[project]", project_id)]
        if plan:
            params.append(("filter[plan]", plan))
        params.extend(("filter[products][]", product) for product in products)
        return self._get(
            USAGE_ENDPOINT,
            params,
            lambda body: UsageAnswer(read_usage(project_id, body), body),
            retries=retries,
        )

    def projects(self) -> list[ProjectResource]:
        """Every project the key can see.

        A short page ends the list (the spec's `stats[total]=count` would give a total,
        but a count from the answer bounds nothing a hostile API does). A page that brings no
        project not seen before (an API that ignores page[number]) and more than
        `MAX_PROJECT_PAGES` pages are errors, never a silent cut.
        """
        found: dict[str, ProjectResource] = {}
        for number in range(1, MAX_PROJECT_PAGES + 1):
            page = self._get(
                PROJECTS_ENDPOINT,
                [("page[size]", str(PROJECTS_PAGE_SIZE)), ("page[number]", str(number))],
                ProjectsPage,
            )
            new = [p for p in page.data if p.id and p.id not in found]
            if page.data and not new:
                raise errors.InvalidResponse(
                    f"GET {PROJECTS_ENDPOINT}: page {number} brings no new project"
                )
            found.update((p.id, p) for p in new if p.id)
            if len(page.data) < PROJECTS_PAGE_SIZE:
                return list(found.values())
        raise errors.InvalidResponse(
            f"GET {PROJECTS_ENDPOINT}: more than {MAX_PROJECT_PAGES} pages of projects"
        )

    def check_key(self) -> KeyCheck:
        """One request, `GET /projects?page[size]=1`: is the key accepted, and by whom."""
        # No retry: a check says what the API answered (a 429 asking an hour's wait
        # is "rate limited" at once, not an hour of waiting).
        page = self._get(PROJECTS_ENDPOINT, [("page[size]", "1")], ProjectsPage, retries=0)
        first = next((p for p in page.data if p.id), None)
        team = first.team if first else None
        return KeyCheck(
            first is not None, first.currency if first else None, team.slug if team else None
        )

    def _get(
        self,
        endpoint: str,
        params: Params,
        read: type[M] | Callable[[bytes], M],
        *,
        retries: int | None = None,
    ) -> M:
        """The answer to `GET endpoint`, read by `read` (a model, or a function of the
        decoded body), with the budget, the retries and the 401 pause."""
        retries = self._max_retries if retries is None else retries
        attempt = 0
        token: SecretStr | None = None
        while True:
            try:
                token = self._token()
                self._refuse_rejected_token(endpoint, token)
                self._budget.acquire()
                return self._get_once(endpoint, params, token, read)
            except errors.LatitudeError as exc:
                if isinstance(exc, errors.Unauthorized) and exc.status == 401 and token:
                    self._remember_rejected(token)
                if not exc.retryable or attempt >= retries:
                    raise
                delay = self._delay(exc, attempt)
                log.debug(
                    "retrying request",
                    extra={
                        "endpoint": endpoint,
                        "reason": exc.reason,
                        "attempt": attempt + 1,
                        "delay_seconds": round(delay, 3),
                    },
                )
                if isinstance(exc, errors.RateLimited):
                    self._budget.pause(delay)  # the whole key waits, not just this call
                elif self._stop.wait(delay):
                    raise errors.Cancelled("shutting down") from None
                attempt += 1

    def _delay(self, exc: errors.LatitudeError, attempt: int) -> float:
        if isinstance(exc, errors.RateLimited) and exc.retry_after is not None:
            # A wait of hours (seen from misbehaving proxies) must not park the poller.
            return min(exc.retry_after, self._max_retry_wait)
        ceiling = min(self._backoff_cap, self._backoff_base * 2.0 ** min(attempt, 32))
        return ceiling / 2 + self._jitter() * ceiling / 2

    def _refuse_rejected_token(self, endpoint: str, token: SecretStr) -> None:
        """A key the API refused is not sent again until the back-off ends or it changes."""
        with self._rejected_lock:
            rejected = self._rejected
        if rejected is None:
            return
        fingerprint, until = rejected
        if fingerprint == hash(token.get_secret_value()) and self._clock() < until:
            raise errors.Unauthorized(
                f"GET {endpoint}: not sent: the API rejected this key with 401; the "
                f"back-off ends in {max(round(until - self._clock()), 1)}s (sooner if the "
                "key changes)",
                status=0,
            )

    def _remember_rejected(self, token: SecretStr) -> None:
        with self._rejected_lock:
            self._rejected = (
                hash(token.get_secret_value()),
                self._clock() + self._unauthorized_backoff,
            )

    def _get_once(
        self, endpoint: str, params: Params, token: SecretStr, read: type[M] | Callable[[bytes], M]
    ) -> M:
        """One request, and the redirects httpx follows from it (each hop counted and
        budgeted in `_before_hop`); the chain's last request is counted here, once its
        outcome is known."""
        headers = {"Authorization": token.get_secret_value()}
        code = "network"
        with self._hops.chain(endpoint) as chain:
            try:
                with (
                    self._deadlines.until(self._clock() + self._timeout),
                    self._http.stream("GET", endpoint, params=params, headers=headers) as response,
                ):
                    body = self._read(endpoint, response)
                code = str(response.status_code)
            except TIMEOUTS:
                code = "timeout"
                raise errors.Timeout(
                    f"GET {endpoint}: no complete answer in {self._timeout:g}s"
                ) from None
            except errors.InvalidResponse:
                code = str(response.status_code)
                raise
            except NETWORK_ERRORS as exc:
                if chain.redirect is None:
                    raise errors.NetworkError(f"GET {endpoint}: {type(exc).__name__}") from None
                # httpx did not follow: one hop too many, or a Location it cannot request.
                why = (
                    f"more than {MAX_REDIRECTS} redirects"
                    if isinstance(exc, httpx.TooManyRedirects)
                    else f"HTTP {chain.redirect} to an invalid URL"
                )
                raise errors.Redirected(f"GET {endpoint}: {why}", status=chain.redirect) from None
            finally:
                # A chain that stops at a redirect not followed ends with that request.
                self._on_request(endpoint, code if chain.redirect is None else str(chain.redirect))
        if not response.is_success:
            raise self._status_error(endpoint, response, body, token)
        try:
            if isinstance(read, type):
                return parse_document(read, body)
            return read(body)
        except PayloadError as exc:
            raise errors.InvalidResponse(f"GET {endpoint}: {exc}") from None

    def _before_hop(self, endpoint: str, status: int, request: httpx.Request) -> None:
        """Before httpx sends the next hop of a redirect (`status`): refused unless it
        stays within the API's origin, so that the key is never sent to another host;
        otherwise it takes a budget slot and a deadline of its own, and the redirect
        that led to it is counted, followed."""
        if _origin(request.url) != self._origin:
            scheme, host, port = _origin(request.url)
            raise errors.Redirected(
                f"GET {endpoint}: HTTP {status} to another origin, {scheme}://{host}:{port}: "
                "not followed (the key is never sent elsewhere)",
                status=status,
            )
        self._budget.acquire()
        self._on_request(endpoint, str(status))
        # The wait for the budget is no part of the hop's own timeout.
        self._deadlines.renew(self._clock() + self._timeout)

    def _read(self, endpoint: str, response: httpx.Response) -> bytes:
        """The body as httpx decodes it, refused as soon as it grows past the cap.

        An encoding or a stack of them that `_Hops` cannot slice into bounded decode
        calls is refused before a byte of the body is read.
        """
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise errors.InvalidResponse(
                f"GET {endpoint}: answer of {declared} bytes is over the {self._max_bytes}-byte cap"
            )
        encodings = _encodings(response.headers)
        if len(encodings) > MAX_ENCODINGS or not set(encodings) <= ENCODINGS:
            raise errors.InvalidResponse(
                f"GET {endpoint}: unsupported Content-Encoding {', '.join(encodings)!r}"
            )
        once = " once decompressed" if encodings else ""
        body = bytearray()
        try:
            for chunk in response.iter_bytes():  # each at most DECODE_STEP bytes
                if len(body) + len(chunk) > self._max_bytes:
                    raise errors.InvalidResponse(
                        f"GET {endpoint}: answer is over the {self._max_bytes}-byte cap{once}"
                    )
                body += chunk
        except httpx.DecodingError:
            raise errors.InvalidResponse(
                f"GET {endpoint}: the compressed answer is corrupt"
            ) from None
        return bytes(body)

    def _status_error(
        self, endpoint: str, response: httpx.Response, body: bytes, token: SecretStr
    ) -> errors.ApiStatusError:
        document = parse_error_document(body)
        status = response.status_code
        # The API's own words go into logs: scrub the key from the whole text first,
        # then shorten, so that a cut can never leave part of an echoed key behind.
        secret = token.get_secret_value()
        detail = " ".join(document.text.replace(secret, "<redacted>").split())
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[:MAX_DETAIL_CHARS] + "…"
        message = f"GET {endpoint}: HTTP {status}" + (f": {detail}" if detail else "")
        if status == 429:
            waits = [
                w for w in (document.retry_after, _retry_after_header(response)) if w is not None
            ]
            return errors.RateLimited(message, retry_after=max(waits) if waits else None)
        kind: type[errors.ApiStatusError] = {
            401: errors.Unauthorized,
            403: errors.Forbidden,
            404: errors.NotFound,
        }.get(status, errors.ServerError if status >= 500 else errors.UnexpectedStatus)
        return kind(message, status=status)


@dataclass(slots=True)
class _Chain:
    """One request and the redirect hops httpx follows from it."""

    endpoint: str
    #: The status of the last answer when it was a redirect whose next hop has not been
    #: sent yet: httpx is following it, or the chain stopped there.
    redirect: int | None = None


class _Hops(httpx.BaseTransport):
    """The transport under httpx's client: every request httpx sends passes here, the
    first of a chain and each redirect hop it follows.

    Before a hop goes out, `before_hop(endpoint, status, request)` refuses it or
    budgets and counts it (`LatitudeClient._before_hop`). A redirect's body is never
    read: httpx would read it whole, decoded, with no cap; closing it costs the
    connection, which a rare redirect can afford. Any other body reaches httpx in raw
    slices of `DECODE_STEP // DEFLATE_EXPANSION ** layers` bytes, so that one call of
    httpx's decoders yields at most `DECODE_STEP` bytes and `_read` refuses a bomb
    before it holds more than the cap (unsliced, one 64 KiB read of a one-layer bomb
    is 64 MiB at once, and of a two-layer one 64 GiB; see `DECODE_STEP` for the
    figures).

    httpx sends a chain's requests from the thread that asked, so the chain in flight
    is the thread's (`chain`), as the deadline is (`Deadlines`).
    """

    def __init__(
        self,
        inner: httpx.BaseTransport,
        before_hop: Callable[[str, int, httpx.Request], None],
    ) -> None:
        self._inner = inner
        self._before_hop = before_hop
        self._local = threading.local()

    @contextmanager
    def chain(self, endpoint: str) -> Iterator[_Chain]:
        chain = self._local.chain = _Chain(endpoint)
        try:
            yield chain
        finally:
            self._local.chain = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        chain: _Chain = self._local.chain
        if chain.redirect is not None:
            self._before_hop(chain.endpoint, chain.redirect, request)
            chain.redirect = None
        response = self._inner.handle_request(request)
        if response.has_redirect_location:
            response.close()
            chain.redirect = response.status_code
            return httpx.Response(
                response.status_code, headers=response.headers, extensions=response.extensions
            )
        assert isinstance(response.stream, httpx.SyncByteStream)
        layers = len(_encodings(response.headers))
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            # A stack `_read` refuses is never read: any slice will do.
            stream=_Slices(response.stream, max(1, DECODE_STEP // DEFLATE_EXPANSION**layers)),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._inner.close()


class _Slices(httpx.SyncByteStream):
    """A raw body handed on in slices of at most `size` bytes."""

    def __init__(self, raw: httpx.SyncByteStream, size: int) -> None:
        self._raw = raw
        self._size = size

    def __iter__(self) -> Iterator[bytes]:
        size = self._size
        for chunk in self._raw:
            for start in range(0, len(chunk), size):
                yield chunk[start : start + size]

    def close(self) -> None:
        self._raw.close()


def _encodings(headers: httpx.Headers) -> list[str]:
    """The Content-Encoding layers of an answer, in the order applied (identity is none)."""
    values = (v.strip().lower() for v in headers.get_list("Content-Encoding", split_commas=True))
    return [v for v in values if v and v != "identity"]


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    """(scheme, host, port), the port filled in: what must match for a redirect."""
    default = 443 if url.scheme == "https" else 80
    return url.scheme, url.host.lower(), url.port or default


def _retry_after_header(response: httpx.Response) -> float | None:
    """`Retry-After` as delta-seconds or an HTTP-date (RFC 9110 §10.2.3); None when it
    is neither, or absurd (a wait in the year 9999 is no wait the exporter honours)."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        wait = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            wait = (when - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    return max(wait, 0.0) if math.isfinite(wait) else None
