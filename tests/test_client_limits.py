"""LatitudeClient's limits, each exactly at its value and one step past it: retries,
the cap on a 429's wait, the end of a rejected key's back-off, redirects, the decoded
size of an answer, pages of /projects, product lines of an answer, the API's words kept
for the log, and the backoff's jitter.

A limit tested only beside its boundary lets a `<` written for `<=` through; each test
here holds both sides of one boundary.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from exporter import errors
from exporter.client import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    MAX_DETAIL_CHARS,
    MAX_PROJECT_PAGES,
    MAX_REDIRECTS,
    LatitudeClient,
)
from exporter.config import ApiSettings
from exporter.models import MAX_PRODUCTS_PER_ANSWER, PROJECTS_PAGE_SIZE
from exporter.ratelimit import RequestBudget
from exporter.wiring import stall_margin
from tests.conftest import TOKEN, load_fixture
from tests.transports import StreamingTransport

PROJECT = "proj_r0MK4O4kDa95w"
MakeClient = Callable[..., LatitudeClient]
Handler = Callable[[httpx.Request], httpx.Response]
#: A fraction of a second that binary floats hold exactly: boundaries stay exact.
EPSILON = 2.0**-10
#: The fixture's answer, as the API sends it.
PLAIN = json.dumps(load_fixture("billing_usage_new.json")).encode()


class Script:
    """Answers from a script (the last answer again once it is spent); keeps every
    request."""

    def __init__(self, *answers: Callable[[], httpx.Response]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers[min(len(self.requests), len(self.answers)) - 1]()


def ok() -> httpx.Response:
    return httpx.Response(200, content=PLAIN, headers={"Content-Type": "application/json"})


def status(code: int, **headers: str) -> Callable[[], httpx.Response]:
    return lambda: httpx.Response(code, headers=headers)


class Pauses:
    """A budget double that keeps the pauses a 429 asks for instead of waiting."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self.taken = 0

    def acquire(self) -> float:
        self.taken += 1
        return 0.0

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)


@pytest.fixture
def client_for(make_client: MakeClient) -> Callable[..., LatitudeClient]:
    def make(handler: Handler, **kwargs: Any) -> LatitudeClient:
        kwargs.setdefault("budget", RequestBudget(1e6))
        return make_client(
            "https://api.example",
            transport=StreamingTransport(handler),
            jitter=lambda: 0.0,
            **kwargs,
        )

    return make


ClientFor = Callable[..., LatitudeClient]


# --- retries ----------------------------------------------------------------------------


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_the_last_allowed_retry_is_made_and_not_one_more(
    client_for: ClientFor, max_retries: int
) -> None:
    failing = [status(503)] * max_retries
    just_in_time = Script(*failing, ok)
    client_for(just_in_time, max_retries=max_retries).billing_usage(PROJECT)
    assert len(just_in_time.requests) == max_retries + 1
    one_late = Script(*failing, status(503), ok)
    with pytest.raises(errors.ServerError):
        client_for(one_late, max_retries=max_retries).billing_usage(PROJECT)
    assert len(one_late.requests) == max_retries + 1


def test_every_attempt_takes_a_slot_of_the_budget(client_for: ClientFor) -> None:
    budget = RequestBudget(1e6)
    client_for(Script(status(503), status(502), ok), budget=budget).billing_usage(PROJECT)
    assert budget.grants() == 3


# --- the wait a 429 asks for ------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "waited"),
    [
        ("30", 30.0),  # exactly the cap: as asked
        ("29.5", 29.5),
        ("30.5", 30.0),  # just over: the cap
    ],
)
def test_a_429s_wait_is_honoured_up_to_exactly_the_cap(
    client_for: ClientFor, asked: str, waited: float
) -> None:
    budget = Pauses()
    client = client_for(Script(status(429, **{"Retry-After": asked}), ok), budget=budget)
    client._max_retry_wait = 30.0  # api.max_retry_wait_seconds
    client.billing_usage(PROJECT)
    assert budget.pauses == [waited]


def test_a_429s_wait_in_body_and_header_takes_the_longer(client_for: ClientFor) -> None:
    def limited() -> httpx.Response:
        body = {"errors": [{"meta": {"retry_after": 4}}, {"meta": {"retry_after": 6}}]}
        return httpx.Response(429, json=body, headers={"Retry-After": "5"})

    budget = Pauses()
    client_for(Script(limited, ok), budget=budget).billing_usage(PROJECT)
    assert budget.pauses == [6.0]


# --- a key the API rejected ---------------------------------------------------------------


