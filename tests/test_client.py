"""LatitudeClient: headers, retries and backoff, 429 waits, typed errors, pagination, and
answers bounded in time, size and values, each request counted once."""

from __future__ import annotations

import gzip
import json
import random
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from exporter import errors
from exporter.client import (
    API_VERSION,
    MAX_PROJECT_PAGES,
    MAX_REDIRECTS,
    LatitudeClient,
)
from exporter.config import ApiSettings
from exporter.models import MAX_PRODUCTS_PER_ANSWER, PROJECTS_PAGE_SIZE
from exporter.ratelimit import RequestBudget
from testing.fakeapi import FakeApi, Fault
from tests.conftest import TOKEN, frozen_account, load_fixture
from tests.transports import StreamingTransport

Handler = Callable[[httpx.Request], httpx.Response]
MakeClient = Callable[..., LatitudeClient]
PROJECT = "proj_r0MK4O4kDa95w"


class Recorder:
    """A transport's handler that answers from a script and keeps every request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def ok(payload: Any = None) -> httpx.Response:
    return httpx.Response(
        200,
        json=payload or load_fixture("billing_usage_new.json"),
        headers={"Content-Type": "application/vnd.api+json"},
    )


def encoded(status: int, body: bytes, encoding: str, **headers: str) -> httpx.Response:
    """An answer whose body is `body` as the server sent it, still encoded: built from a
    stream, because `httpx.Response(content=...)` would decode it at once."""
    return httpx.Response(
        status, stream=httpx.ByteStream(body), headers={"Content-Encoding": encoding, **headers}
    )


class Slots:
    """A budget double that counts the slots taken; each grant moves the client's clock
    `wait` seconds on (a wait for the budget), and grant number `stop_at` is refused
    as at shutdown."""

    def __init__(self, clock: list[float], wait: float = 0.0, stop_at: int = 0) -> None:
        self.clock = clock
        self.wait = wait
        self.stop_at = stop_at
        self.taken = 0

    def acquire(self) -> float:
        if self.taken + 1 == self.stop_at:
            raise errors.Cancelled("shutting down")
        self.taken += 1
        self.clock[0] += self.wait
        return self.clock[0]

    def pause(self, seconds: float) -> None:
        pass


class Pauses:
    """A budget double that records the pauses a 429 asks for instead of waiting."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    def acquire(self) -> float:
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


def test_sends_raw_token_version_accept_and_user_agent(client_for: ClientFor) -> None:
    recorder = Recorder(ok())
    client_for(recorder, token=TOKEN).billing_usage(PROJECT)
    (request,) = recorder.requests
    assert request.headers["Authorization"] == TOKEN
    assert request.headers["API-Version"] == API_VERSION
    assert request.headers["Accept"].startswith("application/vnd.api+json")
    assert request.headers["Accept-Encoding"] == "gzip, deflate"
    assert request.headers["User-Agent"].startswith("latitudesh-exporter/")
    assert request.url.path == "/billing/usage"
    assert request.url.params.get_list("filter[project]") == [PROJECT]


def test_plan_and_product_filters_are_sent(client_for: ClientFor) -> None:
    recorder = Recorder(ok())
    client_for(recorder).billing_usage(PROJECT, plan="c2-small-x86", products=["si_a", "si_b"])
    params = recorder.requests[0].url.params
    assert params["filter[plan]"] == "c2-small-x86"
    assert params.get_list("filter[products][]") == ["si_a", "si_b"]


def test_plain_json_content_type_is_accepted(client_for: ClientFor) -> None:
    answer = httpx.Response(
        200,
        content=json.dumps(load_fixture("billing_usage_new.json")),
        headers={"Content-Type": "application/json"},
    )
    assert client_for(Recorder(answer)).billing_usage(PROJECT).attributes.price == 51230


def test_server_errors_are_retried_then_succeed(client_for: ClientFor) -> None:
    recorder = Recorder(httpx.Response(500), httpx.Response(503), ok())
    seen: list[tuple[str, str]] = []
    client = client_for(recorder, on_request=lambda e, c: seen.append((e, c)))
    assert client.billing_usage(PROJECT).attributes.price == 51230
    assert len(recorder.requests) == 3
    assert seen == [("/billing/usage", "500"), ("/billing/usage", "503"), ("/billing/usage", "200")]


