"""The deadline transport on its own: one deadline bounds connect, headers and the whole
body of a request, against real sockets that answer slowly; `Deadlines` on an injected
clock, exactly at its deadline included.

httpx's own timeouts bound each socket operation: a server that sends a byte just
inside every read timeout never ends a request. Here every test gives httpx a per-read
timeout far longer than the deadline, so that only the deadline can end the request.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpcore
import httpx
import pytest

from exporter.transport import TIMEOUTS, Deadlines, DeadlineTransport

#: httpx's per-operation timeout in these tests: never what ends a request here.
READ_TIMEOUT = 30.0
#: The deadline of a request in these tests, and the bound (10x) it must end within.
DEADLINE = 0.5
BOUND = 10 * DEADLINE


class Peer:
    """One connection the server accepted, as a behaviour sees it."""

    def __init__(self, conn: socket.socket, server: Server) -> None:
        self.conn = conn
        self.stop = server.stop
        self._server = server

    def read_head(self) -> bytes:
        """The request's head (the server keeps its first line); b"" once it closed."""
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.conn.recv(4096)
            if not data:
                return b""
            head += data
        self._server.lines.append(head.split(b"\r\n", 1)[0])
        return head


Behaviour = Callable[[Peer], None]


def trickle(data: bytes, every: float, *, first: bytes = b"") -> Behaviour:
    """Reads the request, sends `first` at once, then `data` a byte every `every`
    seconds."""

    def behave(peer: Peer) -> None:
        peer.read_head()
        peer.conn.sendall(first)
        for byte in data:
            if peer.stop.wait(every):
                return
            peer.conn.sendall(bytes([byte]))

    return behave


def answer(body: bytes) -> Behaviour:
    """Answers every request of the connection with `body`, at once."""

    def behave(peer: Peer) -> None:
        while peer.read_head():
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
            peer.conn.sendall(head + body)

    return behave


def silent(peer: Peer) -> None:
    peer.read_head()
    peer.stop.wait(60)


HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"


class Server:
    """A server on a port the kernel picks (0), each connection handled by `behaviour`
    in a thread of its own; it keeps the first line of each request it read."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.lines: list[bytes] = []
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(conn)
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _handle(self, conn: socket.socket) -> None:
        # OSError: the client gave up, which is what these tests provoke.
        with conn, contextlib.suppress(OSError):
            self.behaviour(Peer(conn, self))

    def close(self) -> None:
        self.stop.set()
        # shutdown() wakes an accept() or recv() blocked in another thread.
        for sock in [self.sock, *self.conns]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=10)
        for thread in self.threads:
            thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serving(behaviour: Behaviour) -> Iterator[Server]:
    server = Server(behaviour)
    try:
        yield server
    finally:
        server.close()


@contextmanager
def client_for(
    url: str, clock: Callable[[], float] = time.monotonic
) -> Iterator[tuple[httpx.Client, Deadlines]]:
    deadlines = Deadlines(clock)
    transport = DeadlineTransport(url, deadlines, max_connections=4)
    with httpx.Client(
        base_url=url, transport=transport, timeout=httpx.Timeout(READ_TIMEOUT)
    ) as client:
        yield client, deadlines


def timed_get(client: httpx.Client, deadlines: Deadlines, deadline: float) -> float:
    """Seconds until the request failed on its deadline (it must fail)."""
    started = time.monotonic()
    with pytest.raises(TIMEOUTS), deadlines.until(time.monotonic() + deadline):
        client.get("/").read()
    return time.monotonic() - started


# --- Deadlines, on an injected clock -------------------------------------------------


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_without_a_deadline_the_timeout_is_left_as_it_is() -> None:
    deadlines = Deadlines(Clock())
    assert deadlines.left(7.0) == 7.0
    assert deadlines.left(None) is None


def test_left_is_the_time_to_the_deadline_or_the_timeout_if_shorter() -> None:
    clock = Clock(100.0)
    deadlines = Deadlines(clock)
    with deadlines.until(110.0):
        assert deadlines.left(None) == 10.0
        assert deadlines.left(30.0) == 10.0
        assert deadlines.left(4.0) == 4.0
        clock.now = 109.75
        assert deadlines.left(30.0) == pytest.approx(0.25)
        assert deadlines.left(0.1) == pytest.approx(0.1)


def test_exactly_at_the_deadline_no_time_is_left() -> None:
    """A socket timeout of 0 would make the next operation non-blocking rather than
    fail: at the deadline the operation is refused as a timeout instead."""
    clock = Clock(100.0)
    deadlines = Deadlines(clock)
    with deadlines.until(110.0):
        clock.now = 110.0 - 1e-6
        assert deadlines.left(30.0) == pytest.approx(1e-6)
        clock.now = 110.0
        with pytest.raises(httpcore.ReadTimeout):
            deadlines.left(30.0)
        with pytest.raises(httpcore.ReadTimeout):
            deadlines.left(None)
        clock.now = 111.0
        with pytest.raises(httpcore.ReadTimeout):
            deadlines.left(30.0)


def test_until_clears_the_deadline_after_its_block_even_when_it_raises() -> None:
    clock = Clock(100.0)
    deadlines = Deadlines(clock)
    with pytest.raises(RuntimeError), deadlines.until(90.0):
        raise RuntimeError("the request failed")
    assert deadlines.left(5.0) == 5.0  # no deadline left behind for the next request


def test_renew_gives_the_request_in_flight_a_new_deadline_until_its_block_ends() -> None:
    """A redirect's next hop: the whole timeout again, from now."""
    clock = Clock(100.0)
    deadlines = Deadlines(clock)
    with deadlines.until(101.0):
        clock.now = 100.9
        assert deadlines.left(None) == pytest.approx(0.1)
        deadlines.renew(clock.now + 5.0)
        assert deadlines.left(None) == pytest.approx(5.0)
        clock.now = 105.9
        with pytest.raises(httpcore.ReadTimeout):
            deadlines.left(None)
    assert deadlines.left(None) is None