def test_a_rejected_key_is_sent_again_exactly_when_its_back_off_ends(
    client_for: ClientFor,
) -> None:
    now = [1000.0]
    script = Script(status(401), ok)
    client = client_for(script, clock=lambda: now[0], unauthorized_backoff=300.0)
    with pytest.raises(errors.Unauthorized) as first:
        client.billing_usage(PROJECT)
    assert first.value.status == 401
    now[0] = 1200.0
    with pytest.raises(errors.Unauthorized, match="back-off ends in 100s") as refused:
        client.billing_usage(PROJECT)  # not sent; and a refusal never extends the back-off
    assert refused.value.status == 0
    now[0] = 1300.0 - EPSILON
    with pytest.raises(errors.Unauthorized, match="back-off ends in 1s"):
        client.billing_usage(PROJECT)
    assert len(script.requests) == 1
    now[0] = 1300.0
    client.billing_usage(PROJECT)
    assert len(script.requests) == 2


# --- redirects ------------------------------------------------------------------------


def redirecting(times: int) -> Handler:
    """Redirects each request to the same path with one more `hop`, `times` times."""

    def answer(request: httpx.Request) -> httpx.Response:
        hop = int(request.url.params.get("hop", "0"))
        if hop < times:
            moved = request.url.copy_set_param("hop", str(hop + 1))
            return httpx.Response(308, headers={"Location": str(moved)})
        return ok()

    return answer


def test_exactly_max_redirects_are_followed(client_for: ClientFor) -> None:
    seen: list[str] = []
    budget = RequestBudget(1e6)
    client = client_for(
        redirecting(MAX_REDIRECTS), budget=budget, on_request=lambda e, c: seen.append(c)
    )
    client.billing_usage(PROJECT)
    assert seen == ["308"] * MAX_REDIRECTS + ["200"]
    assert budget.grants() == MAX_REDIRECTS + 1


def test_one_redirect_more_than_max_redirects_is_redirected(client_for: ClientFor) -> None:
    seen: list[str] = []
    client = client_for(
        redirecting(MAX_REDIRECTS + 1), on_request=lambda e, c: seen.append(c), max_retries=0
    )
    with pytest.raises(errors.Redirected, match=f"more than {MAX_REDIRECTS} redirects"):
        client.billing_usage(PROJECT)
    assert seen == ["308"] * (MAX_REDIRECTS + 1)


# --- the size of an answer ------------------------------------------------------------


def padded(size: int) -> bytes:
    """The fixture's answer, made exactly `size` bytes long with trailing spaces."""
    assert size >= len(PLAIN)
    return PLAIN + b" " * (size - len(PLAIN))


def undeclared(body: bytes, encoding: str | None = None) -> httpx.Response:
    """An answer without Content-Length, still encoded as given."""
    headers = {"Content-Encoding": encoding} if encoding else {}
    return httpx.Response(200, stream=httpx.ByteStream(body), headers=headers)


CAP = 8192


@pytest.mark.parametrize(
    "answer",
    [
        lambda body: httpx.Response(200, content=body),  # Content-Length declared
        undeclared,  # counted as it streams in
        lambda body: undeclared(gzip.compress(body), "gzip"),  # counted once decoded
        lambda body: undeclared(gzip.compress(gzip.compress(body)), "gzip, gzip"),
    ],
    ids=["declared", "streamed", "gzip", "gzip-twice"],
)
def test_an_answer_of_exactly_the_cap_is_read_and_one_byte_more_refused(
    make_client: MakeClient, answer: Callable[[bytes], httpx.Response]
) -> None:
    exact = StreamingTransport(lambda request: answer(padded(CAP)))
    make_client(
        "https://api.example", transport=exact, max_response_bytes=CAP, max_retries=0
    ).billing_usage(PROJECT)
    over = StreamingTransport(lambda request: answer(padded(CAP + 1)))
    with pytest.raises(errors.InvalidResponse, match=f"over the {CAP}-byte cap"):
        make_client(
            "https://api.example", transport=over, max_response_bytes=CAP, max_retries=0
        ).billing_usage(PROJECT)


# --- pages of /projects -----------------------------------------------------------------


def pages(count: int) -> Handler:
    """/projects of `count` projects, paged as asked."""

    def answer(request: httpx.Request) -> httpx.Response:
        number = int(request.url.params["page[number]"])
        size = int(request.url.params["page[size]"])
        first = (number - 1) * size
        ids = range(first, min(first + size, count))
        return httpx.Response(200, json={"data": [{"id": f"proj_{i:05d}"} for i in ids]})

    return answer


