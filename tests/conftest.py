"""Shared helpers: the fake API over real sockets, polling with deadlines, scraping."""

from __future__ import annotations

import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from exporter.client import LatitudeClient
from exporter.demo import DemoAccount, DemoApi
from exporter.ratelimit import RequestBudget

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOKEN = "lat_test_0123456789abcdef"
#: A fixed instant, so the simulated account's figures are exact.
FIXED_NOW = 1_795_000_000.0
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, message: str = "") -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message or condition}")
        time.sleep(0.02)


def require_binary(name: str) -> str:
    """The path of `name`; skip locally when it is missing, fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (apt-get install the package .ci/run installs)"
        if IN_CI:
            pytest.fail(f"{reason}; CI must have it")
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def frozen_account(**kwargs: Any) -> DemoAccount:
    return DemoAccount(clock=lambda: FIXED_NOW, **kwargs)


@pytest.fixture
def demo_api() -> Iterator[DemoApi]:
    with DemoApi(frozen_account(), token=TOKEN) as api:
        yield api


_OPEN_CLIENTS: list[LatitudeClient] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN_CLIENTS:
        _OPEN_CLIENTS.pop().close()


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """A socket or file left open in a reference cycle warns only when the collector
    runs, which is whenever it happens to: collecting after every test puts the
    ResourceWarning (an error here) on the test that leaked, or close behind it when
    something (a timer thread, say) keeps the object reachable a while longer."""
    yield
    gc.collect()


def make_client(url: str, *, token: str = TOKEN, budget: RequestBudget | None = None,
                **kwargs: Any) -> LatitudeClient:
    """A client with fast backoff, closed after the test."""
    kwargs.setdefault("backoff_base", 0.001)
    kwargs.setdefault("timeout", 5.0)
    client = LatitudeClient(token=lambda: SecretStr(token),
                            budget=budget or RequestBudget(1e6), base_url=url, **kwargs)
    _OPEN_CLIENTS.append(client)
    return client


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the one sample of `name` whose labels include `labels`."""
    found = [value for (n, ls), value in samples.items()
             if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def http_get(url: str, headers: dict[str, str] | None = None,
             timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class ExporterProcess:
    """`latitudesh-exporter` as a real process, its stderr kept for assertions."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"exporter-{self.port}.log"
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("LATITUDESH_EXPORTER_", "LATITUDESH_AUTH"))}
        full_env.update(env or {})
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--web.listen-address",
             f"127.0.0.1:{self.port}", *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd or ROOT,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"exporter exited with {self.proc.returncode}:\n{self.output()}")
            try:
                return http_get(self.url + "/readyz", timeout=2)[0] == 200
            except OSError:
                return False
        wait_for(ready, timeout, "the exporter to be ready")

    def scrape(self) -> Samples:
        status, _, body = http_get(self.url + "/metrics")
        assert status == 200
        return parse_samples(body.decode())

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