def test_a_deadline_is_the_requesting_threads_own() -> None:
    clock = Clock(100.0)
    deadlines = Deadlines(clock)
    seen: list[float | None] = []
    with deadlines.until(100.5):
        thread = threading.Thread(target=lambda: seen.append(deadlines.left(9.0)))
        thread.start()
        thread.join(timeout=10)
        assert deadlines.left(9.0) == pytest.approx(0.5)
    assert seen == [9.0]


# --- the transport, over real sockets ------------------------------------------------


def test_an_answer_in_time_passes_through_whole() -> None:
    with serving(answer(b"hello")) as server, client_for(server.url) as (client, deadlines):
        with deadlines.until(time.monotonic() + BOUND):
            response = client.get("/path?q=1", headers={"X-Test": "yes"})
            assert (response.status_code, response.read()) == (200, b"hello")
        # Kept alive: the next request rides the same connection, without a deadline.
        assert client.get("/again").content == b"hello"
    assert server.accepted == 1
    assert server.lines[0] == b"GET /path?q=1 HTTP/1.1"


def test_a_body_that_trickles_fails_at_the_deadline_not_per_read() -> None:
    """A byte every 50 ms never trips a 30 s read timeout; the request still ends at
    its deadline."""
    body = trickle(b"x" * 100_000, every=0.05, first=HEAD)
    with serving(body) as server, client_for(server.url) as (client, deadlines):
        elapsed = timed_get(client, deadlines, DEADLINE)
    assert DEADLINE - 0.05 <= elapsed < BOUND


def test_headers_that_trickle_fail_at_the_deadline() -> None:
    with (
        serving(trickle(HEAD, every=0.05)) as server,
        client_for(server.url) as (
            client,
            deadlines,
        ),
    ):
        elapsed = timed_get(client, deadlines, DEADLINE)
    assert DEADLINE - 0.05 <= elapsed < BOUND


def test_a_server_that_never_answers_fails_at_the_deadline() -> None:
    with serving(silent) as server, client_for(server.url) as (client, deadlines):
        elapsed = timed_get(client, deadlines, DEADLINE)
    assert DEADLINE - 0.05 <= elapsed < BOUND


def test_a_body_read_after_the_headers_shares_their_deadline() -> None:
    """The deadline covers the body read after the response came back: one deadline
    for the whole request, not one for the head and another for the body."""
    behaviour = trickle(b"x" * 100_000, every=0.01, first=HEAD)

    def read_body(response: httpx.Response) -> None:
        for _ in response.iter_raw():
            pass

    with serving(behaviour) as server, client_for(server.url) as (client, deadlines):
        started = time.monotonic()
        with (
            deadlines.until(started + 2 * DEADLINE),
            client.stream("GET", "/") as response,
        ):
            head_at = time.monotonic() - started
            assert response.status_code == 200
            with pytest.raises(TIMEOUTS):
                read_body(response)
        elapsed = time.monotonic() - started
    assert head_at < 2 * DEADLINE
    assert 2 * DEADLINE - 0.05 <= elapsed < 2 * BOUND


def test_at_its_deadline_a_request_is_not_even_connected() -> None:
    clock = Clock(100.0)
    with (
        serving(answer(b"hello")) as server,
        client_for(server.url, clock) as (
            client,
            deadlines,
        ),
    ):
        with pytest.raises(TIMEOUTS), deadlines.until(100.0):
            client.get("/")
        # before it (by far more than the answer takes, even on a loaded machine: the
        # clock stands still, so what is left is what the socket may wait): answered
        with deadlines.until(100.0 + 30):
            assert client.get("/").content == b"hello"
    assert server.accepted == 1


def test_two_threads_each_have_their_own_deadline() -> None:
    """One request's short deadline never cuts another thread's request short."""
    with (
        serving(trickle(b"x" * 40, every=0.02, first=HEAD.replace(b"100000", b"40"))) as server,
        client_for(server.url) as (
            client,
            deadlines,
        ),
    ):
        outcome: list[str] = []

        def patient() -> None:
            with deadlines.until(time.monotonic() + 30 * DEADLINE):
                response = client.get("/")
                outcome.append(response.text)

        thread = threading.Thread(target=patient)
        thread.start()
        timed_get(client, deadlines, 0.1)
        thread.join(timeout=60)
    assert outcome == ["x" * 40]


def test_proxies_from_the_environment_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy receives the request in absolute form; NO_PROXY bypasses it."""
    with serving(answer(b"via proxy")) as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        with (
            client_for("http://api.example") as (client, deadlines),
            deadlines.until(time.monotonic() + BOUND),
        ):
            assert client.get("/billing/usage").content == b"via proxy"
        assert proxy.lines == [b"GET http://api.example/billing/usage HTTP/1.1"]
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        with serving(answer(b"direct")) as direct, client_for(direct.url) as (client, _):
            assert client.get("/").content == b"direct"
        assert proxy.accepted == 1