def test_backoff_jitter_leaves_the_global_random_state_alone(make_client: MakeClient) -> None:
    """Threads of the daemon retry while the application (or Hypothesis, in this suite)
    relies on the global generator: the client draws its jitter from its own."""
    recorder = Recorder(httpx.Response(503), httpx.Response(503), ok())
    client = make_client(
        "https://api.example",
        transport=StreamingTransport(recorder),
        budget=RequestBudget(1e6),
        backoff_base=0.001,
    )
    random.seed(7)
    before = random.getstate()
    assert client.billing_usage(PROJECT).attributes.price == 51230
    assert len(recorder.requests) == 3
    assert random.getstate() == before


def test_retries_stop_after_max_retries(client_for: ClientFor) -> None:
    recorder = Recorder(httpx.Response(502))
    with pytest.raises(errors.ServerError) as caught:
        client_for(recorder, max_retries=2).billing_usage(PROJECT)
    assert len(recorder.requests) == 3
    assert caught.value.reason == "server_error"


def test_backoff_grows_exponentially_and_never_overflows(client_for: ClientFor) -> None:
    client = client_for(Recorder(ok()), backoff_base=1.0, backoff_cap=5.0)
    delays = [client._delay(errors.ServerError("x", status=500), n) for n in range(5)]
    assert delays == [0.5, 1.0, 2.0, 2.5, 2.5]  # jitter 0: half of min(cap, base * 2^n)
    assert client._delay(errors.ServerError("x", status=500), 10_000) == 2.5


@pytest.mark.parametrize(
    ("headers", "body_wait", "expected"),
    [
        ({}, 7, 7.0),  # in the body only
        ({"Retry-After": "3"}, None, 3.0),  # in the header only
        ({"Retry-After": "9"}, 4, 9.0),  # both: the longer wait wins
        ({"Retry-After": "99999"}, None, 120.0),  # a huge wait is capped
        ({"Retry-After": "1e999"}, None, 1.0),  # infinite: no wait honoured, backoff
        ({"Retry-After": "Fri, 31 Dec 99999 23:59:59 GMT"}, None, 1.0),  # no such date
        ({"Retry-After": "-5"}, None, 0.0),
        ({}, 10**400, 1.0),  # does not fit a float
        ({}, "1e308", 1.0),  # absurd: read as missing, backoff
        ({}, "86400", 120.0),  # long but real: capped
    ],
)
def test_429_waits_as_asked_for_the_whole_key(
    client_for: ClientFor, headers: dict[str, str], body_wait: object, expected: float
) -> None:
    meta = {"retry_after": body_wait} if body_wait is not None else {}
    limited = httpx.Response(
        429, headers=headers, content=json.dumps({"errors": [{"status": "429", "meta": meta}]})
    )
    budget = Pauses()
    client = client_for(Recorder(limited, ok()), budget=budget, backoff_base=2.0)
    assert client.billing_usage(PROJECT).attributes.price == 51230
    assert budget.pauses == [expected]


def test_429_http_date_retry_after_is_understood(client_for: ClientFor) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    budget = Pauses()
    client = client_for(
        Recorder(httpx.Response(429, headers={"Retry-After": when}), ok()), budget=budget
    )
    client.billing_usage(PROJECT)
    assert 25 <= budget.pauses[0] <= 30


def test_persistent_429_raises_rate_limited_with_the_wait(client_for: ClientFor) -> None:
    limited = httpx.Response(429, json=load_fixture("error_429.json"))
    with pytest.raises(errors.RateLimited) as caught:
        client_for(Recorder(limited), budget=Pauses(), max_retries=1).billing_usage(PROJECT)
    assert caught.value.retry_after == 7.0
    assert "Rate limit exceeded" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [
        (401, errors.Unauthorized, "unauthorized"),
        (403, errors.Forbidden, "forbidden"),
        (404, errors.NotFound, "not_found"),
        (400, errors.UnexpectedStatus, "invalid_response"),
        (422, errors.UnexpectedStatus, "invalid_response"),
        (302, errors.UnexpectedStatus, "invalid_response"),
    ],
)
def test_client_errors_are_typed_and_not_retried(
    client_for: ClientFor, status: int, error: type[errors.LatitudeError], reason: str
) -> None:
    recorder = Recorder(httpx.Response(status, json={"errors": [{"title": "Nope"}]}))
    with pytest.raises(error) as caught:
        client_for(recorder).billing_usage(PROJECT)
    assert caught.value.reason == reason
    assert len(recorder.requests) == 1
    assert f"HTTP {status}: Nope" in str(caught.value)


