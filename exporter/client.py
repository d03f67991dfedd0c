"""`LatitudeClient`: the HTTP side of the exporter; returns models or raises `errors.*`.

Every request goes through one `RequestBudget`, is retried with capped exponential
backoff and jitter on 429, 5xx, timeouts and connection errors, honours the wait a 429
asks for, and is reported once to `on_request(endpoint, code)` when its outcome is
known. An answer is bounded three ways before it is believed: in time
(`timeout` bounds connect, headers and the whole body together, so a body that
trickles in a byte at a time fails like any timeout), in decoded size (counted
across every Content-Encoding layer while streaming, so a small double-gzipped answer
cannot expand in memory) and in JSON values (see `models.parse_document`).
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import httpx
from pydantic import SecretStr

from exporter import __version__, errors
from exporter.config import ApiSettings
from exporter.models import (
    MAX_PRODUCTS_PER_ANSWER,
    PROJECTS_ENDPOINT,
    PROJECTS_PAGE_SIZE,
    USAGE_ENDPOINT,
    BillingUsageDocument,
    PayloadError,
    ProjectResource,
    ProjectsPage,
    UsageAttributes,
    parse_document,
    parse_error_document,
)
from exporter.ratelimit import RequestBudget
from exporter.transport import NETWORK_ERRORS, TIMEOUTS, Deadlines, DeadlineTransport

log = logging.getLogger(__name__)

#: Pins the response shape; see the spec's info.version.
API_VERSION = "2023-06-01"
#: Pages of /projects one discovery may read: 10,000 projects, far beyond what one
#: key's budget can poll; an API that never ends its pages is cut off here.
MAX_PROJECT_PAGES = 100
#: Content-Encoding layers one answer may stack (any more is hostile).
MAX_ENCODINGS = 2
#: Characters of the API's own error text kept for the log, after secrets are scrubbed.
MAX_DETAIL_CHARS = 200
#: Same-origin redirects followed for one request (each one counted against the
#: budget); the official SDK follows redirects, so a moved path must not fail polls.
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
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
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
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
        self._http = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(timeout),
            transport=transport or DeadlineTransport(base_url, self._deadlines, max_connections),
            follow_redirects=False,
            headers={
                "Accept": "application/vnd.api+json, application/json;q=0.9",
                # Only what `_decoded` can undo with a bound on its output.
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
        self, project_id: str, *, plan: str | None = None, products: Sequence[str] = ()
    ) -> UsageAttributes:
        params: Params = [("filter[project]", project_id)]
        if plan:
            params.append(("filter[plan]", plan))
        params.extend(("filter[products][]", product) for product in products)
        document = self._get(USAGE_ENDPOINT, params, BillingUsageDocument)
        usage = document.usage_for(project_id)
        if usage is None:
            raise errors.InvalidResponse(
                f"GET {USAGE_ENDPOINT}: the answer holds no usage for the requested project"
            )
        if len(usage.products) > MAX_PRODUCTS_PER_ANSWER:
            raise errors.InvalidResponse(
                f"GET {USAGE_ENDPOINT}: the answer holds {len(usage.products)} product "
                f"lines, over the cap of {MAX_PRODUCTS_PER_ANSWER}"
            )
        if not usage.has_figures:
            raise errors.InvalidResponse(
                f"GET {USAGE_ENDPOINT}: the answer holds no usable figure (no price, "
                "amount, credit or product line)"
            )
        return usage

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
        self, endpoint: str, params: Params, model: type[M], *, retries: int | None = None
    ) -> M:
        retries = self._max_retries if retries is None else retries
        attempt = hops = 0
        token: SecretStr | None = None
        target: str | httpx.URL = endpoint
        query: Params | None = params
        while True:
            try:
                token = self._token()
                self._refuse_rejected_token(endpoint, token)
                self._budget.acquire()
                return self._get_once(endpoint, target, query, token, model)
            except _Redirect as redirect:
                hops += 1
                if hops > MAX_REDIRECTS:
                    raise errors.Redirected(
                        f"GET {endpoint}: more than {MAX_REDIRECTS} redirects",
                        status=redirect.status,
                    ) from None
                target, query = redirect.url, None  # the new URL carries its own query
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
                f"GET {endpoint}: not sent: the API rejected this token "
                f"{round(until - self._clock())}s before the back-off ends",
                status=0,
            )

    def _remember_rejected(self, token: SecretStr) -> None:
        with self._rejected_lock:
            self._rejected = (
                hash(token.get_secret_value()),
                self._clock() + self._unauthorized_backoff,
            )

    def _get_once(
        self,
        endpoint: str,
        target: str | httpx.URL,
        params: Params | None,
        token: SecretStr,
        model: type[M],
    ) -> M:
        """One request to `target` (the endpoint, or where it redirected), counted
        under `endpoint`."""
        headers = {"Authorization": token.get_secret_value()}
        code = "network"
        try:
            with (
                self._deadlines.until(self._clock() + self._timeout),
                self._http.stream("GET", target, params=params, headers=headers) as response,
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
            raise errors.NetworkError(f"GET {endpoint}: {type(exc).__name__}") from None
        finally:
            self._on_request(endpoint, code)
        if response.status_code in _REDIRECTS and "Location" in response.headers:
            raise self._redirect(endpoint, response)
        if not response.is_success:
            raise self._status_error(endpoint, response, body, token)
        try:
            return parse_document(model, body)
        except PayloadError as exc:
            raise errors.InvalidResponse(f"GET {endpoint}: {exc}") from None

    def _read(self, endpoint: str, response: httpx.Response) -> bytes:
        """The decoded body, refused as soon as it grows past the cap."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise errors.InvalidResponse(
                f"GET {endpoint}: answer of {declared} bytes is over the {self._max_bytes}-byte cap"
            )
        encodings = [
            e.strip().lower()
            for e in response.headers.get("Content-Encoding", "").split(",")
            if e.strip()
        ]
        encodings = [e for e in encodings if e != "identity"]
        if len(encodings) > MAX_ENCODINGS or not set(encodings) <= {"gzip", "x-gzip", "deflate"}:
            raise errors.InvalidResponse(
                f"GET {endpoint}: unsupported Content-Encoding {', '.join(encodings)!r}"
            )
        if response.is_stream_consumed:
            # An in-memory answer (httpx.MockTransport in tests): httpx decoded it.
            chunks: Iterator[bytes] = iter([response.content])
            encodings = []
        else:
            chunks = response.iter_raw()
        for encoding in reversed(encodings):  # applied in order, undone in reverse
            chunks = _inflate(chunks, deflate=encoding == "deflate", cap=self._max_bytes)
        body = bytearray()
        try:
            for chunk in chunks:
                body += chunk
                if len(body) > self._max_bytes:
                    raise errors.InvalidResponse(
                        f"GET {endpoint}: answer is over the {self._max_bytes}-byte cap"
                    )
        except zlib.error:
            raise errors.InvalidResponse(
                f"GET {endpoint}: the compressed answer is corrupt"
            ) from None
        except _TooLarge:
            raise errors.InvalidResponse(
                f"GET {endpoint}: answer is over the {self._max_bytes}-byte cap once decompressed"
            ) from None
        return bytes(body)

    def _redirect(self, endpoint: str, response: httpx.Response) -> Exception:
        """Where a redirect leads, if it may be followed: only within the API's origin,
        so that the key is never sent to another host."""
        status = response.status_code
        try:
            url = response.url.join(response.headers["Location"])
        except (httpx.InvalidURL, UnicodeError, ValueError):
            return errors.Redirected(
                f"GET {endpoint}: HTTP {status} to an invalid URL", status=status
            )
        if _origin(url) != self._origin:
            scheme, host, port = _origin(url)
            return errors.Redirected(
                f"GET {endpoint}: HTTP {status} to another origin, {scheme}://{host}:{port}: "
                "not followed (the key is never sent elsewhere)",
                status=status,
            )
        return _Redirect(url, status)

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


