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
#: Each reason in a few words, for people (the status page).
REASON_WORDS: dict[str, str] = {
    "unauthorized": "key rejected (401)",
    "forbidden": "forbidden (403)",
    "not_found": "project not found (404)",
    "rate_limited": "rate limited (429)",
    "server_error": "the API failed (5xx)",
    "timeout": "timed out",
    "network": "the API is unreachable",
    "invalid_response": "an unusable answer",
    "token_unreadable": "the key cannot be read",
    "stalled": "polling stalled",
    "redirected": "redirected elsewhere",
}
#: What to do, by reason: the hint of the log line and of the status page. `{origin}`
#: is where the team's key comes from (`TokenSource.origin`).
HINTS: dict[str, str] = {
    "unauthorized": "the API rejected the key from {origin}: put a valid key there (requests "
    "with the rejected key pause for 5 minutes; a changed key is tried at once)",
    "forbidden": "the key may not read this: for a project's billing, check its id and the "
    "key's team; for /projects, list the projects and set the currency in the config",
    "not_found": "unknown project id: check projects[].id in the config",
    "rate_limited": "the API key is over its rate limit: lower requests_per_minute, or "
    "check what else uses this key",
    "server_error": "the Latitude.sh API failed; retried with backoff",
    "timeout": "the Latitude.sh API did not answer in api.timeout_seconds",
    "network": "could not reach the Latitude.sh API: check api.base_url, DNS and egress",
    "invalid_response": "the API answered with something that is not usable (the log line "
    "names the problem)",
    "redirected": "the API redirected elsewhere than its own origin (not followed: the "
    "key is never sent to another host), or in a loop: check api.base_url",
    "token_unreadable": "{origin} is missing, empty or unreadable: check the mounted "
    "secret (it is read again at every request)",
    "stalled": "no poll outcome in the time the schedule allows: the API may hang; the "
    "schedule is restarted",
}


def hint(reason: str, origin: str = "the configured key") -> str:
    """What to do about `reason`, naming where the key comes from."""
    return HINTS.get(reason, "").format(origin=origin)


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
