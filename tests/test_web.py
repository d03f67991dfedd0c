"""The web application: routes, readiness, basic auth in constant work, rate limit,
configured headers, and a request that fails answering 500 instead of breaking."""

from __future__ import annotations

import base64
from typing import Any

import bcrypt
import pytest

from exporter.store import SnapshotStore
from exporter.web import SECURITY_HEADERS, BasicAuth, RateLimit, Request, Response, WebApp
from exporter.webconfig import WebSettings
from tests.conftest import exposition_of, golden_store

PASSWORD = "s3cret pass: with colon"
FAST = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4))
SLOW = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5))


def basic(user: str, password: str | bytes) -> str:
    raw = password if isinstance(password, bytes) else password.encode()
    return "Basic " + base64.b64encode(user.encode() + b":" + raw).decode()


def app_for(store: SnapshotStore | None = None, **kwargs: Any) -> WebApp:
    store = store or golden_store()
    return WebApp(exposition_of(store), store.view, **kwargs)


def get(app: WebApp, path: str, method: str = "GET", **headers: str) -> Response:
    return app.handle(
        Request(method, path, {k.lower().replace("_", "-"): v for k, v in headers.items()})
    )


def text(response: Response) -> bytes:
    return b"".join(response.body)


def test_routes() -> None:
    app = app_for()
    metrics = get(app, "/metrics")
    assert metrics.status == 200 and b"latitudesh_billing_price" in text(metrics)
    assert ("Vary", "Accept, Accept-Encoding") in metrics.headers
    assert get(app, "/healthz").status == 200
    assert get(app, "/nope").status == 404
    post = get(app, "/metrics", method="POST")
    assert post.status == 405 and ("Allow", "GET, HEAD") in post.headers
    page = get(app, "/")
    assert page.status == 200 and b"Latitude.sh billing" in text(page)


def test_custom_telemetry_path() -> None:
    app = app_for(telemetry_path="/probe")
    assert get(app, "/probe").status == 200
    assert get(app, "/metrics").status == 404


def test_readyz_is_503_until_every_team_attempted_a_first_refresh() -> None:
    store = SnapshotStore()
    store.add_team("t")
    app = app_for(store)
    assert get(app, "/readyz").status == 503
    store.record_discovery_failure("t", "server_error")
    store.record_refresh("t", duration=1.0, effective_interval=300)
    assert get(app, "/readyz").status == 200  # a failing API must not hide the exporter


