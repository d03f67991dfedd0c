"""One client, one reload never takes from another: an unauthenticated flood beside
probes and Prometheus's scrapes, and SIGHUPs racing and storming, against the daemon
as it runs (real sockets, real signals)."""

from __future__ import annotations

import base64
import os
import signal
import socket
import threading
import time
from pathlib import Path

import bcrypt
import yaml

from exporter.daemon import Reloader
from exporter.signals import Inbox
from testing.waits import wait_for
from tests.conftest import ExporterProcess

PASSWORD = "scrape-password"
HASHED = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()


def status_of(port: int, path: str, source: str = "127.0.0.1", auth: str | None = None) -> int:
    """One GET from `source` (any 127/8 address is this host), its status code."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        extra = f"Authorization: {auth}\r\n" if auth else ""
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def web_config(path: Path, users: list[str], burst: int = 1000) -> None:
    """Written whole and renamed into place, as a config manager (or a kubelet) does."""
    part = path.with_suffix(".part")
    part.write_text(
        yaml.safe_dump(
            {
                "basic_auth_users": dict.fromkeys(users, HASHED),
                "rate_limit": {"interval": "1m", "burst": burst},
            }
        )
    )
    part.replace(path)


def test_a_flood_never_limits_probes_or_credentialed_scrapes(tmp_path: Path) -> None:
    """Before: one bucket for everyone, so `/healthz`, `/readyz` and Prometheus's
    scrapes got 429 behind an unauthenticated flood."""
    web = tmp_path / "web.yml"
    web_config(web, ["prometheus"], burst=5)
    exporter = ExporterProcess(["--demo", "--web.config.file", str(web)], tmp=tmp_path)
    try:
        exporter.wait_ready()
        port = exporter.port
        flood = [status_of(port, "/metrics", "127.0.0.2") for _ in range(60)]
        assert flood.count(429) >= 50 and set(flood) <= {401, 429}
        probes = [status_of(port, p, "127.0.0.2") for p in ("/healthz", "/readyz") * 10]
        assert set(probes) == {200}
        # Prometheus's own allowance (5 a minute here) is whole, whatever the flood spent.
        scrapes = [status_of(port, "/metrics", auth=basic("prometheus")) for _ in range(5)]
        assert set(scrapes) == {200}
    finally:
        exporter.stop()


def test_reloads_are_serialised_and_a_storm_costs_two() -> None:
    """The newest request always wins and any number of signals during a reload ask
    for just one more."""
    stop = threading.Event()
    file = ["v1"]
    applied: list[str] = []
    started = threading.Event()
    release = threading.Event()

    def work() -> None:
        seen = file[0]
        started.set()
        release.wait(10)
        applied.append(seen)

    reloader = Reloader(work, stop)
    reloader.start()
    reloader.request()
    assert started.wait(10)
    file[0] = "v2"  # the file changes while the first, slow reload runs...
    for _ in range(100):
        reloader.request()  # ...and a storm of signals arrives
    release.set()
    wait_for(lambda: reloader.done == 2, message="two reloads")
    assert applied == ["v1", "v2"]  # the newest file is applied last
    wait_for(lambda: not reloader.pending, message="nothing more asked")
    assert reloader.done == 2
    stop.set()
    reloader.request()


def test_sighup_race_and_storm_the_newest_web_config_wins(tmp_path: Path) -> None:
    """Before: an older, slower reload finished last and a removed user kept access
    (3/3 runs); 100 SIGHUPs made 93 threads and held scrapes 7 s."""
    web = tmp_path / "web.yml"
    web_config(web, ["prometheus", "leaver"])
    exporter = ExporterProcess(["--demo", "--web.config.file", str(web)], tmp=tmp_path)
    try:
        exporter.wait_ready()
        port = exporter.port
        assert status_of(port, "/metrics", auth=basic("leaver")) == 200
        threads = len(os.listdir(f"/proc/{exporter.proc.pid}/task"))
        exporter.proc.send_signal(signal.SIGHUP)
        web_config(web, ["prometheus"])  # the user is removed while a reload may run
        for _ in range(100):
            exporter.proc.send_signal(signal.SIGHUP)
        started = time.monotonic()
        assert status_of(port, "/metrics", auth=basic("prometheus")) == 200
        assert time.monotonic() - started < 5.0  # typically well under 0.1 s

        def removed() -> bool:
            return status_of(port, "/metrics", auth=basic("leaver")) == 401

        try:
            wait_for(removed, message="the removed user to lose access")
        except BaseException:
            print(exporter.output())  # what the daemon said, in the failure's report
            raise
        for _ in range(5):  # and it stays so: no older reload lands after
            assert removed()
        # Worker threads start as they are needed; before, one thread per signal (+93).
        assert len(os.listdir(f"/proc/{exporter.proc.pid}/task")) <= threads + 10
        assert exporter.output().count("msg=reloaded") <= 4
    finally:
        assert exporter.stop() == 0


def test_a_signal_storm_inside_a_handler_never_deadlocks_the_main_thread() -> None:
    """A handler that set a `threading.Event` could be interrupted by the next signal
    while holding the event's lock: the main thread then froze for good (2 of 16
    daemons under 100 SIGHUPs: no reload, no shutdown). The inbox's handler takes no
    lock; every signal is handed over in order."""
    inbox = Inbox((signal.SIGUSR1, signal.SIGUSR2))
    try:
        for _ in range(200):
            os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR2)
        received: list[signal.Signals] = []
        while signal.SIGUSR2 not in received:
            received += inbox.wait()
        assert set(received) == {signal.SIGUSR1, signal.SIGUSR2}
        inbox.wake()  # a wake-up without a signal returns nothing
        assert inbox.wait() == []
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
