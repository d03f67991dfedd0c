"""A secured /metrics: TLS, mTLS and basic auth from web-config.yml; a bounded server."""

from __future__ import annotations

import base64
import gc
import http.client
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import trustme
import yaml

from exporter.config import ConfigError, load_web_config
from exporter.server import BasicAuth, HttpServer, MetricsApp, tls_context
from tests.conftest import ExporterProcess, http_get, parse_samples, sample, wait_for
from tests.test_collector import golden_store

PASSWORD = "s3cret pass: with colon"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def certs(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("tls")
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("prometheus@example")
    stranger = trustme.CA().issue_cert("mallory@example")
    files = {"cert": tmp / "server.crt", "key": tmp / "server.key", "ca": tmp / "ca.crt",
             "client": tmp / "client.pem", "stranger": tmp / "stranger.pem"}
    server.cert_chain_pems[0].write_to_path(files["cert"])
    server.private_key_pem.write_to_path(files["key"])
    ca.cert_pem.write_to_path(files["ca"])
    for name, issued in (("client", client), ("stranger", stranger)):
        issued.private_key_and_cert_chain_pem.write_to_path(files[name])
    return files


def secured(store_tls: ssl.SSLContext | None = None, users: dict[str, bytes] | None = None,
            **kwargs: object) -> HttpServer:
    from prometheus_client import CollectorRegistry

    from exporter.collector import BillingCollector
    from exporter.server import Exposition

    store = golden_store()
    billing = CollectorRegistry(auto_describe=False)
    billing.register(BillingCollector(store.view))
    app = MetricsApp(Exposition([(billing, lambda: 1)]),
                     ready=lambda: True, projects=list,
                     auth=BasicAuth(users) if users else None,
                     headers=[("X-Frame-Options", "DENY")])
    server = HttpServer(app, "127.0.0.1", 0, ssl_context=store_tls, **kwargs)  # type: ignore[arg-type]
    server.start()
    return server


@pytest.fixture
def auth_url() -> Iterator[str]:
    server = secured(users={"prometheus": HASH.encode(),
                            "legacy": HASH.replace("$2b$", "$2y$").encode()})
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def test_right_credentials_get_the_metrics(auth_url: str) -> None:
    status, headers, body = http_get(auth_url + "/metrics", basic("prometheus", PASSWORD))
    assert status == 200
    assert b"latitudesh_billing_price" in body
    assert headers["X-Frame-Options"] == "DENY"


def test_htpasswd_2y_hashes_work(auth_url: str) -> None:
    assert http_get(auth_url + "/metrics", basic("legacy", PASSWORD))[0] == 200


@pytest.mark.parametrize("headers", [
    {},
    basic("prometheus", "wrong"),
    basic("nobody", PASSWORD),
    {"Authorization": "Basic !!!not-base64"},
    {"Authorization": "Bearer abc"},
])
def test_wrong_or_missing_credentials_get_401_with_a_challenge(auth_url: str,
                                                               headers: dict[str, str]) -> None:
    status, response_headers, body = http_get(auth_url + "/metrics", headers)
    assert status == 401
    assert response_headers["WWW-Authenticate"].startswith('Basic realm="latitudesh-exporter"')
    assert b"latitudesh" not in body
    assert http_get(auth_url + "/", headers)[0] == 401


def test_probes_need_no_credentials(auth_url: str) -> None:
    assert http_get(auth_url + "/healthz")[0] == 200
    assert http_get(auth_url + "/readyz")[0] == 200


def test_unknown_users_cost_as_much_as_known_ones() -> None:
    """Both paths run one bcrypt check (the unknown one against a dummy hash)."""
    calls: list[bytes] = []
    original = bcrypt.checkpw
    auth = BasicAuth({"prometheus": HASH.encode()})
    try:
        bcrypt.checkpw = lambda pw, hashed: calls.append(hashed) or original(pw, hashed)  # type: ignore[assignment]
        assert not auth.check(basic("nobody", "x")["Authorization"])
        assert not auth.check(basic("prometheus", "x")["Authorization"])
    finally:
        bcrypt.checkpw = original  # type: ignore[assignment]
    assert len(calls) == 2
    assert calls[0] == BasicAuth._DUMMY


def test_https_with_the_ca_and_plain_http_refused(certs: dict[str, Path]) -> None:
    server = secured(tls_context(str(certs["cert"]), str(certs["key"])))
    try:
        client = ssl.create_default_context(cafile=str(certs["ca"]))
        connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=client,
                                                 timeout=5)
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        assert b"latitudesh_billing_price" in response.read()
        connection.close()
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            http_get(f"http://127.0.0.1:{server.port}/metrics", timeout=3)
    finally:
        server.stop()


def open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def test_failed_handshakes_release_their_sockets_at_once(certs: dict[str, Path]) -> None:
    """Plain HTTP, port scanners and old clients on the TLS port must not hold a file
    descriptor each until the garbage collector happens to run: in a quiet daemon
    that can be long enough to run out of them."""
    server = secured(tls_context(str(certs["cert"]), str(certs["key"])))
    gc.collect()
    gc.disable()  # only prompt closing can pass; a cycle left for the collector cannot
    try:
        baseline = open_fds()
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
                raw.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                while raw.recv(4096):  # the server answers with a TLS alert and hangs up
                    pass
        wait_for(lambda: open_fds() <= baseline, timeout=10,
                 message="the server to close the sockets of failed handshakes")
    finally:
        gc.enable()
        server.stop()