def test_a_failing_request_answers_500_and_the_next_one_works(
    monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    app = app_for()
    original = app._exposition.render
    monkeypatch.setattr(app._exposition, "render", lambda *a: 1 / 0)
    assert get(app, "/metrics").status == 500
    monkeypatch.setattr(app._exposition, "render", original)
    assert get(app, "/metrics").status == 200


def test_configured_headers_go_on_every_answer() -> None:
    app = app_for(web=WebSettings(headers=(("X-Frame-Options", "deny"),)))
    for path in ("/metrics", "/", "/healthz", "/nope"):
        assert ("X-Frame-Options", "deny") in get(app, path).headers


def test_safe_security_headers_by_default_and_each_overridable() -> None:
    """Before, no answer carried a Content-Security-Policy, X-Content-Type-Options or
    X-Frame-Options."""
    defaults = dict(SECURITY_HEADERS)
    app = app_for()
    for path in ("/metrics", "/", "/healthz", "/readyz", "/nope"):
        found = dict(get(app, path).headers)
        assert {k: found.get(k) for k in defaults} == defaults
    custom = app_for(web=WebSettings(headers=(("x-frame-options", "SAMEORIGIN"),)))
    answer = list(get(custom, "/").headers)
    assert [v for k, v in answer if k.lower() == "x-frame-options"] == ["SAMEORIGIN"]
    assert dict(answer)["Content-Security-Policy"] == defaults["Content-Security-Policy"]
    without = app_for(web=WebSettings(headers=(("Referrer-Policy", ""),)))
    assert "Referrer-Policy" not in dict(get(without, "/").headers)


def auth_app() -> WebApp:
    return app_for(
        web=WebSettings(
            users={"prometheus": FAST, "slow": SLOW, "legacy": FAST.replace(b"$2b$", b"$2y$")}
        )
    )


def test_right_credentials_get_the_metrics() -> None:
    app = auth_app()
    assert get(app, "/metrics", authorization=basic("prometheus", PASSWORD)).status == 200
    assert get(app, "/metrics", authorization=basic("legacy", PASSWORD)).status == 200
    assert get(app, "/metrics", authorization=basic("slow", PASSWORD)).status == 200


@pytest.mark.parametrize(
    "header",
    [
        None,
        basic("prometheus", "wrong"),
        basic("nobody", PASSWORD),
        "Basic !!!not-base64",
        "Bearer abc",
        basic("prometheus", PASSWORD + "x" * 80),
        "Basic " + base64.b64encode(b"no-colon").decode(),
        basic("prometheus", b"\xff\xfe"),
    ],
)
def test_wrong_or_missing_credentials_get_401_with_a_challenge(header: str | None) -> None:
    app = auth_app()
    headers = {"authorization": header} if header else {}
    response = get(app, "/metrics", **headers)
    assert response.status == 401
    assert dict(response.headers)["WWW-Authenticate"].startswith(
        'Basic realm="latitudesh-exporter"'
    )
    assert b"latitudesh" not in text(response)
    assert get(app, "/", **headers).status == 401


def test_probes_need_no_credentials() -> None:
    app = auth_app()
    assert get(app, "/healthz").status == 200


def test_a_password_over_72_bytes_is_refused_even_when_its_prefix_matches() -> None:
    long = "p" * 72
    hashed = bcrypt.hashpw(long.encode(), bcrypt.gensalt(rounds=4))
    auth = BasicAuth({"u": hashed})
    assert auth.check(basic("u", long))
    assert not auth.check(basic("u", long + "more"))  # bcrypt would read only 72


def test_every_check_does_the_same_bcrypt_work_whoever_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever the user (known at either cost, unknown, over-long password), one bcrypt
    run per distinct configured cost: the time says nothing about who exists."""
    auth = BasicAuth({"fast": FAST, "slow": SLOW})
    calls: list[int] = []
    original = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(int(hashed.split(b"$")[2]))
        return original(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    work = []
    for user, password in (
        ("fast", "x"),
        ("slow", "x"),
        ("nobody", "x"),
        ("fast", "y" * 100),
        ("slow", PASSWORD),
    ):
        calls.clear()
        auth.check(basic(user, password))
        work.append(sorted(calls))
    assert work[:4] == [[4, 5]] * 4
    assert work[4] == [4, 5]  # the first success costs the same; later ones are cached
    calls.clear()
    assert auth.check(basic("slow", PASSWORD))
    assert calls == []


def test_rate_limit_answers_429_beyond_the_burst() -> None:
    now = [0.0]
    limit = RateLimit(1.0, 2, clock=lambda: now[0])
    assert [limit.allow() for _ in range(3)] == [True, True, False]
    now[0] += 1.0
    assert limit.allow()
    app = app_for(web=WebSettings(rate_limit=(60.0, 1)))
    assert get(app, "/metrics").status == 200
    limited = get(app, "/metrics")
    assert limited.status == 429 and ("Retry-After", "1") in limited.headers
    assert all(get(app, probe).status in (200, 503) for probe in ("/healthz", "/readyz") * 5)


def test_one_client_never_spends_another_clients_allowance() -> None:
    """Before, one bucket for everyone: an unauthenticated flood got Prometheus's
    credentialed scrapes and the probes 429."""
    users = {"prometheus": FAST}
    app = app_for(web=WebSettings(users=users, rate_limit=(60.0, 2)))
    good = basic("prometheus", PASSWORD)

    def ask(client: str, path: str = "/metrics", **headers: str) -> int:
        return app.handle(Request("GET", path, headers, client=client)).status

    assert ask("10.0.0.1", authorization=good) == 200  # verified once
    flood = [ask("10.0.0.9") for _ in range(20)]
    assert flood.count(401) == 2 and flood.count(429) == 18  # the flood's own bucket
    wrong = [ask("10.0.0.9", authorization=basic("prometheus", "guess")) for _ in range(5)]
    assert 429 in wrong  # guessing passwords is limited too
    assert ask("10.0.0.9", authorization=good) == 200  # a verified user is its own client
    assert ask("10.0.0.1", authorization=good) == 200
    assert all(ask("10.0.0.9", probe) in (200, 503) for probe in ("/healthz", "/readyz") * 10)