def test_a_rejected_token_is_not_sent_again_until_the_backoff_ends(
    client_for: ClientFor,
) -> None:
    now = [1000.0]
    recorder = Recorder(httpx.Response(401), ok())
    client = client_for(recorder, clock=lambda: now[0], unauthorized_backoff=300)
    for _ in range(3):
        with pytest.raises(errors.Unauthorized):
            client.billing_usage(PROJECT)
    assert len(recorder.requests) == 1
    now[0] += 301
    assert client.billing_usage(PROJECT).attributes.price == 51230
    assert len(recorder.requests) == 2


def test_a_rotated_token_is_tried_at_once_after_a_401() -> None:
    current = ["old-token"]
    recorder = Recorder(httpx.Response(401), ok())
    with LatitudeClient(
        token=lambda: SecretStr(current[0]),
        budget=RequestBudget(1e6),
        api=ApiSettings(base_url="https://x"),
        transport=StreamingTransport(recorder),
    ) as client:
        with pytest.raises(errors.Unauthorized):
            client.billing_usage(PROJECT)
        current[0] = "new-token"
        assert client.billing_usage(PROJECT).attributes.price == 51230
    assert [r.headers["Authorization"] for r in recorder.requests] == ["old-token", "new-token"]


def test_an_unreadable_token_is_its_own_reason_and_retried(client_for: ClientFor) -> None:
    calls = [0]

    def token() -> SecretStr:
        calls[0] += 1
        if calls[0] == 1:  # a secret being rotated vanishes for a moment
            raise errors.TokenUnavailable("api.token_file: gone")
        return SecretStr(TOKEN)

    recorder = Recorder(ok())
    client = client_for(recorder)
    client._token = token
    assert client.billing_usage(PROJECT).attributes.price == 51230
    client._token = lambda: (_ for _ in ()).throw(errors.TokenUnavailable("gone for good"))
    with pytest.raises(errors.TokenUnavailable) as caught:
        client.billing_usage(PROJECT)
    assert caught.value.reason == "token_unreadable"


@pytest.mark.parametrize(
    ("exc", "error", "code"),
    [
        (httpx.ReadTimeout("slow"), errors.Timeout, "timeout"),
        (httpx.ConnectTimeout("slow"), errors.Timeout, "timeout"),
        (httpx.ConnectError("refused"), errors.NetworkError, "network"),
        (httpx.RemoteProtocolError("reset"), errors.NetworkError, "network"),
    ],
)
def test_transport_failures_are_retried_then_typed(
    client_for: ClientFor, exc: Exception, error: type[errors.LatitudeError], code: str
) -> None:
    seen: list[str] = []
    recorder = Recorder(exc)
    with pytest.raises(error):
        client_for(recorder, max_retries=2, on_request=lambda e, c: seen.append(c)).billing_usage(
            PROJECT
        )
    assert seen == [code] * 3


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, content=b"<html>oops</html>", headers={"Content-Type": "text/html"}),
        httpx.Response(200, content=b'{"data": {"attri'),
        httpx.Response(200, json=[1, 2, 3]),
        httpx.Response(200, json={"data": {}}),
        httpx.Response(200, json={"data": "a string"}),
        httpx.Response(200, content=b"[" * 200_000 + b"]" * 200_000),
        httpx.Response(200, content=b'{"data": ' * 100_000 + b"1" + b"}" * 100_000),
    ],
)
def test_unusable_answers_are_invalid_response(
    client_for: ClientFor, answer: httpx.Response
) -> None:
    recorder = Recorder(answer)
    with pytest.raises(errors.InvalidResponse):
        client_for(recorder).billing_usage(PROJECT)
    assert len(recorder.requests) == 1  # a malformed answer is not retried


