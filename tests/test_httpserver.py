"""The listening server over real sockets: formats, TLS and mutual TLS, client SANs,
deadlines for slow clients, bounds on requests, and a thousand hostile connections that
never keep Prometheus out."""

from __future__ import annotations

import contextlib
import copy
import gzip
import http.client
import logging
import re
import resource
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import h11
import pytest
import yaml

from exporter.httpserver import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_TARGET_BYTES,
    REFUSAL_DELAY,
    HttpServer,
    _Connection,
    _too_big,
)
from exporter.store import SnapshotStore
from exporter.web import WebApp
from exporter.webconfig import WebSettings, load_web_config
from testing.waits import wait_for
from tests.conftest import (
    ExporterProcess,
    exposition_of,
    golden_store,
    http_get,
    load_fixture,
    parse_samples,
    reference_exposition,
    sample,
    serving,
    store_with,
    tls_web_config,
)

FAST = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4))


def web_config(tmp_path: Path, certs: dict[str, Path], **tls: object) -> WebSettings:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(tls_web_config(certs, **tls)))
    return load_web_config(path)


@pytest.fixture
def url() -> Iterator[str]:
    with serving(golden_store()) as server:
        yield f"http://127.0.0.1:{server.port}"


def test_metrics_as_text_openmetrics_and_gzip(url: str) -> None:
    expected = reference_exposition(golden_store())
    status, headers, body = http_get(url + "/metrics")
    assert status == 200 and body == expected
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    status, headers, body = http_get(url + "/metrics", {"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == expected
    status, headers, body = http_get(
        url + "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_httpx_with_its_default_headers_reads_the_whole_exposition(url: str) -> None:
    """httpx asks for gzip by default and reads one gzip member only."""
    import httpx

    answer = httpx.get(url + "/metrics")
    assert answer.headers["Content-Encoding"] == "gzip"
    assert answer.content == reference_exposition(golden_store())


def test_head_has_headers_and_no_body(url: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=5)
    connection.request("HEAD", "/metrics")
    response = connection.getresponse()
    assert response.status == 200
    assert int(response.headers["Content-Length"]) == len(reference_exposition(golden_store()))
    assert response.read() == b""
    connection.close()


def test_keep_alive_serves_several_requests_on_one_connection(url: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=5)
    for path in ("/healthz", "/metrics", "/readyz", "/nope"):
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        assert response.status in (200, 404, 503)  # not refreshed: not ready
    connection.close()


def test_answers_leave_without_waiting_for_nagle() -> None:
    """With Nagle on, a keep-alive answer written in two segments waits for the client's
    delayed ACK: 40 ms on every scrape after the first."""
    with (
        serving(golden_store()) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as client,
    ):
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.recv(4096).startswith(b"HTTP/1.1 200")
        (connection,) = list(server._connections)
        sock = connection.writer.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_request_heads_that_are_too_big_are_refused(url: str) -> None:
    many = {f"X-H{i}": "v" for i in range(150)}
    assert http_get(url + "/metrics", many)[0] == 431
    assert http_get(url + "/metrics?" + "a" * 10_000)[0] == 414
    assert http_get(url + "/metrics", {"X-Big": "v" * 70_000})[0] == 431


def status_of(url: str, request: bytes) -> int:
    """The status of the answer to `request`, sent raw."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = raw.recv(4096)
            assert chunk, f"no answer: {head!r}"
            head += chunk
    return int(head.split(b" ", 2)[1])


def test_a_target_of_exactly_max_target_bytes_is_served_and_one_byte_more_refused(
    url: str,
) -> None:
    def target(size: int) -> bytes:
        return b"/healthz?" + b"a" * (size - len(b"/healthz?"))

    exact = b"GET " + target(MAX_TARGET_BYTES) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert status_of(url, exact) == 200
    over = b"GET " + target(MAX_TARGET_BYTES + 1) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert status_of(url, over) == 414


def test_exactly_max_headers_are_served_and_one_more_refused(url: str) -> None:
    def request(headers: int) -> bytes:
        lines = [b"Host: x"] + [b"X-H%d: v" % i for i in range(headers - 1)]
        return b"GET /healthz HTTP/1.1\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"

    assert status_of(url, request(MAX_HEADERS)) == 200
    assert status_of(url, request(MAX_HEADERS + 1)) == 431


def test_a_body_of_exactly_max_head_bytes_is_read_and_one_byte_more_refused(url: str) -> None:
    """A body is never used (only GET and HEAD are served): at most as much as a head
    is read before the answer (405), beyond that it is refused unread (413)."""

    def post(size: int) -> bytes:
        head = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
        return head + b"b" * size

    assert status_of(url, post(MAX_HEAD_BYTES)) == 405
    assert status_of(url, post(MAX_HEAD_BYTES + 1)) == 413


def test_a_head_of_exactly_max_head_bytes_passes_the_bound_and_one_byte_more_not() -> None:
    """The head's size as `_too_big` counts it (names and values): over a socket, h11's
    own buffer bound makes the exact case depend on how the bytes arrive."""

    def request(size: int) -> h11.Request:
        value = b"v" * (size - len(b"Host") - len(b"x") - len(b"X-Big"))
        return h11.Request(method="GET", target="/", headers=[(b"Host", b"x"), (b"X-Big", value)])

    assert _too_big(request(MAX_HEAD_BYTES), 0) is None
    assert _too_big(request(MAX_HEAD_BYTES + 1), 0) == 431
    headers = [("Host", "x")] + [(f"X-H{i}", "v") for i in range(MAX_HEADERS - 1)]
    assert _too_big(h11.Request(method="GET", target="/", headers=headers), 0) is None
    assert (
        _too_big(
            h11.Request(method="GET", target="/" + "a" * (MAX_TARGET_BYTES - 1), headers=headers),
            MAX_HEAD_BYTES,
        )
        is None
    )
    assert (
        _too_big(h11.Request(method="GET", target="/", headers=headers), MAX_HEAD_BYTES + 1) == 413
    )


def test_garbage_gets_400_and_the_server_goes_on(url: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")
    assert http_get(url + "/healthz")[0] == 200


def test_https_with_the_ca_and_plain_http_refused(tmp_path: Path, certs: dict[str, Path]) -> None:
    web = web_config(tmp_path, certs)
    with serving(golden_store(), web=web) as server:
        client = ssl.create_default_context(cafile=str(certs["ca"]))
        connection = http.client.HTTPSConnection(
            "127.0.0.1", server.port, context=client, timeout=5
        )
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        assert b"latitudesh_billing_price" in response.read()
        connection.close()
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            http_get(f"http://127.0.0.1:{server.port}/metrics", timeout=3)


def open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def test_failed_handshakes_release_their_sockets_at_once(
    tmp_path: Path, certs: dict[str, Path]
) -> None:
    """Plain HTTP, port scanners and old clients on the TLS port must not hold a file
    descriptor each: in a quiet daemon that would run out of them."""
    with serving(golden_store(), web=web_config(tmp_path, certs)) as server:
        baseline = open_fds()
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
                raw.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                while raw.recv(4096):  # the server hangs up
                    pass
        wait_for(
            lambda: open_fds() <= baseline and server.connections == 0,
            timeout=10,
            message="the server to close the sockets of failed handshakes",
        )


def test_min_version_refuses_older_clients(tmp_path: Path, certs: dict[str, Path]) -> None:
    with serving(golden_store(), web=web_config(tmp_path, certs, min_version="TLS13")) as server:
        old = ssl.create_default_context(cafile=str(certs["ca"]))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with (
            pytest.raises(ssl.SSLError),
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        ):
            old.wrap_socket(raw, server_hostname="127.0.0.1")


def mtls_get(port: int, certs: dict[str, Path], client_cert: Path | None) -> int:
    client = ssl.create_default_context(cafile=str(certs["ca"]))
    if client_cert is not None:
        client.load_cert_chain(str(client_cert))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=client, timeout=5)
    try:
        connection.request("GET", "/metrics")
        return connection.getresponse().status
    finally:
        connection.close()


def test_mutual_tls_requires_a_client_cert_from_the_ca(
    tmp_path: Path, certs: dict[str, Path]
) -> None:
    web = web_config(
        tmp_path,
        certs,
        client_ca_file=str(certs["ca"]),
        client_auth_type="RequireAndVerifyClientCert",
    )
    with serving(golden_store(), web=web) as server:
        assert mtls_get(server.port, certs, certs["client"]) == 200
        for bad in (None, certs["stranger"]):
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
                mtls_get(server.port, certs, bad)


def test_client_allowed_sans_keep_out_other_certificates_of_the_ca(
    tmp_path: Path, certs: dict[str, Path]
) -> None:
    web = web_config(
        tmp_path,
        certs,
        client_ca_file=str(certs["ca"]),
        client_auth_type="RequireAndVerifyClientCert",
        client_allowed_sans=["prometheus@example"],
    )
    with serving(golden_store(), web=web) as server:
        assert mtls_get(server.port, certs, certs["client"]) == 200
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            mtls_get(server.port, certs, certs["other"])


def test_a_reload_swaps_the_certificate_for_new_connections(
    tmp_path: Path, certs: dict[str, Path]
) -> None:
    with serving(golden_store(), web=WebSettings()) as server:
        assert http_get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200
        server.reload(web_config(tmp_path, certs))
        client = ssl.create_default_context(cafile=str(certs["ca"]))
        connection = http.client.HTTPSConnection(
            "127.0.0.1", server.port, context=client, timeout=5
        )
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        connection.close()


def test_a_slowloris_client_does_not_stop_scrapes_and_is_cut_off() -> None:
    with serving(golden_store(), header_timeout=1.0) as server:
        url = f"http://127.0.0.1:{server.port}"
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finishes the headers
        for _ in range(3):
            assert http_get(url + "/metrics", timeout=5)[0] == 200
        slow.settimeout(0.5)
        started = time.monotonic()

        def cut_off() -> bool:
            """True once the server closed the connection (EOF or reset); a read that
            times out means it is still open."""
            try:
                while slow.recv(1024):
                    pass  # a 408 the server may send before it closes
            except TimeoutError:
                return False
            except ConnectionResetError:
                pass
            return True

        wait_for(cut_off, timeout=10, message="the server to close the slow connection")
        # Closed by the server at its 1 s header deadline, not by our reads' timeouts.
        assert time.monotonic() - started < 10.0
        slow.close()


def big_store(projects: int) -> SnapshotStore:
    """Enough projects that plain text outgrows what the kernel buffers on loopback."""
    answer = load_fixture("billing_usage_new.json")

    def project(index: int) -> tuple[str, dict[str, Any], str]:
        payload = copy.deepcopy(answer)
        payload["data"]["attributes"]["project"]["id"] = f"proj_{index}"
        return f"proj_{index}", payload, "USD"

    return store_with(*map(project, range(projects)))


@pytest.fixture(scope="module")
def big() -> SnapshotStore:
    return big_store(600)  # about 6 MB of plain text


def test_a_client_that_stops_reading_is_cut_off_and_others_still_served(
    big: SnapshotStore,
) -> None:
    with serving(big, write_timeout=1.0) as server:
        url = f"http://127.0.0.1:{server.port}"
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", server.port))
        stuck.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
        assert http_get(url + "/healthz", timeout=5)[0] == 200

        assert wait_for(
            lambda: server.connections == 0, timeout=15, message="the stuck client dropped"
        )
        stuck.settimeout(10)
        received = b""
        while chunk := stuck.recv(1 << 20):  # what the kernel had buffered, then the end
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
        assert 0 < len(body) < length
        stuck.close()
        status, _, body = http_get(url + "/metrics", timeout=30)
        assert status == 200
        assert body.count(b"\nlatitudesh_billing_price{") == 600


def test_clients_hanging_up_mid_body_are_routine(
    big: SnapshotStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with serving(big) as server:
        url = f"http://127.0.0.1:{server.port}"
        for accept in (b"", b"Accept-Encoding: gzip\r\n"):
            for _ in range(3):
                gone = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                gone.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + accept + b"\r\n")
                assert gone.recv(65536)
                gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                gone.close()  # a reset, with most of the body unsent
        assert http_get(url + "/metrics", timeout=30)[0] == 200
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


def closed_by_server(socks: list[socket.socket]) -> int:
    """How many of `socks` the server has closed (readable, at their end)."""
    readable, _, _ = select.select(socks, [], [], 0)
    closed = 0
    for sock in readable:
        try:
            closed += sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:  # reset: closed too
            closed += 1
    return closed


def test_at_the_limit_the_longest_waiting_connection_makes_room(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="exporter.httpserver"),
        serving(golden_store(), max_connections=16, header_timeout=30.0) as server,
    ):
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(40)]
        # Every idle one taken in, 24 of them closed to make room: before, the wait
        # ended at the first 16 held, and a loaded machine's server was still taking
        # the rest in one batch with the first newcomer (all of them too new to give
        # way to it: it was refused, a reset).
        wait_for(
            lambda: server.connections == 16 and closed_by_server(idle) == 24,
            timeout=30,
            message="the server to hold its limit, the others closed",
        )
        for _ in range(5):  # newcomers still get in, however many idle ones wait
            assert http_get(f"http://127.0.0.1:{server.port}/healthz", timeout=2)[0] == 200
        for sock in idle:
            sock.close()
    refusals = [r for r in caplog.records if "connection limit" in r.getMessage()]
    assert len(refusals) == 1  # counted, said at most once a minute


def test_a_thousand_slow_connections_never_keep_a_scrape_out(tmp_path: Path) -> None:
    """The daemon as it runs, with 500 idle connections and 500 slowloris ones that
    send a byte every half second: every scrape still answers within a second."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    exporter = ExporterProcess(["--demo"], tmp=tmp_path)
    held: list[socket.socket] = []
    stop = threading.Event()
    try:
        exporter.wait_ready()
        for index in range(1000):
            sock = socket.create_connection(("127.0.0.1", exporter.port), timeout=5)
            if index % 2:
                sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            held.append(sock)

        def trickle() -> None:
            while not stop.wait(0.5):
                for sock in held[1::2]:
                    with contextlib.suppress(OSError):
                        sock.send(b"X")

        threading.Thread(target=trickle, daemon=True).start()
        worst = 0.0
        for _ in range(10):
            started = time.monotonic()
            status, _, body = http_get(exporter.url + "/metrics", timeout=5)
            worst = max(worst, time.monotonic() - started)
            assert status == 200
            assert (
                sample(parse_samples(body.decode()), "latitudesh_up", project_id="proj_demo_web")
                == 1.0
            )
        assert worst < 1.0, f"slowest scrape {worst:.2f}s"
        rss = (
            int(Path(f"/proc/{exporter.proc.pid}/status").read_text().split("VmRSS:")[1].split()[0])
            / 1024
        )
        assert rss < 200, f"RSS {rss:.0f} MiB with 1,000 connections held"
    finally:
        stop.set()
        for sock in held:
            sock.close()
        exporter.stop()


def test_the_line_to_be_closed_at_the_limit() -> None:
    """A connection whose answer is given first, then one waiting for a password check
    (before, never: a check queued behind others held its connection for good), then
    whoever made no progress longest (a render not started among them), then the
    answer written longest; a render under way never."""
    now = time.monotonic()

    def connection(**state: Any) -> _Connection:
        made = _Connection(reader=None, writer=None, waiting=False, since=now - 100)  # type: ignore[arg-type]
        for name, value in state.items():
            setattr(made, name, value)
        return made

    line = [
        connection(closing_since=now),
        connection(authenticating_since=now - 1),
        connection(authenticating_since=now),
        connection(waiting=True, since=now - 3),
        connection(queued_since=now - 2),
        connection(blocked_since=now - 1, writing_since=now - 5),
        connection(writing_since=now - 5),
    ]
    orders = [c.eviction_order() for c in line]
    assert orders == sorted(orders)  # type: ignore[type-var]
    assert connection().eviction_order() is None  # its render under way


def test_refusals_are_held_while_connections_flood_in_and_only_then() -> None:
    """40 connections queued at once, refused: each refusal is held `REFUSAL_DELAY`
    (the flood's connections wait in the server, first in line to make room, instead
    of queueing again in the kernel ahead of the probes), while a probe among them
    answers at once. Before: with 1,100 such connections at a limit of 1,024, probes
    waited 0.5 to 1.9 s in the kernel's queue; 0.3 s at most with refusals held."""
    store = golden_store()
    web = WebSettings(users={"prom": FAST})
    server = HttpServer(WebApp(exposition_of(store), store.view, web=web), "127.0.0.1", 0, web=web)
    flood = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(40)]
    probe = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        for sock in flood:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        server.start()  # all queued in the kernel already: a full batch at once
        assert probe.recv(4096).startswith(b"HTTP/1.1 200")
        assert time.monotonic() - started < REFUSAL_DELAY
        for sock in flood:
            assert sock.recv(4096).startswith(b"HTTP/1.1 401")
            assert time.monotonic() - started >= REFUSAL_DELAY
    finally:
        for sock in [*flood, probe]:
            sock.close()
        server.stop()
    with (
        serving(store, web=web) as quiet,
        socket.create_connection(("127.0.0.1", quiet.port), timeout=10) as one,
    ):
        started = time.monotonic()
        one.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert one.recv(4096).startswith(b"HTTP/1.1 401")
        assert time.monotonic() - started < REFUSAL_DELAY  # no flood: at once
