"""Clients that ask and never read, or read slowly: bounded in memory and CPU, never
in the way of probes and scrapes, evicted at the connection limit, and every answer
complete when it is read at last.

The daemon runs as a real process against a large fake account (polls landing all the
time), measured from outside: RSS and CPU from /proc, latency from the probes' side.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import http.client
import re
import resource
import socket
import struct
import termios
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from exporter.httpserver import HttpServer
from exporter.store import SnapshotStore
from testing.largeapi import LargeApi, large_api
from testing.waits import wait_for
from tests.conftest import (
    ExporterProcess,
    http_get,
    load_fixture,
    serving,
    store_with,
)

PROJECTS = 400
PRODUCTS = 50

# daemons under load: left out of `make quick`; one worker runs the module, so that its
# large daemon and account are made once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slow_clients")]


def status_kib(pid: int, field: str) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split(f"{field}:")[1].split()[0])


def rss_mib(pid: int) -> float:
    return status_kib(pid, "VmRSS") / 1024


def pending(sock: socket.socket) -> int:
    """Bytes the kernel holds for `sock` that it has not read."""
    buffer = fcntl.ioctl(sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
    return int(struct.unpack("i", buffer)[0])


@pytest.fixture(scope="module")
def account() -> Iterator[tuple[str, LargeApi]]:
    with large_api(PROJECTS, PRODUCTS) as served:
        yield served


@contextmanager
def large_daemon(
    url: str, tmp_path: Path, preexec_fn: Callable[[], None] | None = None, **env: str
) -> Iterator[ExporterProcess]:
    """The exporter over the large account, once every project is on /metrics."""
    full_env = {
        "LATITUDESH_AUTH_TOKEN": "bench-0",
        "LATITUDESH_EXPORTER_API__BASE_URL": url,
        "LATITUDESH_EXPORTER_API__REQUESTS_PER_MINUTE": "6000",
        **env,
    }
    exporter = ExporterProcess([], env=full_env, tmp=tmp_path, preexec_fn=preexec_fn)
    try:
        exporter.wait_ready(timeout=60)
        wait_for(
            lambda: (
                http_get(exporter.url + "/metrics", timeout=30)[2].count(b"\nlatitudesh_up{")
                == PROJECTS
            ),
            timeout=60,
            message="every project on /metrics",
        )
        yield exporter
    finally:
        exporter.stop()


#: Seconds the fake API takes to answer once every project is on /metrics: with four
#: polls at once, about 2 polls land a second, steadily, so that every other scrape
#: meets a new exposition (at the budget's 100 a second the daemon burnt most of a core
#: for the whole module, to prove nothing more; at 20 a second, half of one; at 4, a
#: fifth).
STEADY_LATENCY = 2.0
#: Seconds between two probes of `settle` and of a latency watch: a probe in flight
#: most of the time, without a busy loop's CPU on both sides.
PROBE_EVERY = 0.05


@pytest.fixture(scope="module")
def daemon(
    account: tuple[str, LargeApi], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExporterProcess]:
    """The exporter over 400 projects of 50 products, polls landing all the time: one
    for the module (each test measures what it adds, and leaves nothing held)."""
    url, api = account
    tmp = tmp_path_factory.mktemp("daemon")
    with large_daemon(url, tmp, LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS="2") as exporter:
        api.latency = STEADY_LATENCY
        yield exporter


def ask(port: int, *, gzipped: bool, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    encoding = b"Accept-Encoding: gzip\r\n" if gzipped else b""
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + encoding + b"\r\n")
    return sock


def settle(exporter: ExporterProcess, seconds: float) -> None:
    """Let polls land for `seconds` while scrapes go on (the state under test)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert http_get(exporter.url + "/healthz", timeout=10)[0] == 200
        time.sleep(PROBE_EVERY)  # pacing the probes, not waiting for anything