def test_answers_with_more_product_lines_than_the_cap_are_refused(client_for: ClientFor) -> None:
    products = ",".join(["{}"] * (MAX_PRODUCTS_PER_ANSWER + 1))
    body = ('{"data": {"attributes": {"products": [' + products + "]}}}").encode()
    with pytest.raises(errors.InvalidResponse, match="over the cap of 10000"):
        client_for(Recorder(httpx.Response(200, content=body))).billing_usage(PROJECT)


def test_answers_over_the_size_cap_are_refused(client_for: ClientFor) -> None:
    big = httpx.Response(
        200, content=b" " * 5000 + json.dumps(load_fixture("billing_usage_new.json")).encode()
    )
    with pytest.raises(errors.InvalidResponse, match="over the 4096-byte cap"):
        client_for(Recorder(big), max_response_bytes=4096).billing_usage(PROJECT)


PLAIN = json.dumps(load_fixture("billing_usage_new.json")).encode()


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),  # deflate as the RFC says: in a zlib wrapper
        ("deflate", lambda data: zlib.compress(data, wbits=-15)),  # raw, as servers send
        ("gzip, gzip", lambda data: gzip.compress(gzip.compress(data))),
        ("identity", lambda data: data),
    ],
)
def test_encoded_answers_are_decoded_by_httpx(
    make_client: MakeClient, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    transport = StreamingTransport(lambda request: encoded(200, compress(PLAIN), encoding))
    usage = (
        make_client("https://api.example", transport=transport).billing_usage(PROJECT).attributes
    )
    assert usage.price == 51230


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "x-gzip", "gzip, gzip, gzip"])
def test_encodings_that_cannot_be_bounded_are_refused_before_the_body_is_read(
    make_client: MakeClient, encoding: str
) -> None:
    """httpx would skip an encoding it does not know and hand over the bytes as they
    are; a third gzip layer could yield a GiB from one byte."""
    transport = StreamingTransport(lambda request: encoded(200, b"\x00" * 100_000, encoding))
    with pytest.raises(errors.InvalidResponse, match="unsupported Content-Encoding"):
        make_client("https://api.example", transport=transport).billing_usage(PROJECT)
    assert transport.streamed == 0


def test_a_corrupt_compressed_answer_is_invalid_response(make_client: MakeClient) -> None:
    corrupt = gzip.compress(PLAIN)[:20] + b"\xff" * 200
    transport = StreamingTransport(lambda request: encoded(200, corrupt, "gzip"))
    with pytest.raises(errors.InvalidResponse, match="corrupt"):
        make_client("https://api.example", transport=transport).billing_usage(PROJECT)


def test_a_bomb_is_refused_once_its_decoded_bytes_pass_the_cap(make_client: MakeClient) -> None:
    """Counted as httpx decodes: 64 MiB of spaces, gzipped twice to 64 KiB, is refused
    after a few hundred raw bytes."""
    bomb = gzip.compress(gzip.compress(b" " * (64 * 1024 * 1024)))
    transport = StreamingTransport(lambda request: encoded(200, bomb, "gzip, gzip"))
    client = make_client("https://api.example", transport=transport, max_response_bytes=2**20)
    with pytest.raises(errors.InvalidResponse, match="over the 1048576-byte cap once decompressed"):
        client.billing_usage(PROJECT)
    assert transport.streamed <= 64 * 1024  # one piece of the socket, not the body


def test_projects_are_paged_until_a_short_page(client_for: ClientFor) -> None:
    def page(n: int) -> httpx.Response:
        items = [
            {"id": f"proj_{n}_{i}", "attributes": {"name": f"p{i}"}}
            for i in range(PROJECTS_PAGE_SIZE if n < 3 else 7)
        ]
        return httpx.Response(200, json={"data": items})

    recorder = Recorder(page(1), page(2), page(3))
    projects = client_for(recorder).projects()
    assert len(projects) == 2 * PROJECTS_PAGE_SIZE + 7
    assert [r.url.params["page[number]"] for r in recorder.requests] == ["1", "2", "3"]
    assert recorder.requests[0].url.params["page[size]"] == str(PROJECTS_PAGE_SIZE)


