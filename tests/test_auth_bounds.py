"""Password checks bounded per source and in all, a verified user never charged for
wrong passwords, and the connection limit never keeping Prometheus or the probes out
behind connections that wait for password checks (issue 28, items 3 and 4), over
real sockets and against the daemon as it runs."""

from __future__ import annotations

import base64
import contextlib
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import yaml

from exporter.httpserver import HttpServer
from exporter.web import CHECK_BURST, CHECK_QUEUE, CHECK_WORKERS, CHECKS_PER_SECOND, WebApp
from exporter.webconfig import WebSettings
from testing.waits import wait_for
from tests.conftest import (
    ExporterProcess,
    exposition_of,
    golden_store,
    http_get,
    serving,
)

PASSWORD = "right horse battery"
FAST = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def status_of(
    port: int, path: str = "/metrics", auth: str | None = None, source: str = "127.0.0.1"
) -> int:
    """One GET from `source` (any 127/8 address is this host), its status code."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        extra = f"Authorization: {auth}\r\n" if auth else ""
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every bcrypt check run in this process from now on, by the hash it ran against."""
    calls: list[bytes] = []
    original = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return original(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, list[bytes]]]:
    """bcrypt held until the event is set; the checks started so far."""
    release = threading.Event()
    started: list[bytes] = []
    original = bcrypt.checkpw

    def held(password: bytes, hashed: bytes) -> bool:
        started.append(hashed)
        release.wait(30)
        return original(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", held)
    yield release, started
    release.set()


def test_500_claimed_names_from_one_address_cost_one_budget_of_checks(
    checks: list[bytes],
) -> None:
    """Before: each claimed name was a bucket of its own, and every one of 500 requests
    ran bcrypt (the hostile round: 571 checks in 15 s, 1.8 cores)."""
    with serving(golden_store(), web=WebSettings(users={"prom": FAST})) as server:
        started = time.monotonic()
        answers = [status_of(server.port, auth=basic(f"user{i}", "guess")) for i in range(500)]
        elapsed = time.monotonic() - started
        assert status_of(server.port, auth=basic("prom", PASSWORD), source="127.0.0.2") == 200
    checked = len(checks) - 1  # less Prometheus's own, from its own address
    assert checked <= CHECK_BURST + CHECKS_PER_SECOND * elapsed + 1
    assert answers.count(401) == checked and answers.count(429) == 500 - checked


def test_a_wrong_password_flood_after_a_reload_never_429s_the_right_one() -> None:
    """Before: after a reload, a client at Prometheus's address sending `prom` with
    wrong passwords got the real Prometheus 429 on 12 of 12 scrapes: both spent the
    bucket of (address, "prom"), and the reload had forgotten the verified pair."""
    store = golden_store()
    web = WebSettings(users={"prom": FAST}, rate_limit=(1.0, 20))
    app = WebApp(exposition_of(store), store.view, web=web)
    server = HttpServer(app, "127.0.0.1", 0, web=web)
    server.start()
    stop = threading.Event()
    flood: list[int] = []

    def guess() -> None:
        while not stop.is_set():
            flood.append(status_of(server.port, auth=basic("prom", secrets.token_hex(8))))

    guesser = threading.Thread(target=guess, daemon=True)
    try:
        good = basic("prom", PASSWORD)
        assert status_of(server.port, auth=good) == 200
        app.configure(web)  # SIGHUP, the file unchanged
        guesser.start()
        wait_for(lambda: flood.count(429) >= 20, message="the flood to spend its budget")
        scrapes = [status_of(server.port, auth=good) for _ in range(12)]
        assert scrapes == [200] * 12
        assert set(flood) <= {401, 429}
    finally:
        stop.set()
        guesser.join(10)
        server.stop()


def test_checks_wait_in_their_own_bounded_pool_and_hold_no_render_or_probe(
    gate: tuple[threading.Event, list[bytes]],
) -> None:
    """40 sources at once with new pairs while bcrypt is slow: the checks beyond the
    queue answer 503 without bcrypt, and probes and a verified scrape answer at once.
    Before, checks queued without bound in the render pool, ahead of every scrape."""
    release, started = gate
    release.set()  # Prometheus's own first check runs at once
    with serving(golden_store(), web=WebSettings(users={"prom": FAST})) as server:
        good = basic("prom", PASSWORD)
        assert status_of(server.port, auth=good) == 200
        release.clear()
        started.clear()
        results: list[int] = []
        lock = threading.Lock()

        def guess(index: int) -> None:
            wrong = basic("prom", f"guess{index}")
            status = status_of(server.port, auth=wrong, source=f"127.0.2.{index}")
            with lock:
                results.append(status)

        guessers = [threading.Thread(target=guess, args=(i + 1,)) for i in range(40)]
        for thread in guessers:
            thread.start()
        beyond = 40 - CHECK_WORKERS - CHECK_QUEUE
        wait_for(lambda: results.count(503) == beyond, message="503 beyond the queue")
        assert len(started) == CHECK_WORKERS
        for path in ("/healthz", "/readyz"):
            began = time.monotonic()
            assert http_get(f"http://127.0.0.1:{server.port}{path}", timeout=5)[0] in (200, 503)
            assert time.monotonic() - began < 1.0
        began = time.monotonic()
        assert status_of(server.port, auth=good) == 200  # verified: no check, no queue
        assert time.monotonic() - began < 1.0
        release.set()
        for thread in guessers:
            thread.join(30)
        assert sorted(results) == [401] * (40 - beyond) + [503] * beyond
        assert len(started) == CHECK_WORKERS + CHECK_QUEUE  # none for the 503s


def test_at_the_limit_connections_waiting_for_checks_make_room(
    gate: tuple[threading.Event, list[bytes]],
) -> None:
    """Every connection waiting for a password check: newcomers still get in, and a
    check whose connection was closed before it started never runs. Before, such a
    connection counted as being handled and was never closed: probes were reset."""
    release, started = gate
    with serving(
        golden_store(), web=WebSettings(users={"prom": FAST}), max_connections=16
    ) as server:
        waiting = []
        for index in range(16):
            sock = socket.create_connection(
                ("127.0.0.1", server.port), timeout=10, source_address=(f"127.0.3.{index + 1}", 0)
            )
            sock.sendall(
                f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {basic('prom', str(index))}"
                "\r\n\r\n".encode()
            )
            waiting.append(sock)
        wait_for(
            lambda: server.connections == 16 and len(started) >= 1,
            message="16 connections waiting for their checks",
        )
        for _ in range(5):
            began = time.monotonic()
            assert http_get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)[0] == 200
            assert time.monotonic() - began < 1.0
        release.set()
        wait_for(lambda: server.connections == 0, message="every connection answered or closed")
        answered = 0
        for sock in waiting:
            with contextlib.suppress(ConnectionResetError):
                answered += sock.recv(4096).startswith(b"HTTP/1.1 401")
            sock.close()
        assert answered < 16  # some were closed to make room...
        # ...and of their checks, only those already under way ran bcrypt.
        assert len(started) <= answered + CHECK_WORKERS


