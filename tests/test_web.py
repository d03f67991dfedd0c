"""The web application: routes, readiness, basic auth in constant work, rate limit,
configured headers, and a request that fails answering 500 instead of breaking."""

from __future__ import annotations

import base64
from typing import Any

import bcrypt
import pytest

from exporter.store import SnapshotStore
from exporter.web import (
    CHECK_BURST,
    CHECK_QUEUE,
    CHECK_WORKERS,
    CHECKS_PER_SECOND,
    MAX_PASSWORD_BYTES,
    MAX_RATE_CLIENTS,
    MAX_REMEMBERED_FAILURES,
    SECURITY_HEADERS,
    Admission,
    BasicAuth,
    Credentials,
    RateLimit,
    Request,
    Response,
    WebApp,
    source_of,
)
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


def test_a_source_is_an_ipv4_address_or_an_ipv6_64() -> None:
    assert source_of("10.0.0.9") == "10.0.0.9"
    assert source_of("2001:db8:1:2::1") == source_of("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("::ffff:10.0.0.9") == "10.0.0.9"  # a dual-stack socket's IPv4 client
    assert source_of("") == ""


def counting_checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every bcrypt check from now on, by the hash it was run against."""
    calls: list[bytes] = []
    original = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return original(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


def ask(app: WebApp, client: str, authorization: str | None = None) -> int:
    headers = {"authorization": authorization} if authorization else {}
    return app.handle(Request("GET", "/metrics", headers, client=client)).status


@pytest.mark.parametrize("rate_limit", [None, (60.0, 1000)], ids=["no-rate-limit", "rate-limit"])
def test_claimed_user_names_share_their_sources_budget_of_checks(
    monkeypatch: pytest.MonkeyPatch, rate_limit: tuple[float, int] | None
) -> None:
    """Before, each claimed name was a fresh bucket: 500 names, 500 bcrypt checks."""
    app = app_for(web=WebSettings(users={"prometheus": FAST}, rate_limit=rate_limit))
    calls = counting_checks(monkeypatch)
    answers = [ask(app, "10.0.0.9", basic(f"user{i}", "guess")) for i in range(500)]
    # The burst, and what refills while 500 requests run (well under a second here).
    assert CHECK_BURST <= len(calls) <= CHECK_BURST + 2
    assert answers.count(401) == len(calls) and answers.count(429) == 500 - len(calls)
    # The whole /64 of an IPv6 client is one source; another /64 is another.
    calls.clear()
    for i in range(100):
        ask(app, f"2001:db8:0:1::{i:x}", basic(f"user{i}", "guess"))
    assert CHECK_BURST <= len(calls) <= CHECK_BURST + 2
    assert ask(app, "2001:db8:0:2::1", basic("prometheus", "guess")) == 401
    assert ask(app, "10.0.0.1", basic("prometheus", PASSWORD)) == 200  # another source


def test_budget_refills_at_the_documented_rate() -> None:
    now = [0.0]
    app = app_for(web=WebSettings(users={"prometheus": FAST}))
    app._budget = RateLimit(1.0 / CHECKS_PER_SECOND, CHECK_BURST, clock=lambda: now[0])
    fresh = (basic("prometheus", f"guess{i}") for i in range(1000))
    assert [ask(app, "10.0.0.9", next(fresh)) for _ in range(CHECK_BURST + 1)][-1] == 429
    now[0] += 10.0 / CHECKS_PER_SECOND
    answers = [ask(app, "10.0.0.9", next(fresh)) for _ in range(20)]
    assert answers.count(401) == 10 and answers.count(429) == 10


def test_a_refused_pair_is_remembered_and_costs_neither_bcrypt_nor_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = app_for(web=WebSettings(users={"prometheus": FAST, "slow": SLOW}))
    calls = counting_checks(monkeypatch)
    wrong = basic("prometheus", "guess")
    assert [ask(app, "10.0.0.9", wrong) for _ in range(100)] == [401] * 100
    assert len(calls) == 2  # one check, at each of the two costs, then remembered
    # The repeats spent no budget: all but the first check's token are left.
    fresh = CHECK_BURST - 1
    answers = [ask(app, "10.0.0.9", basic("prometheus", f"new{i}")) for i in range(fresh)]
    assert answers == [401] * fresh and len(calls) == 2 + 2 * fresh


def test_a_reload_keeps_what_is_known_of_unchanged_users_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, a reload forgot every verified pair: Prometheus had to check again, in
    the bucket its address shared with whoever guessed its password."""
    users = {"prometheus": FAST, "grafana": FAST}
    app = app_for(web=WebSettings(users=users))
    assert ask(app, "10.0.0.1", basic("prometheus", PASSWORD)) == 200
    assert ask(app, "10.0.0.1", basic("grafana", PASSWORD)) == 200
    assert ask(app, "10.0.0.9", basic("grafana", "new password")) == 401
    new = bcrypt.hashpw(b"new password", bcrypt.gensalt(rounds=4))
    app.configure(WebSettings(users={"prometheus": FAST, "grafana": new}))
    calls = counting_checks(monkeypatch)
    assert ask(app, "10.0.0.1", basic("prometheus", PASSWORD)) == 200  # unchanged: known
    assert calls == []
    assert ask(app, "10.0.0.1", basic("grafana", PASSWORD)) == 401  # changed: checked
    # A pair refused under the old hash is checked again, and now it is right.
    assert ask(app, "10.0.0.9", basic("grafana", "new password")) == 200
    assert len(calls) == 2
    app.configure(WebSettings(users={"grafana": new}))
    assert ask(app, "10.0.0.1", basic("prometheus", PASSWORD)) == 401  # removed


def test_a_wrong_password_flood_never_spends_a_verified_users_allowance() -> None:
    """Before: after a reload, wrong passwords for `prom` from Prometheus's address got
    the real Prometheus 429 on 12 of 12 scrapes (one bucket: address and claimed name)."""
    web = WebSettings(users={"prom": FAST}, rate_limit=(60.0, 5))
    app = app_for(web=web)
    good = basic("prom", PASSWORD)
    assert ask(app, "10.0.0.1", good) == 200
    app.configure(web)
    for round_ in range(4):
        flood = [ask(app, "10.0.0.1", basic("prom", f"guess{round_}-{i}")) for i in range(50)]
        assert set(flood) <= {401, 429} and 429 in flood
        assert ask(app, "10.0.0.1", good) == 200


def test_checks_wait_in_a_bounded_queue_and_beyond_it_503_without_bcrypt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = app_for(web=WebSettings(users={"prometheus": FAST}))
    calls = counting_checks(monkeypatch)

    def admit(source: str, password: str) -> Admission:
        headers = {"authorization": basic("prometheus", password)}
        return app.admit(Request("GET", "/metrics", headers, client=source))

    admitted = [admit(f"10.0.{i}.1", f"guess{i}") for i in range(CHECK_WORKERS + CHECK_QUEUE + 5)]
    checks = [a.check for a in admitted if a.check is not None]
    assert len(checks) == CHECK_WORKERS + CHECK_QUEUE
    refused = [a.answer for a in admitted if a.answer is not None]
    assert [r.status for r in refused] == [503] * 5 and all(r.close for r in refused)
    assert ("Retry-After", "1") in refused[0].headers
    assert calls == []
    checks[0].discard()  # its connection closed before it started: never runs bcrypt
    assert checks[0].run() is not None and calls == []
    again = admit("10.1.0.1", "another guess").check
    assert again is not None  # the slot came back
    for check in [*checks[1:], again]:
        response = check.run()
        assert response is not None and response.status == 401
    assert len(calls) == CHECK_WORKERS + CHECK_QUEUE
    # Two connections that sent the same new pair: the second waited, and finds it
    # refused without bcrypt.
    first, second = (admit(f"10.3.0.{i}", "same guess").check for i in (1, 2))
    assert first is not None and second is not None
    assert first.run() is not None and second.run() is not None
    assert len(calls) == CHECK_WORKERS + CHECK_QUEUE + 1
    assert ask(app, "10.2.0.1", basic("prometheus", PASSWORD)) == 200  # every slot back


def test_refusals_close_their_connection_and_answers_are_cheap_to_admit() -> None:
    app = auth_app()
    for header in (None, basic("prometheus", "wrong")):
        response = get(app, "/metrics", **({"authorization": header} if header else {}))
        assert response.status == 401 and response.close
    probe = app.admit(Request("GET", "/healthz"))
    assert probe.answer is not None and probe.answer.status == 200 and probe.check is None
    assert not probe.answer.close


# --- the limits, exactly --------------------------------------------------------------

#: A fraction of a second that binary floats hold exactly: boundaries stay exact.
EPSILON = 2.0**-10


def test_passwords_of_exactly_72_bytes_are_told_apart_and_73_refused() -> None:
    """bcrypt reads 72 bytes: a password one byte shorter is another password, one
    byte longer is refused whatever its first 72 bytes."""
    exact = "p" * MAX_PASSWORD_BYTES
    auth = BasicAuth({"u": bcrypt.hashpw(exact.encode(), bcrypt.gensalt(rounds=4))})
    assert auth.check(basic("u", exact))
    assert not auth.check(basic("u", exact[:-1]))
    assert not auth.check(basic("u", exact + "p"))
    shorter = "q" * (MAX_PASSWORD_BYTES - 1)
    auth = BasicAuth({"u": bcrypt.hashpw(shorter.encode(), bcrypt.gensalt(rounds=4))})
    assert auth.check(basic("u", shorter))
    assert not auth.check(basic("u", shorter + "q"))


def test_a_source_gets_exactly_its_burst_of_checks_then_one_per_second() -> None:
    now = [0.0]
    app = app_for(web=WebSettings(users={"prometheus": FAST}))
    app._budget = RateLimit(1.0 / CHECKS_PER_SECOND, CHECK_BURST, clock=lambda: now[0])
    fresh = (basic("prometheus", f"guess{i}") for i in range(1000))
    burst = [ask(app, "10.0.0.9", next(fresh)) for _ in range(CHECK_BURST + 1)]
    assert burst == [401] * CHECK_BURST + [429]
    now[0] += 1.0 / CHECKS_PER_SECOND - EPSILON
    assert ask(app, "10.0.0.9", next(fresh)) == 429
    now[0] += EPSILON  # exactly one more check's worth
    assert ask(app, "10.0.0.9", next(fresh)) == 401
    assert ask(app, "10.0.0.9", next(fresh)) == 429
    assert ask(app, "10.0.0.8", next(fresh)) == 401  # another source: its own burst


def test_a_token_bucket_holds_exactly_its_burst_and_refills_one_per_interval() -> None:
    now = [0.0]
    limit = RateLimit(2.0, 3, clock=lambda: now[0])
    assert [limit.allow() for _ in range(4)] == [True, True, True, False]
    now[0] += 1.0  # half a token: not enough
    assert not limit.allow()
    now[0] += 1.0 - EPSILON
    assert not limit.allow()
    now[0] += EPSILON  # exactly one token since the bucket was empty
    assert limit.allow()
    assert not limit.allow()
    now[0] += 3600.0  # idle for an hour: full again, never more than the burst
    assert [limit.allow() for _ in range(4)] == [True, True, True, False]


def test_exactly_max_rate_clients_buckets_are_remembered() -> None:
    limit = RateLimit(1000.0, 1, clock=lambda: 0.0)
    assert limit.allow(("client", "first"))
    for i in range(MAX_RATE_CLIENTS - 1):  # buckets: exactly MAX_RATE_CLIENTS
        assert limit.allow(("client", str(i)))
    assert not limit.allow(("client", "first"))  # still remembered (now the most recent)
    assert limit.allow(("client", "one more"))  # one bucket too many: the least recent goes
    assert limit.allow(("client", "0"))  # forgotten: a full bucket again
    assert not limit.allow(("client", "first"))


def fast_bcrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """bcrypt that takes no time: a password is right when it is "right"."""
    monkeypatch.setattr(bcrypt, "checkpw", lambda password, hashed: password == b"right")


def test_exactly_max_remembered_failures_refused_pairs_are_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth = BasicAuth({"prometheus": FAST})
    fast_bcrypt(monkeypatch)

    def pair(i: int) -> Credentials:
        credentials = auth.parse(basic("prometheus", f"guess{i}"))
        assert credentials is not None
        return credentials

    for i in range(MAX_REMEMBERED_FAILURES):
        assert not auth.verify(pair(i))
    assert auth.remembered(pair(0)) is False  # still remembered (now the most recent)
    assert not auth.verify(pair(MAX_REMEMBERED_FAILURES))  # one too many: the oldest goes
    assert auth.remembered(pair(1)) is None
    assert auth.remembered(pair(0)) is False


def test_a_bounded_number_of_verified_pairs_is_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kept = BasicAuth._VERIFIED
    auth = BasicAuth({f"user{i}": FAST for i in range(kept + 1)})
    fast_bcrypt(monkeypatch)

    def pair(i: int) -> Credentials:
        credentials = auth.parse(basic(f"user{i}", "right"))
        assert credentials is not None
        return credentials

    for i in range(kept):
        assert auth.verify(pair(i))
    assert auth.remembered(pair(0)) is True  # still remembered (now the most recent)
    assert auth.verify(pair(kept))  # one too many: the oldest goes
    assert auth.remembered(pair(1)) is None
    assert auth.remembered(pair(0)) is True