def test_clients_that_never_read_cost_little_memory_each(daemon: ExporterProcess) -> None:
    """300 gzip scrapes that are never read, while polls land: before, each held its
    own copy of what the kernel had not taken and pinned the joined columns of its
    moment (here +116 MiB; RSS 114 -> 652 MB at 1,000 x 50); now +35 MiB."""
    pid = daemon.proc.pid
    settle(daemon, 2)
    before = rss_mib(pid)
    held = []
    try:
        for index in range(300):
            held.append(ask(daemon.port, gzipped=True))
            if index % 20 == 19:
                settle(daemon, 0.5)  # polls land between the arrivals
        wait_for(
            lambda: all(pending(sock) > 0 for sock in held),
            timeout=60,
            message="every answer started",
        )
        settle(daemon, 4)
        grown = rss_mib(pid) - before
        assert grown < 72, f"RSS grew {grown:.0f} MiB with 300 clients that never read"
        status, _, body = http_get(daemon.url + "/metrics", {"Accept-Encoding": "gzip"}, 30)
        assert status == 200 and gzip.decompress(body).count(b"\nlatitudesh_up{") == PROJECTS
    finally:
        for sock in held:
            sock.close()


def test_plain_text_clients_that_never_read_cost_no_cpu_and_never_delay_probes(
    daemon: ExporterProcess,
) -> None:
    """100 plain-text scrapes never read: their text is inflated only as fast as they
    take it, off the event loop, so /healthz and a gzip scrape answer as usual (before,
    here: /healthz in 2.4 s, RSS +251 MiB; 11 CPU-s burnt in 10 s at 1,000 x 50)."""
    pid = daemon.proc.pid
    settle(daemon, 2)
    before_rss = rss_mib(pid)
    held = [ask(daemon.port, gzipped=False) for _ in range(100)]
    try:
        wait_for(lambda: all(pending(sock) > 0 for sock in held), 60, "every answer started")
        window = time.monotonic()
        worst = 0.0
        while time.monotonic() - window < 5:
            started = time.monotonic()
            assert http_get(daemon.url + "/healthz", timeout=10)[0] == 200
            worst = max(worst, time.monotonic() - started)
            time.sleep(PROBE_EVERY)
        assert worst < 1.0, f"/healthz took {worst:.2f}s beside 100 stuck plain-text clients"
        started = time.monotonic()
        status, _, _ = http_get(daemon.url + "/metrics", {"Accept-Encoding": "gzip"}, 30)
        assert status == 200
        grown = rss_mib(pid) - before_rss
        assert grown < 100, f"RSS grew {grown:.0f} MiB"  # before: +251 MiB
    finally:
        for sock in held:
            sock.close()


@pytest.fixture(scope="module")
def big() -> SnapshotStore:
    answer = load_fixture("billing_usage_new.json")

    def project(index: int) -> tuple[str, dict[str, object], str]:
        attributes = dict(answer["data"]["attributes"])
        attributes["project"] = {"id": f"proj_{index}"}
        return f"proj_{index}", {"data": {"attributes": attributes}}, "USD"

    return store_with(*map(project, range(600)))  # about 6 MB of plain text, 0.2 MB gzipped


def unsent(server: object) -> int:
    """Bytes the server's kernel holds unsent, and its transports hold, for all its
    connections."""
    total = 0
    for connection in list(server._connections):  # type: ignore[attr-defined]
        transport = connection.writer.transport
        total += transport.get_write_buffer_size()
        sock = connection.writer.get_extra_info("socket")
        if sock is not None:
            queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
            total += struct.unpack("i", queued)[0]
    return total


def test_plain_text_is_produced_only_as_far_as_the_client_reads(big: SnapshotStore) -> None:
    """What a client that never reads costs: the kernel holds little for it (before,
    the send buffer grew to 4 MiB and that much text was inflated ahead of it)."""
    with serving(big) as server:
        sock = ask(server.port, gzipped=False)
        try:
            wait_for(lambda: blocked_writers(server) == 1, message="the answer blocked")
            wait_for(lambda: pending(sock) > 0, message="the client's kernel holds some")
            held = pending(sock) + unsent(server)
            assert held < 1024 * 1024, f"{held} bytes produced ahead of a client that never read"
        finally:
            sock.close()


def blocked_writers(server: object) -> int:
    connections = server._connections  # type: ignore[attr-defined]
    return sum(1 for c in connections if c.blocked_since is not None)


def test_at_the_limit_the_longest_stalled_writer_makes_room(big: SnapshotStore) -> None:
    """Every connection mid-answer to a client that does not read: newcomers still get
    in, the longest stalled writer making room (before: only idle connections were
    evicted, and 20 of 20 Prometheus scrapes were reset)."""
    with serving(big, max_connections=16, write_timeout=120) as server:
        stuck = [ask(server.port, gzipped=False, rcvbuf=4096) for _ in range(16)]
        try:
            wait_for(lambda: blocked_writers(server) == 16, message="16 stalled writers")
            for _ in range(20):
                status, _, body = http_get(f"http://127.0.0.1:{server.port}/metrics", timeout=30)
                assert status == 200
                assert body.count(b"\nlatitudesh_billing_price{") == 600
        finally:
            for sock in stuck:
                sock.close()


