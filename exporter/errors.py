"""The typed errors of the Latitude.sh API client, each carrying its metric `reason`.

The hierarchy:

    LatitudeError                     reason
     ├── ApiStatusError               (an HTTP answer we cannot use)
     │    ├── Unauthorized            unauthorized      401
     │    ├── Forbidden               forbidden         403
     │    ├── NotFound                not_found         404
     │    ├── RateLimited             rate_limited      429, carries retry_after
     │    ├── ServerError             server_error      5xx
     │    ├── Redirected              redirected        3xx to another origin, or too many
     │    └── UnexpectedStatus        invalid_response  any other non-2xx
     ├── TransportError               (no complete HTTP answer)
     │    ├── Timeout                 timeout           over api.timeout_seconds, end to end
     │    └── NetworkError            network
     ├── InvalidResponse              invalid_response  bad JSON, wrong shape, too large
     ├── TokenUnavailable             token_unreadable  token file missing, empty, unreadable
     ├── Unexpected                   invalid_response  any other exception in a poll
     │   (no error class)             stalled           no outcome within the interval (watchdog)
     └── Cancelled                    cancelled         the exporter is shutting down

Callers catch by class and read `reason`; nobody matches on message text. `attempt` is
the poll boundary: whatever a poll or a discovery raises comes back as one of these. Messages
never contain the API token: the client builds them from the method, path and status,
and scrubs the API's own words of the token before it shortens them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Every reason a poll or a discovery can fail with, in the order the metrics list them.
POLL_ERROR_REASONS: tuple[str, ...] = (
    "unauthorized",
    "forbidden",
    "not_found",
    "rate_limited",
    "server_error",
    "timeout",
    "network",
    "invalid_response",
    "token_unreadable",
    "stalled",
    "redirected",
)
#: What a failure that is not a `LatitudeError` (a bug, or a hostile answer that found a
#: way past the parser) is counted as: the answer could not be used.
UNEXPECTED_REASON = "invalid_response"


class LatitudeError(Exception):
    """Base of every error the client raises."""

    reason = "invalid_response"
    #: Whether trying the same request again may succeed.
    retryable = False


class ApiStatusError(LatitudeError):
    """The API answered with a status we cannot use."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class Unauthorized(ApiStatusError):
    reason = "unauthorized"


class Forbidden(ApiStatusError):
    reason = "forbidden"


class NotFound(ApiStatusError):
    reason = "not_found"


class RateLimited(ApiStatusError):
    reason = "rate_limited"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, status=429)
        #: Seconds the API asked us to wait, if it said; finite and not negative.
        self.retry_after = retry_after


class ServerError(ApiStatusError):
    reason = "server_error"
    retryable = True


class Redirected(ApiStatusError):
    """A redirect that is not followed: to another origin (the key is never sent
    there) or one hop too many."""

    reason = "redirected"


class UnexpectedStatus(ApiStatusError):
    reason = "invalid_response"


class TransportError(LatitudeError):
    """No complete HTTP answer arrived."""

    retryable = True


class Timeout(TransportError):
    reason = "timeout"


class NetworkError(TransportError):
    reason = "network"


class InvalidResponse(LatitudeError):
    """An answer arrived but is not a usable billing-usage or projects document."""

    reason = "invalid_response"


class TokenUnavailable(LatitudeError):
    """The token could not be read (file gone, empty, unreadable, not ASCII).

    Retryable: a Kubernetes or Docker secret being rotated can vanish for a moment.
    """

    reason = "token_unreadable"
    retryable = True


class Unexpected(LatitudeError):
    """An exception nobody foresaw ended a poll or a discovery: counted as an answer
    that could not be used, so that it is visible instead of freezing the data."""

    reason = UNEXPECTED_REASON


class Cancelled(LatitudeError):
    """The exporter is shutting down; the request was not (or no longer) made."""

    reason = "cancelled"


def attempt(call: Callable[[], T]) -> T | LatitudeError:
    """`call()`, or the error it ended in, as a `LatitudeError` with a reason.

    The poll boundary's broad catch: a poll or a discovery must never end without a
    counted reason, and a hostile answer that finds an exception nobody thought of is
    still a failed poll, not a frozen one. The exception is kept as `__cause__` for
    the traceback (logged at debug level only).
    """
    try:
        return call()
    except LatitudeError as exc:
        return exc
    except Exception as exc:
        unexpected = Unexpected(f"unexpected {type(exc).__name__}")
        unexpected.__cause__ = exc
        return unexpected