def test_projects_stop_at_an_empty_page(client_for: ClientFor) -> None:
    full = httpx.Response(200, json={"data": [{"id": f"p{i}"} for i in range(100)]})
    recorder = Recorder(full, httpx.Response(200, json={"data": []}))
    assert len(client_for(recorder).projects()) == 100
    assert len(recorder.requests) == 2


def test_a_page_with_no_new_project_is_an_error_not_a_loop(client_for: ClientFor) -> None:
    same = httpx.Response(200, json={"data": [{"id": f"p{i}"} for i in range(100)]})
    recorder = Recorder(same)
    with pytest.raises(errors.InvalidResponse, match="page 2 brings no new project"):
        client_for(recorder).projects()
    assert len(recorder.requests) == 2


def test_pages_that_never_end_stop_at_the_page_cap(client_for: ClientFor) -> None:
    def endless(request: httpx.Request) -> httpx.Response:
        number = int(request.url.params["page[number]"])
        return httpx.Response(200, json={"data": [{"id": f"p{number}_{i}"} for i in range(100)]})

    seen: list[str] = []
    with pytest.raises(errors.InvalidResponse, match="more than 100 pages"):
        client_for(endless, on_request=lambda e, c: seen.append(c)).projects()
    assert len(seen) == MAX_PROJECT_PAGES


@pytest.mark.parametrize(
    "body", [b"{}", b'{"data": null}', b'{"data": {"id": "p"}}', b'{"errors": []}']
)
def test_a_projects_answer_without_a_data_list_is_invalid_response(
    client_for: ClientFor, body: bytes
) -> None:
    with pytest.raises(errors.InvalidResponse):
        client_for(Recorder(httpx.Response(200, content=body))).projects()


def test_check_key_makes_one_request_for_one_project(client_for: ClientFor) -> None:
    recorder = Recorder(httpx.Response(200, content=(load_fixture_bytes("projects_page.json"))))
    found = client_for(recorder).check_key()
    assert (found.sees_projects, found.currency, found.team) == (True, "BRL", "176-team")
    (request,) = recorder.requests
    assert request.url.params["page[size]"] == "1"


def load_fixture_bytes(name: str) -> bytes:
    return json.dumps(load_fixture(name)).encode()


# --- over real sockets, against the fake API -----------------------------------------


def test_real_socket_round_trip_in_both_shapes(fake_api: FakeApi, make_client: MakeClient) -> None:
    client = make_client(fake_api.url)
    new = client.billing_usage("proj_demo_data").attributes
    assert new.products[0].unit == "GB" and new.amount is not None
    fake_api.inject(Fault("old_shape"), project="proj_demo_data")
    old = client.billing_usage("proj_demo_data").attributes
    assert old.products[0].unit == "quantity" and old.amount == old.price  # both shapes
    assert old.price == new.price


def test_real_socket_connection_reset_is_network(
    fake_api: FakeApi, make_client: MakeClient
) -> None:
    fake_api.inject(Fault("reset"), project="proj_demo_web", times=None)
    with pytest.raises(errors.NetworkError):
        make_client(fake_api.url, max_retries=1).billing_usage("proj_demo_web")
    assert fake_api.request_count("/billing/usage", "proj_demo_web") == 2


def test_real_socket_slow_answer_is_timeout(fake_api: FakeApi, make_client: MakeClient) -> None:
    fake_api.inject(Fault("delay", delay=1.0), project="proj_demo_web", times=None)
    with pytest.raises(errors.Timeout):
        make_client(fake_api.url, timeout=0.2, max_retries=0).billing_usage("proj_demo_web")


