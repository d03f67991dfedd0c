"""LatitudeClient: headers, retries and backoff, 429 waits, typed errors, pagination."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from exporter import errors
from exporter.client import API_VERSION, PROJECTS_PAGE_SIZE, LatitudeClient
from exporter.demo import DemoApi, Fault
from exporter.ratelimit import RequestBudget
from tests.conftest import TOKEN, load_fixture, make_client

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that answers from a script and keeps every request."""

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
    return httpx.Response(200, json=payload or load_fixture("billing_usage_new.json"),
                          headers={"Content-Type": "application/vnd.api+json"})


class Pauses:
    """A budget double that records the pauses a 429 asks for instead of waiting."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    def acquire(self) -> float:
        return 0.0

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)


def client_for(handler: Handler, **kwargs: Any) -> LatitudeClient:
    kwargs.setdefault("budget", RequestBudget(1e6))
    return make_client("https://api.example", transport=httpx.MockTransport(handler),
                       jitter=lambda: 0.0, **kwargs)


PROJECT = "proj_r0MK4O4kDa95w"


def test_sends_raw_token_version_accept_and_user_agent() -> None:
    recorder = Recorder(ok())
    client_for(recorder, token=TOKEN).billing_usage(PROJECT)
    (request,) = recorder.requests
    assert request.headers["Authorization"] == TOKEN
    assert request.headers["API-Version"] == API_VERSION
    assert request.headers["Accept"].startswith("application/vnd.api+json")
    assert request.headers["User-Agent"].startswith("latitudesh-exporter/")
    assert request.url.path == "/billing/usage"
    assert request.url.params.get_list("filter[project]") == [PROJECT]


def test_plan_and_product_filters_are_sent() -> None:
    recorder = Recorder(ok())
    client_for(recorder).billing_usage(PROJECT, plan="c2-small-x86", products=["si_a", "si_b"])
    params = recorder.requests[0].url.params
    assert params["filter[plan]"] == "c2-small-x86"
    assert params.get_list("filter[products][]") == ["si_a", "si_b"]


def test_plain_json_content_type_is_accepted() -> None:
    answer = httpx.Response(200, content=json.dumps(load_fixture("billing_usage_new.json")),
                            headers={"Content-Type": "application/json"})
    assert client_for(Recorder(answer)).billing_usage(PROJECT).price == 51230


def test_server_errors_are_retried_then_succeed() -> None:
    recorder = Recorder(httpx.Response(500), httpx.Response(503), ok())
    seen: list[tuple[str, str]] = []
    client = client_for(recorder, on_request=lambda e, c: seen.append((e, c)))
    assert client.billing_usage(PROJECT).price == 51230
    assert len(recorder.requests) == 3
    assert seen == [("/billing/usage", "500"), ("/billing/usage", "503"),
                    ("/billing/usage", "200")]


def test_retries_stop_after_max_retries() -> None:
    recorder = Recorder(httpx.Response(502))
    with pytest.raises(errors.ServerError) as caught:
        client_for(recorder, max_retries=2).billing_usage(PROJECT)
    assert len(recorder.requests) == 3
    assert caught.value.reason == "server_error"


def test_backoff_grows_exponentially() -> None:
    from exporter import client as client_module

    client = client_for(Recorder(ok()), backoff_base=1.0, backoff_cap=5.0)
    delays = [client._delay(errors.ServerError("x", status=500), n) for n in range(5)]
    assert delays == [0.5, 1.0, 2.0, 2.5, 2.5]  # jitter 0: half of min(cap, base * 2^n)
    assert client_module.LatitudeClient is LatitudeClient


@pytest.mark.parametrize(
    ("headers", "body_wait", "expected"),
    [
        ({}, 7, 7.0),                          # in the body only
        ({"Retry-After": "3"}, None, 3.0),     # in the header only
        ({"Retry-After": "9"}, 4, 9.0),        # both: the longer wait wins
        ({"Retry-After": "99999"}, None, 120.0),  # a huge wait is capped
    ],
)
def test_429_waits_as_asked_for_the_whole_key(
    headers: dict[str, str], body_wait: float | None, expected: float
) -> None:
    meta = {"retry_after": body_wait} if body_wait is not None else {}
    limited = httpx.Response(429, headers=headers, json={"errors": [{"status": "429",
                                                                     "meta": meta}]})
    budget = Pauses()
    client = client_for(Recorder(limited, ok()), budget=budget)
    assert client.billing_usage(PROJECT).price == 51230
    assert budget.pauses == [expected]


def test_429_without_a_wait_backs_off() -> None:
    budget = Pauses()
    client = client_for(Recorder(httpx.Response(429), ok()), budget=budget, backoff_base=2.0)
    client.billing_usage(PROJECT)
    assert budget.pauses == [1.0]


def test_429_http_date_retry_after_is_understood() -> None:
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    budget = Pauses()
    client = client_for(Recorder(httpx.Response(429, headers={"Retry-After": when}), ok()),
                        budget=budget)
    client.billing_usage(PROJECT)
    assert 25 <= budget.pauses[0] <= 30


def test_persistent_429_raises_rate_limited_with_the_wait() -> None:
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
    ],
)
def test_client_errors_are_typed_and_not_retried(
    status: int, error: type[errors.LatitudeError], reason: str
) -> None:
    recorder = Recorder(httpx.Response(status, json={"errors": [{"title": "Nope"}]}))
    with pytest.raises(error) as caught:
        client_for(recorder).billing_usage(PROJECT)
    assert caught.value.reason == reason
    assert len(recorder.requests) == 1
    assert f"HTTP {status}: Nope" in str(caught.value)


def test_a_rejected_token_is_not_sent_again_until_the_backoff_ends() -> None:
    now = [1000.0]
    recorder = Recorder(httpx.Response(401), ok())
    client = client_for(recorder, clock=lambda: now[0], unauthorized_backoff=300)
    for _ in range(3):
        with pytest.raises(errors.Unauthorized):
            client.billing_usage(PROJECT)
    assert len(recorder.requests) == 1
    now[0] += 301
    assert client.billing_usage(PROJECT).price == 51230
    assert len(recorder.requests) == 2


def test_a_rotated_token_is_tried_at_once_after_a_401() -> None:
    current = ["old-token"]

    def token() -> Any:
        from pydantic import SecretStr
        return SecretStr(current[0])

    recorder = Recorder(httpx.Response(401), ok())
    with LatitudeClient(token=token, budget=RequestBudget(1e6), base_url="https://x",
                        transport=httpx.MockTransport(recorder)) as client:
        with pytest.raises(errors.Unauthorized):
            client.billing_usage(PROJECT)
        current[0] = "new-token"
        assert client.billing_usage(PROJECT).price == 51230
    assert [r.headers["Authorization"] for r in recorder.requests] == ["old-token", "new-token"]


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
    exc: Exception, error: type[errors.LatitudeError], code: str
) -> None:
    seen: list[str] = []
    recorder = Recorder(exc)
    with pytest.raises(error):
        client_for(recorder, max_retries=2, on_request=lambda e, c: seen.append(c)) \
            .billing_usage(PROJECT)
    assert seen == [code] * 3


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, content=b"<html>oops</html>", headers={"Content-Type": "text/html"}),
        httpx.Response(200, content=b'{"data": {"attri'),
        httpx.Response(200, json=[1, 2, 3]),
        httpx.Response(200, json={"data": {}}),
        httpx.Response(200, json={"data": "a string"}),
    ],
)
def test_unusable_answers_are_invalid_response(answer: httpx.Response) -> None:
    recorder = Recorder(answer)
    with pytest.raises(errors.InvalidResponse):
        client_for(recorder).billing_usage(PROJECT)
    assert len(recorder.requests) == 1  # a malformed answer is not retried


def test_answers_over_the_size_cap_are_refused() -> None:
    big = httpx.Response(200, content=b" " * 5000 + json.dumps(load_fixture(
        "billing_usage_new.json")).encode())
    with pytest.raises(errors.InvalidResponse, match="over the 4096-byte cap"):
        client_for(Recorder(big), max_response_bytes=4096).billing_usage(PROJECT)


def test_projects_are_paged_until_a_short_page() -> None:
    def page(n: int) -> httpx.Response:
        items = [{"id": f"proj_{n}_{i}", "attributes": {"name": f"p{i}"}}
                 for i in range(PROJECTS_PAGE_SIZE if n < 3 else 7)]
        return httpx.Response(200, json={"data": items})

    recorder = Recorder(page(1), page(2), page(3))
    projects = client_for(recorder).projects()
    assert len(projects) == 2 * PROJECTS_PAGE_SIZE + 7
    assert [r.url.params["page[number]"] for r in recorder.requests] == ["1", "2", "3"]
    assert recorder.requests[0].url.params["page[size]"] == str(PROJECTS_PAGE_SIZE)


def test_projects_stop_at_an_empty_page() -> None:
    full = httpx.Response(200, json={"data": [{"id": f"p{i}"} for i in range(100)]})
    recorder = Recorder(full, httpx.Response(200, json={"data": []}))
    assert len(client_for(recorder).projects()) == 100
    assert len(recorder.requests) == 2


# --- over real sockets, against the simulated API ------------------------------------


def test_real_socket_round_trip_in_both_shapes(demo_api: DemoApi) -> None:
    client = make_client(demo_api.url)
    new = client.billing_usage("proj_demo_data")
    assert new.products[0].unit == "GB" and new.amount is not None
    demo_api.inject(Fault("old_shape"), project="proj_demo_data")
    old = client.billing_usage("proj_demo_data")
    assert old.products[0].unit == "quantity" and old.amount is None
    assert old.price == new.price


def test_real_socket_connection_reset_is_network(demo_api: DemoApi) -> None:
    demo_api.inject(Fault("reset"), project="proj_demo_web", times=None)
    with pytest.raises(errors.NetworkError):
        make_client(demo_api.url, max_retries=1).billing_usage("proj_demo_web")
    assert demo_api.request_count("/billing/usage", "proj_demo_web") == 2


def test_real_socket_slow_answer_is_timeout(demo_api: DemoApi) -> None:
    demo_api.inject(Fault("delay", delay=1.0), project="proj_demo_web", times=None)
    with pytest.raises(errors.Timeout):
        make_client(demo_api.url, timeout=0.2, max_retries=0).billing_usage("proj_demo_web")


def test_real_socket_truncated_body_is_retried_as_network(demo_api: DemoApi) -> None:
    demo_api.inject(Fault("truncated"), project="proj_demo_web")
    usage = make_client(demo_api.url).billing_usage("proj_demo_web")
    assert usage.project is not None and usage.project.id == "proj_demo_web"


def test_real_socket_wrong_token_is_unauthorized(demo_api: DemoApi) -> None:
    with pytest.raises(errors.Unauthorized, match="invalid or missing API key"):
        make_client(demo_api.url, token="wrong").billing_usage("proj_demo_web")


def test_real_socket_unknown_project_is_not_found(demo_api: DemoApi) -> None:
    with pytest.raises(errors.NotFound):
        make_client(demo_api.url).billing_usage("proj_nope")


def test_an_api_that_echoes_the_token_does_not_leak_it_into_errors() -> None:
    echo = httpx.Response(401, json={"errors": [{"detail": f"key {TOKEN} is revoked"}]})
    with pytest.raises(errors.Unauthorized) as caught:
        client_for(Recorder(echo), token=TOKEN).billing_usage(PROJECT)
    assert TOKEN not in str(caught.value)
    assert "key <redacted> is revoked" in str(caught.value)