class _TooLarge(Exception):
    pass


class _Redirect(Exception):
    """A same-origin redirect to follow: caught by `_get`, never leaves the client."""

    def __init__(self, url: httpx.URL, status: int) -> None:
        super().__init__(str(url))
        self.url = url
        self.status = status


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    """(scheme, host, port), the port filled in: what must match for a redirect."""
    default = 443 if url.scheme == "https" else 80
    return url.scheme, url.host.lower(), url.port or default


def _inflate(chunks: Iterator[bytes], *, deflate: bool, cap: int) -> Iterator[bytes]:
    """Undo one gzip or deflate layer, never holding more than 64 KiB of its output at
    once and refusing it past `cap` bytes in all: a bomb is refused while it streams."""
    wbits = zlib.MAX_WBITS if deflate else zlib.MAX_WBITS | 16
    decompressor = zlib.decompressobj(wbits)
    produced = 0
    for chunk in chunks:
        data = chunk
        while True:
            out = decompressor.decompress(data, _INFLATE_STEP)
            produced += len(out)
            if produced > cap:
                raise _TooLarge
            if out:
                yield out
            if decompressor.eof and decompressor.unused_data and not deflate:
                data = decompressor.unused_data  # a gzip member follows the first
                decompressor = zlib.decompressobj(wbits)
                continue
            data = decompressor.unconsumed_tail
            if not data and len(out) < _INFLATE_STEP:
                break
    tail = decompressor.flush()
    if produced + len(tail) > cap:
        raise _TooLarge
    if tail:
        yield tail


_INFLATE_STEP = 65536


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
