"""The typed errors of the Latitude.sh API client, each carrying its metric `reason`.

The hierarchy:

    LatitudeError                     reason
     ├── ApiStatusError               (an HTTP answer we cannot use)
     │    ├── Unauthorized            unauthorized      401
     │    ├── Forbidden               forbidden         403
     │    ├── NotFound                not_found         404
     │    ├── RateLimited             rate_limited      429, carries retry_after
     │    ├── ServerError             server_error      5xx
     │    └── UnexpectedStatus        invalid_response  any other non-2xx
     ├── TransportError               (no HTTP answer at all)
     │    ├── Timeout                 timeout
     │    └── NetworkError            network
     ├── InvalidResponse              invalid_response  bad JSON, wrong shape, too large
     └── Cancelled                    cancelled         the exporter is shutting down

Callers catch by class and read `reason`; nobody matches on message text. Messages
never contain the API token: the client builds them from the method, path and status
only.
"""

from __future__ import annotations

#: Every reason a poll can fail with, in the order the metrics list them.
POLL_ERROR_REASONS: tuple[str, ...] = (
    "unauthorized",
    "forbidden",
    "not_found",
    "rate_limited",
    "server_error",
    "timeout",
    "network",
    "invalid_response",
)


class LatitudeError(Exception):
    """Base of every error the client raises."""

    reason = "invalid_response"
    #: Whether trying the same request again may succeed.
    retryable = False


class ApiStatusError(LatitudeError):
    """The API answered with a status we cannot use."""

    def __init__(self, message: str, *, status: int, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Unauthorized(ApiStatusError):
    reason = "unauthorized"


class Forbidden(ApiStatusError):
    reason = "forbidden"


class NotFound(ApiStatusError):
    reason = "not_found"


class RateLimited(ApiStatusError):
    reason = "rate_limited"
    retryable = True

    def __init__(
        self, message: str, *, status: int = 429, code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        #: Seconds the API asked us to wait, if it said.
        self.retry_after = retry_after


class ServerError(ApiStatusError):
    reason = "server_error"
    retryable = True


class UnexpectedStatus(ApiStatusError):
    reason = "invalid_response"


class TransportError(LatitudeError):
    """No HTTP answer arrived."""

    retryable = True


class Timeout(TransportError):
    reason = "timeout"


class NetworkError(TransportError):
    reason = "network"


class InvalidResponse(LatitudeError):
    """An answer arrived but is not a usable billing-usage or projects document."""

    reason = "invalid_response"


class Cancelled(LatitudeError):
    """The exporter is shutting down; the request was not (or no longer) made."""

    reason = "cancelled"