@pytest.mark.parametrize(
    "count",
    [
        (MAX_PROJECT_PAGES - 1) * PROJECTS_PAGE_SIZE + 7,  # the last page short
        (MAX_PROJECT_PAGES - 1) * PROJECTS_PAGE_SIZE,  # the last page empty
    ],
)
def test_the_last_allowed_page_is_read(client_for: ClientFor, count: int) -> None:
    seen: list[str] = []
    found = client_for(pages(count), on_request=lambda e, c: seen.append(c)).projects()
    assert len(found) == count
    assert len(seen) == MAX_PROJECT_PAGES


def test_a_last_allowed_page_that_is_full_is_an_error_not_a_silent_cut(
    client_for: ClientFor,
) -> None:
    seen: list[str] = []
    client = client_for(
        pages(MAX_PROJECT_PAGES * PROJECTS_PAGE_SIZE), on_request=lambda e, c: seen.append(c)
    )
    with pytest.raises(errors.InvalidResponse, match=f"more than {MAX_PROJECT_PAGES} pages"):
        client.projects()
    assert len(seen) == MAX_PROJECT_PAGES


# --- product lines of an answer -------------------------------------------------------


def products(count: int) -> bytes:
    lines = ",".join(['{"price": 1}'] * count)
    return ('{"data": {"attributes": {"products": [' + lines + "]}}}").encode()


def test_an_answer_of_exactly_max_products_lines_is_read_and_one_more_refused(
    client_for: ClientFor,
) -> None:
    exact = products(MAX_PRODUCTS_PER_ANSWER)
    client_for(lambda request: httpx.Response(200, content=exact)).billing_usage(PROJECT)
    over = products(MAX_PRODUCTS_PER_ANSWER + 1)
    with pytest.raises(errors.InvalidResponse, match=f"over the cap of {MAX_PRODUCTS_PER_ANSWER}"):
        client_for(lambda request: httpx.Response(200, content=over)).billing_usage(PROJECT)


# --- the API's words, kept for the log --------------------------------------------------


@pytest.mark.parametrize(
    ("length", "kept"), [(MAX_DETAIL_CHARS, MAX_DETAIL_CHARS), (MAX_DETAIL_CHARS + 1, None)]
)
def test_the_apis_words_are_kept_up_to_exactly_max_detail_chars(
    client_for: ClientFor, length: int, kept: int | None
) -> None:
    detail = "".join(chr(ord("a") + i % 26) for i in range(length))
    body = {"errors": [{"detail": detail}]}
    with pytest.raises(errors.Forbidden) as caught:
        client_for(lambda request: httpx.Response(403, json=body), token=TOKEN).billing_usage(
            PROJECT
        )
    message = str(caught.value)
    if kept is not None:
        assert message.endswith(f"HTTP 403: {detail}")
    else:
        assert message.endswith(f"HTTP 403: {detail[:MAX_DETAIL_CHARS]}…")


# --- backoff ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("jitter", "delays"),
    [
        (0.0, [0.5, 1.0, 2.0, 2.5, 2.5]),  # half the ceiling
        (0.5, [0.75, 1.5, 3.0, 3.75, 3.75]),
        (1.0, [1.0, 2.0, 4.0, 5.0, 5.0]),  # the ceiling: min(cap, base x 2^n)
    ],
)
def test_backoff_is_jittered_over_the_upper_half_of_its_ceiling(
    make_client: MakeClient, jitter: float, delays: list[float]
) -> None:
    client = make_client(
        "https://api.example",
        transport=StreamingTransport(lambda request: ok()),
        backoff_base=1.0,
        backoff_cap=5.0,
        jitter=lambda: jitter,
    )
    failure = errors.ServerError("HTTP 503", status=503)
    assert [client._delay(failure, attempt) for attempt in range(5)] == delays


@pytest.mark.parametrize("retries", range(11))
def test_the_longest_backoff_is_what_the_stall_margin_allows(
    make_client: MakeClient, retries: int
) -> None:
    """The watchdog's margin (`wiring.stall_margin`) is every attempt at its timeout and
    the longest backoff before each retry: the client's backoff at its most (jitter 1)."""
    api = ApiSettings(timeout_seconds=7.0, max_retries=retries)
    client = make_client(
        "https://api.example",
        transport=StreamingTransport(lambda request: ok()),
        backoff_base=BACKOFF_BASE_SECONDS,
        backoff_cap=BACKOFF_CAP_SECONDS,
        jitter=lambda: 1.0,
    )
    failure = errors.Timeout("slow")
    waits = sum(client._delay(failure, attempt) for attempt in range(retries))
    assert stall_margin(api) == api.timeout_seconds * (retries + 1) + waits