def test_a_trickling_answer_fails_at_the_timeout_not_per_read(
    fake_api: FakeApi, make_client: MakeClient
) -> None:
    """One byte every 0.1 s never trips a per-read timeout of 1 s; the whole request
    must still end at 1 s."""
    fake_api.inject(Fault("trickle", delay=0.1), project="proj_demo_web", times=None)
    seen: list[str] = []
    client = make_client(
        fake_api.url, timeout=1.0, max_retries=0, on_request=lambda e, c: seen.append(c)
    )
    started = time.monotonic()
    with pytest.raises(errors.Timeout):
        client.billing_usage("proj_demo_web")
    # At the 1 s deadline; per-read timeouts alone would read on for minutes.
    assert time.monotonic() - started < 10.0
    assert seen == ["timeout"]


def test_a_truncated_body_is_counted_once_as_network_and_retried(
    fake_api: FakeApi, make_client: MakeClient
) -> None:
    fake_api.inject(Fault("truncated"), project="proj_demo_web")
    seen: list[tuple[str, str]] = []
    usage = (
        make_client(fake_api.url, on_request=lambda e, c: seen.append((e, c)))
        .billing_usage("proj_demo_web")
        .attributes
    )
    assert usage.project is not None and usage.project.id == "proj_demo_web"
    assert seen == [("/billing/usage", "network"), ("/billing/usage", "200")]


@pytest.mark.parametrize("layers", [1, 2])
def test_gzipped_answers_are_decoded_layer_by_layer(
    fake_api: FakeApi, make_client: MakeClient, layers: int
) -> None:
    fake_api.inject(Fault("gzip", layers=layers), project="proj_demo_gpu")
    usage = make_client(fake_api.url).billing_usage("proj_demo_gpu").attributes
    assert usage.price is not None and usage.price > 0


def test_a_compression_bomb_is_refused_while_it_streams(
    fake_api: FakeApi, make_client: MakeClient
) -> None:
    bomb = " " * (64 * 1024 * 1024)  # 64 MiB of spaces: 64 KiB once gzipped twice
    fake_api.inject(Fault("gzip", layers=2, body=bomb), project="proj_demo_gpu")
    with pytest.raises(errors.InvalidResponse, match="once decompressed"):
        make_client(fake_api.url, max_response_bytes=1024 * 1024, max_retries=0).billing_usage(
            "proj_demo_gpu"
        )


def test_real_socket_wrong_token_is_unauthorized(
    fake_api: FakeApi, make_client: MakeClient
) -> None:
    with pytest.raises(errors.Unauthorized, match="invalid or missing API key"):
        make_client(fake_api.url, token="wrong").billing_usage("proj_demo_web")


def test_real_socket_unknown_project_is_not_found(
    fake_api: FakeApi, make_client: MakeClient
) -> None:
    with pytest.raises(errors.NotFound):
        make_client(fake_api.url).billing_usage("proj_nope")


@pytest.mark.parametrize("position", [0, 150, 190, 195, 199, 205, 400])
def test_an_api_that_echoes_the_token_never_leaks_any_of_it(
    client_for: ClientFor, position: int
) -> None:
    """Wherever the echo falls relative to the cut of the message, no part shows."""
    detail = "x" * position + f"key {TOKEN} is revoked"
    echo = httpx.Response(401, json={"errors": [{"detail": detail}]})
    with pytest.raises(errors.Unauthorized) as caught:
        client_for(Recorder(echo), token=TOKEN).billing_usage(PROJECT)
    message = str(caught.value)
    for size in range(6, len(TOKEN) + 1):
        for start in range(len(TOKEN) - size + 1):
            assert TOKEN[start : start + size] not in message


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_same_origin_redirect_is_followed_and_counted_as_a_request(
    fake_api: FakeApi, make_client: MakeClient, status: int
) -> None:
    """The SDK follows redirects; before, a 308 to the same host failed every poll."""
    seen: list[tuple[str, str]] = []
    client = make_client(fake_api.url, on_request=lambda e, c: seen.append((e, c)))
    fake_api.inject(Fault("redirect", status=status), project="proj_demo_web")
    usage = client.billing_usage("proj_demo_web").attributes
    assert usage.price is not None
    assert seen == [("/billing/usage", str(status)), ("/billing/usage", "200")]
    assert fake_api.request_count(project="proj_demo_web") == 2  # two requests, both budgeted


