"""`LatitudeClient`: the HTTP side of the exporter; returns models or raises `errors.*`.

Every request goes through one `RequestBudget`, is retried with capped exponential
backoff and jitter on 429, 5xx, timeouts and connection errors, honours the wait a 429
asks for, and is reported to `on_request(endpoint, code)` for the request counter.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import SecretStr, ValidationError

from exporter import __version__, errors
from exporter.models import (
    BillingUsageDocument,
    ProjectResource,
    ProjectsPage,
    UsageAttributes,
    parse_error_document,
)
from exporter.ratelimit import RequestBudget

log = logging.getLogger(__name__)

USAGE_ENDPOINT = "/billing/usage"
PROJECTS_ENDPOINT = "/projects"
#: Pins the response shape; see the spec's info.version.
API_VERSION = "2023-06-01"
PROJECTS_PAGE_SIZE = 100
_MAX_PROJECT_PAGES = 1000
USER_AGENT = (
    f"latitudesh-exporter/{__version__} "
    f"(python {sys.version_info.major}.{sys.version_info.minor}; httpx {httpx.__version__})"
)

RequestObserver = Callable[[str, str], None]
Params = list[tuple[str, str | int | float | bool | None]]


class LatitudeClient:
    def __init__(
        self,
        *,
        token: Callable[[], SecretStr],
        budget: RequestBudget,
        base_url: str = "https://api.latitude.sh",
        timeout: float = 15.0,
        max_retries: int = 3,
        max_retry_wait: float = 120.0,
        max_response_bytes: int = 64 * 1024 * 1024,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        unauthorized_backoff: float = 300.0,
        transport: httpx.BaseTransport | None = None,
        on_request: RequestObserver | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
        max_connections: int = 10,
    ) -> None:
        self._token = token
        self._budget = budget
        self._max_retries = max_retries
        self._max_retry_wait = max_retry_wait
        self._max_bytes = max_response_bytes
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._unauthorized_backoff = unauthorized_backoff
        self._on_request = on_request or (lambda endpoint, code: None)
        self._stop = stop or threading.Event()
        self._clock = clock
        self._jitter = jitter
        self._rejected: tuple[int, float] | None = None
        self._rejected_lock = threading.Lock()
        self._http = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=max_connections),
            headers={
                "Accept": "application/vnd.api+json, application/json;q=0.9",
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
        payload = self._get(USAGE_ENDPOINT, params)
        try:
            document = BillingUsageDocument.model_validate(payload)
        except ValidationError as exc:
            raise errors.InvalidResponse(
                f"GET {USAGE_ENDPOINT}: not a billing_usage document ({exc.error_count()} "
                "problems)"
            ) from None
        usage = document.usage_for(project_id)
        if usage is None:
            raise errors.InvalidResponse(
                f"GET {USAGE_ENDPOINT}: the answer holds no usage for the requested project"
            )
        return usage

    def projects(self) -> list[ProjectResource]:
        """Every project the key can see. The API gives no page count: stop at a short page."""
        found: list[ProjectResource] = []
        for number in range(1, _MAX_PROJECT_PAGES + 1):
            payload = self._get(
                PROJECTS_ENDPOINT,
                [("page[size]", str(PROJECTS_PAGE_SIZE)), ("page[number]", str(number))],
            )
            try:
                page = ProjectsPage.model_validate(payload)
            except ValidationError:
                raise errors.InvalidResponse(
                    f"GET {PROJECTS_ENDPOINT}: not a list of projects"
                ) from None
            found.extend(project for project in page.data if project.id)
            if len(page.data) < PROJECTS_PAGE_SIZE:
                break
        return found

    def _get(self, endpoint: str, params: Params) -> Any:
        attempt = 0
        while True:
            token = self._token()
            self._refuse_rejected_token(endpoint, token)
            self._budget.acquire()
            try:
                return self._get_once(endpoint, params, token)
            except errors.LatitudeError as exc:
                if isinstance(exc, errors.Unauthorized):
                    self._remember_rejected(token)
                if not exc.retryable or attempt >= self._max_retries:
                    raise
                delay = self._delay(exc, attempt)
                log.debug(
                    "retrying request",
                    extra={"endpoint": endpoint, "reason": exc.reason,
                           "attempt": attempt + 1, "delay_seconds": round(delay, 3)},
                )
                if isinstance(exc, errors.RateLimited):
                    self._budget.pause(delay)  # the whole key waits, not just this call
                elif self._stop.wait(delay):
                    raise errors.Cancelled("shutting down") from None
                attempt += 1

    def _delay(self, exc: errors.LatitudeError, attempt: int) -> float:
        if isinstance(exc, errors.RateLimited) and exc.retry_after is not None:
            # A wait of hours (seen from misbehaving proxies) must not park the poller.
            return float(min(max(exc.retry_after, 0.0), self._max_retry_wait))
        ceiling = min(self._backoff_cap, self._backoff_base * 2.0**attempt)
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
                status=401,
            )

    def _remember_rejected(self, token: SecretStr) -> None:
        with self._rejected_lock:
            self._rejected = (
                hash(token.get_secret_value()),
                self._clock() + self._unauthorized_backoff,
            )

    def _get_once(self, endpoint: str, params: Params, token: SecretStr) -> Any:
        headers = {"Authorization": token.get_secret_value()}
        try:
            with self._http.stream("GET", endpoint, params=params, headers=headers) as response:
                self._on_request(endpoint, str(response.status_code))
                body = self._read_capped(endpoint, response)
        except httpx.TimeoutException:
            self._on_request(endpoint, "timeout")
            raise errors.Timeout(f"GET {endpoint}: timed out") from None
        except httpx.HTTPError as exc:
            self._on_request(endpoint, "network")
            raise errors.NetworkError(f"GET {endpoint}: {type(exc).__name__}") from None
        if response.is_success:
            return self._decode(endpoint, body, response)
        raise self._status_error(endpoint, response, body, token)

    def _read_capped(self, endpoint: str, response: httpx.Response) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise errors.InvalidResponse(
                f"GET {endpoint}: answer of {declared} bytes is over the "
                f"{self._max_bytes}-byte cap"
            )
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self._max_bytes:
                raise errors.InvalidResponse(
                    f"GET {endpoint}: answer is over the {self._max_bytes}-byte cap"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _decode(endpoint: str, body: bytes, response: httpx.Response) -> Any:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            kind = response.headers.get("Content-Type", "no content type").split(";")[0]
            raise errors.InvalidResponse(
                f"GET {endpoint}: answer is not JSON ({kind}, {len(body)} bytes)"
            ) from None
        if not isinstance(payload, dict):
            raise errors.InvalidResponse(f"GET {endpoint}: answer is not a JSON object")
        return payload

    def _status_error(
        self, endpoint: str, response: httpx.Response, body: bytes, token: SecretStr
    ) -> errors.ApiStatusError:
        try:
            document = parse_error_document(json.loads(body))
        except (ValueError, UnicodeDecodeError):
            document = parse_error_document(None)
        status = response.status_code
        # The API's own words go into logs; an API that echoes the key must not leak it.
        detail = document.summary.replace(token.get_secret_value(), "<redacted>")
        message = f"GET {endpoint}: HTTP {status}" + (f": {detail}" if detail else "")
        code = document.errors[0].code if document.errors else document.code
        if status == 429:
            waits = [
                wait for wait in (document.retry_after, _retry_after_header(response))
                if wait is not None
            ]
            return errors.RateLimited(
                message, code=code, retry_after=max(waits) if waits else None
            )
        kind: type[errors.ApiStatusError] = {
            401: errors.Unauthorized,
            403: errors.Forbidden,
            404: errors.NotFound,
        }.get(status, errors.ServerError if status >= 500 else errors.UnexpectedStatus)
        return kind(message, status=status, code=code)


def _retry_after_header(response: httpx.Response) -> float | None:
    """`Retry-After` as delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