def test_the_daemon_under_a_low_open_file_limit_keeps_room_for_prometheus(
    tmp_path: Path,
) -> None:
    """`ulimit -n 100`: the connection limit is 36; 36 clients stuck mid-answer, and
    Prometheus's scrapes still get in."""

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))

    stuck: list[socket.socket] = []
    with (
        large_api(PROJECTS, PRODUCTS) as (url, api),  # an account of its own
        large_daemon(url, tmp_path, preexec_fn=low_limit) as exporter,
    ):
        api.latency = STEADY_LATENCY
        try:
            stuck = [ask(exporter.port, gzipped=False, rcvbuf=4096) for _ in range(36)]
            wait_for(lambda: all(pending(s) > 0 for s in stuck), 60, "every stuck answer started")
            for _ in range(20):
                status, _, body = http_get(
                    exporter.url + "/metrics", {"Accept-Encoding": "gzip"}, 30
                )
                assert status == 200
                assert gzip.decompress(body).count(b"\nlatitudesh_up{") == PROJECTS
            assert "connection limit reached" in exporter.output()
        finally:
            for sock in stuck:
                sock.close()


def fetch_pausing(port: int, *, gzipped: bool, hold: int) -> int:
    """Ask with `Connection: close`, read all but the last `hold` bytes, stop reading a
    moment (a client behind a slow link, or busy decompressing), then read the rest;
    returns how many bytes of the answer never came."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    encoding = b"Accept-Encoding: gzip\r\n" if gzipped else b""
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + encoding + b"\r\n")
    sock.settimeout(30)
    received = bytearray()
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head = bytes(received).split(b"\r\n\r\n")[0]
    match = re.search(rb"content-length: (\d+)", head, re.I)
    assert match is not None
    length = int(match.group(1))
    total = len(head) + 4 + length
    paused = False
    with contextlib.closing(sock):
        while True:
            want = total - hold - len(received)
            chunk = sock.recv(65536 if paused or want <= 0 else min(65536, want))
            if not chunk:
                break
            received += chunk
            if not paused and len(received) >= total - hold:
                paused = True
                time.sleep(0.2)  # the pause is the scenario
    return total - len(received)


@pytest.mark.parametrize("gzipped", [True, False], ids=["gzip", "plain"])
def test_an_answer_is_never_cut_when_the_client_asks_to_close(
    big: SnapshotStore, gzipped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The root of "3 of 2,000 scrapes ended 46.7 KB short of their Content-Length":
    after its last write the server waited only until its buffer was below asyncio's
    high-water mark (64 KiB), not empty, then aborted the connection, discarding what
    the kernel had not taken yet. It shows whenever the kernel is full at the end;
    with small socket buffers, nearly every time (before: 11 of 14 answers here came
    short, by up to 41 KB)."""
    accept = HttpServer._accept

    async def small_buffers(server: HttpServer, reader: Any, writer: Any) -> None:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        await accept(server, reader, writer)

    monkeypatch.setattr(HttpServer, "_accept", small_buffers)
    with serving(big) as server:
        holds = [8 << 10, 16 << 10, 32 << 10, 48 << 10, 64 << 10, 96 << 10, 128 << 10]
        missing = {hold: fetch_pausing(server.port, gzipped=gzipped, hold=hold) for hold in holds}
    assert not any(missing.values()), f"bytes missing, by where the client paused: {missing}"


def test_scrapes_while_polls_land_are_always_complete(daemon: ExporterProcess) -> None:
    """Back-to-back gzip scrapes, a fresh connection each, while polls land: every
    answer as long as it says, and a whole exposition (40 answers: a poll lands every
    half second, so scrapes meet column after column)."""
    for _ in range(40):
        connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        connection.request(
            "GET", "/metrics", headers={"Accept-Encoding": "gzip", "Connection": "close"}
        )
        response = connection.getresponse()
        body = response.read()
        assert len(body) == int(response.headers["Content-Length"])
        text = gzip.decompress(body)
        assert text.count(b"\nlatitudesh_up{") == PROJECTS
        assert text.endswith(b"\n") and b"latitudesh_exporter_build_info" in text
        connection.close()