def test_a_redirect_loop_ends_as_redirected(fake_api: FakeApi, make_client: MakeClient) -> None:
    client = make_client(fake_api.url)
    fake_api.inject(Fault("redirect"), project="proj_demo_web", times=None)
    with pytest.raises(errors.Redirected, match="more than 5 redirects") as raised:
        client.billing_usage("proj_demo_web")
    assert raised.value.reason == "redirected"
    assert fake_api.request_count(project="proj_demo_web") == MAX_REDIRECTS + 1


def test_a_redirect_to_another_origin_is_refused_and_the_key_never_leaves(
    fake_api: FakeApi, make_client: MakeClient
) -> None:
    with FakeApi(frozen_account(token=TOKEN)) as elsewhere:
        client = make_client(fake_api.url)
        fake_api.inject(
            Fault("redirect", header=elsewhere.url + "{url}"), project="proj_demo_web", times=None
        )
        with pytest.raises(errors.Redirected, match="another origin") as raised:
            client.billing_usage("proj_demo_web")
        assert TOKEN not in str(raised.value)
        assert elsewhere.arrivals == 0  # not one request, so never the key
        assert fake_api.request_count(project="proj_demo_web") == 1  # and not retried


def test_a_redirects_body_is_never_read(make_client: MakeClient) -> None:
    """httpx reads a redirect's body whole, decoded, with no cap: a bomb there would
    pass every bound. The client closes it unread instead."""
    bomb = gzip.compress(gzip.compress(b" " * (64 * 1024 * 1024)))

    def answer(request: httpx.Request) -> httpx.Response:
        if "moved" not in request.url.params:
            moved = request.url.copy_add_param("moved", "1")
            return encoded(308, bomb, "gzip, gzip", Location=str(moved))
        return ok()

    transport = StreamingTransport(answer)
    seen: list[str] = []
    client = make_client(
        "https://api.example", transport=transport, on_request=lambda e, c: seen.append(c)
    )
    assert client.billing_usage(PROJECT).attributes.price == 51230
    assert transport.streamed == len(ok().content)  # the 200's body only
    assert seen == ["308", "200"]


def test_each_hop_takes_a_budget_slot_and_its_own_deadline(
    fake_api: FakeApi, make_client: MakeClient
) -> None:
    """Every grant of the budget moves the clock 10 s on: were the hop's deadline the
    first request's (1 s), the second hop would time out at once."""
    clock = [1000.0]
    slots = Slots(clock, wait=10.0)
    seen: list[str] = []
    client = make_client(
        fake_api.url,
        budget=slots,
        clock=lambda: clock[0],
        timeout=1.0,
        on_request=lambda e, c: seen.append(c),
    )
    fake_api.inject(Fault("redirect"), project="proj_demo_web", times=2)
    assert client.billing_usage("proj_demo_web").attributes.price is not None
    assert slots.taken == 3
    assert seen == ["308", "308", "200"]


def test_a_stop_while_a_hop_waits_for_the_budget_sends_nothing_more(
    fake_api: FakeApi, make_client: MakeClient
) -> None:
    seen: list[str] = []
    client = make_client(
        fake_api.url, budget=Slots([0.0], stop_at=2), on_request=lambda e, c: seen.append(c)
    )
    fake_api.inject(Fault("redirect"), project="proj_demo_web", times=None)
    with pytest.raises(errors.Cancelled):
        client.billing_usage("proj_demo_web")
    assert fake_api.request_count(project="proj_demo_web") == 1
    assert seen == ["308"]  # the redirect, counted once, as what it was


@pytest.mark.parametrize("location", ["http://a:b:c/", "\x7f://"])
def test_a_redirect_to_an_invalid_url_is_redirected_and_counted_once(
    make_client: MakeClient, location: str
) -> None:
    recorder = Recorder(httpx.Response(308, headers={"Location": location}))
    seen: list[str] = []
    client = make_client(
        "https://api.example",
        transport=StreamingTransport(recorder),
        on_request=lambda e, c: seen.append(c),
    )
    with pytest.raises(errors.Redirected, match="HTTP 308 to an invalid URL"):
        client.billing_usage(PROJECT)
    assert len(recorder.requests) == 1 and seen == ["308"]