def test_min_version_refuses_older_clients(certs: dict[str, Path]) -> None:
    server = secured(tls_context(str(certs["cert"]), str(certs["key"]), min_version="TLS13"))
    try:
        old = ssl.create_default_context(cafile=str(certs["ca"]))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", server.port),
                                                                   timeout=5) as raw:
            old.wrap_socket(raw, server_hostname="127.0.0.1")
    finally:
        server.stop()


def test_mutual_tls_requires_a_client_cert_from_the_ca(certs: dict[str, Path]) -> None:
    context = tls_context(str(certs["cert"]), str(certs["key"]),
                          client_ca_file=str(certs["ca"]),
                          client_auth_type="RequireAndVerifyClientCert")
    server = secured(context)

    def get(client_cert: Path | None) -> int:
        client = ssl.create_default_context(cafile=str(certs["ca"]))
        if client_cert is not None:
            client.load_cert_chain(str(client_cert))
        connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=client,
                                                 timeout=5)
        try:
            connection.request("GET", "/metrics")
            return connection.getresponse().status
        finally:
            connection.close()

    try:
        assert get(certs["client"]) == 200
        for bad in (None, certs["stranger"]):
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
                get(bad)
    finally:
        server.stop()


def test_a_slowloris_client_does_not_stop_scrapes_and_is_cut_off() -> None:
    server = secured(request_timeout=1.0)
    url = f"http://127.0.0.1:{server.port}"
    try:
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finishes the headers
        for _ in range(3):
            assert http_get(url + "/metrics", timeout=5)[0] == 200
        slow.settimeout(5)

        def cut_off() -> bool:
            try:
                return slow.recv(1024) == b""
            except (ConnectionResetError, TimeoutError):
                return True

        assert wait_for(cut_off, timeout=10, message="the slow client to be cut off")
        slow.close()
    finally:
        server.stop()


def test_too_many_or_too_long_headers_are_refused() -> None:
    server = secured()
    try:
        many = {f"X-H{i}": "v" for i in range(150)}
        assert http_get(f"http://127.0.0.1:{server.port}/metrics", many)[0] == 431
        long_line = f"http://127.0.0.1:{server.port}/metrics?" + "a" * 70000
        assert http_get(long_line)[0] == 414
    finally:
        server.stop()


def test_connections_beyond_the_cap_are_closed_not_queued() -> None:
    server = secured(request_timeout=30.0, max_connections=2)
    try:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
                for _ in range(2)]
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        extra.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        wait_for(lambda: _closed(extra), timeout=10, message="the extra connection to close")
        extra.close()
        for sock in idle:
            sock.close()
        wait_for(lambda: _healthy(server.port), timeout=10, message="the server to free slots")
    finally:
        server.stop()


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def _healthy(port: int) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200
    except OSError:
        return False


# --- web-config.yml through the command line -------------------------------------


def test_web_config_file_end_to_end(certs: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "web.yml"
    config.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(certs["cert"]), "key_file": str(certs["key"]),
                              "min_version": "TLS12"},
        "basic_auth_users": {"prometheus": HASH},
    }))
    exporter = ExporterProcess(["--demo", "--web.config.file", str(config)])
    try:
        client = ssl.create_default_context(cafile=str(certs["ca"]))

        def get(path: str, headers: dict[str, str]) -> tuple[int, bytes]:
            connection = http.client.HTTPSConnection("127.0.0.1", exporter.port,
                                                     context=client, timeout=5)
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                return response.status, response.read()
            finally:
                connection.close()

        def ready() -> bool:
            try:
                return get("/readyz", {})[0] == 200
            except OSError:
                return False

        wait_for(ready, timeout=30, message="the TLS exporter to be ready")
        assert get("/metrics", {})[0] == 401
        status, body = get("/metrics", basic("prometheus", PASSWORD))
        assert status == 200
        assert sample(parse_samples(body.decode()), "latitudesh_up",
                      project_id="proj_demo_web") == 1.0
    finally:
        assert exporter.stop() == 0
    assert "tls=True basic_auth=True" in exporter.output()


@pytest.mark.parametrize(("content", "message"), [
    ({"basic_auth_users": {"bob": "plain"}}, "basic_auth_users: user 'bob': the password "
                                              "must be a bcrypt hash"),
    ({"tls_server_config": {"cert_file": "/nope.crt", "key_file": "/nope.key"}},
     "tls_server_config.cert_file: /nope.crt: no such file"),
    ({"tls_server_config": {"cert_file": "/etc/hostname", "key_file": "/etc/hostname",
                            "client_auth_type": "RequireAndVerifyClientCert"}},
     "needs client_ca_file"),
    ({"tls_server_config": {"cert_file": "/etc/hostname", "key_file": "/etc/hostname",
                            "min_version": "SSL3"}}, "tls_server_config.min_version"),
    ({"cipher_suites": []}, "cipher_suites: unknown field"),
])
def test_bad_web_config_is_one_line_naming_the_field(tmp_path: Path, content: dict[str, object],
                                                    message: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert message in str(caught.value)
    assert str(caught.value).startswith("web.config.file: ")


def test_unusable_certificate_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"tls_server_config": {"cert_file": "/etc/hostname",
                                                          "key_file": "/etc/hostname"}}))
    from tests.test_cli import run

    result = run("--demo", "--web.config.file", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("latitudesh-exporter: config error: web.config.file: "
                                    "tls_server_config:")
    assert result.stderr.count("\n") == 1