def test_a_refusal_closes_its_connection_so_it_cannot_pipeline_more_checks(
    checks: list[bytes],
) -> None:
    """Before, a connection pipelined as many failed checks as it liked."""
    with (
        serving(golden_store(), web=WebSettings(users={"prom": FAST})) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock,
    ):
        sock.sendall(
            b"".join(
                f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {basic('prom', str(i))}"
                "\r\n\r\n".encode()
                for i in range(20)
            )
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 401") == 1
    assert b"connection: close" in received.lower()
    assert len(checks) == 1


ATTACKER = textwrap.dedent(
    """
    import base64, secrets, selectors, socket, sys

    port, connections, sources = map(int, sys.argv[1:4])
    selector = selectors.DefaultSelector()

    def batch():
        # Twenty requests pipelined, each with a password never seen before.
        return b"".join(
            b"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Basic "
            + base64.b64encode(b"prom:" + secrets.token_hex(8).encode())
            + b"\\r\\n\\r\\n"
            for _ in range(20)
        )

    def connect(index):
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((f"127.0.1.{1 + index % sources}", 0))
        try:
            sock.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        events = selectors.EVENT_READ | selectors.EVENT_WRITE
        selector.register(sock, events, [index, batch()])

    for index in range(connections):
        connect(index)
    print("started", flush=True)
    while True:
        for key, events in selector.select(0.1):
            sock, data = key.fileobj, key.data
            try:
                if events & selectors.EVENT_WRITE and data[1]:
                    data[1] = data[1][sock.send(data[1]):]
                    if not data[1]:
                        selector.modify(sock, selectors.EVENT_READ, data)
                if not events & selectors.EVENT_READ or sock.recv(65536):
                    continue
            except BlockingIOError:
                continue
            except OSError:
                pass
            selector.unregister(sock)
            sock.close()
            connect(data[0])
    """
)


def open_sockets(pid: int) -> int:
    """The sockets the process holds. Sockets only: other descriptors come and go on
    their own (the state store opens its database and journal files at its first
    write, which may come before or after a baseline is taken)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def timed(url: str, headers: dict[str, str] | None = None) -> tuple[int, float]:
    """A GET's status and how long it took."""
    began = time.monotonic()
    status = http_get(url, headers, timeout=15)[0]
    return status, time.monotonic() - began


def test_the_daemon_at_its_connection_limit_under_pipelined_wrong_passwords(
    tmp_path: Path,
) -> None:
    """`ulimit -n 164`: a limit of 100 connections. 150 connections from 100 addresses
    pipeline wrong passwords, reconnecting as soon as they are answered or closed.
    `/healthz` and `/readyz` answer within a second, Prometheus's scrape (verified
    before the flood) within ten, and everything is as before once the flood ends.
    Before: 0 of 20 probes answered (each reset), as connections waiting for password
    checks in the render pool were never closed to make room."""
    cost_10 = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prom": cost_10, "grafana": cost_10}}))

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (164, 164))

    exporter = ExporterProcess(
        ["--demo", "--web.config.file", str(web)], tmp=tmp_path, preexec_fn=low_limit
    )
    attacker: subprocess.Popen[str] | None = None
    try:
        exporter.wait_ready()
        good = {"Authorization": basic("prom", PASSWORD)}
        assert http_get(exporter.url + "/metrics", good)[0] == 200
        quiet_sockets = open_sockets(exporter.proc.pid)
        attacker = subprocess.Popen(
            [sys.executable, "-c", ATTACKER, str(exporter.port), "150", "100"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert attacker.stdout is not None and attacker.stdout.readline() == "started\n"
        wait_for(
            lambda: "connection limit reached" in exporter.output(),
            message="the flood to fill the server to its limit",
        )
        for _ in range(10):
            for path in ("/healthz", "/readyz"):
                status, took = timed(exporter.url + path)
                assert status == 200 and took < 1.0, f"{path}: {status} in {took:.2f} s"
        status, took = timed(exporter.url + "/metrics", good)
        assert status == 200 and took < 10.0, f"scrape: {status} in {took:.2f} s"
        assert exporter.proc.poll() is None
    finally:
        if attacker is not None:
            attacker.send_signal(signal.SIGKILL)
            attacker.communicate()
    try:
        # The flood gone: the server holds what it held before, and a user never
        # verified before logs in (the queue of checks is empty again).
        wait_for(
            lambda: open_sockets(exporter.proc.pid) <= quiet_sockets + 2,
            message="the flood's sockets closed",
        )
        assert http_get(exporter.url + "/healthz", timeout=5)[0] == 200
        grafana = {"Authorization": basic("grafana", PASSWORD)}
        wait_for(
            lambda: http_get(exporter.url + "/metrics", grafana, timeout=5)[0] == 200,
            message="a first login after the flood",
        )
    finally:
        exporter.stop()
