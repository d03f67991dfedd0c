"""Shared helpers: the fake API over real sockets, polling with deadlines, scraping,
the exporter as a real process, and hostile inputs run under a memory limit."""

from __future__ import annotations

import itertools
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, settings
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from exporter import __version__
from exporter.client import LatitudeClient
from exporter.collector import ProjectCollector, TeamCollector
from exporter.config import ApiSettings, Settings
from exporter.exposition import Exposition
from exporter.httpserver import HttpServer
from exporter.models import BillingUsageDocument, parse_document
from exporter.poller import Poller, UsageSource
from exporter.ratelimit import RequestBudget
from exporter.simulation import DemoAccount
from exporter.snapshot import Budget, UsageSnapshot
from exporter.store import SnapshotStore
from exporter.usage import Limits, build_usage
from exporter.web import WebApp
from exporter.webconfig import WebSettings
from testing.fakeapi import FakeApi
from testing.ports import listening_port
from testing.waits import wait_for

ROOT = Path(__file__).resolve().parent.parent

#: The modules that take longest on one worker (`--durations=0`, 2 cores, 4 workers:
#: 20 to 85 s each), first: `--dist loadscope` hands modules out in collection order,
#: and one of them started last kept a worker busy long after the others were done
#: (the suite 181 s instead of ~140 s, issue 29). A module not named keeps its place.
LONGEST_FIRST = (
    "test_slow_clients",
    "test_benchmarks",
    "test_time",
    "test_cli",
    "test_pacing",
    "test_hardening",
    "test_state",
    "test_e2e_restart",
    "test_container",
    "test_e2e",
    "test_curve",
    "test_rules",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLDEN = Path(__file__).resolve().parent / "golden"
TOKEN = "lat_test_0123456789abcdef"
#: Every project of the demo's two teams.
DEMO_PROJECTS = (
    "proj_demo_web",
    "proj_demo_gpu",
    "proj_demo_data",
    "proj_demo_dev",
    "proj_demo_loja",
)
#: A fixed instant, so the simulated account's figures are exact.
FIXED_NOW = 1_795_000_000.0
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Property tests assert properties; CI runs enough examples to mean something, and a
# local run stays quick. Derandomized: the same examples each run, no flaky surprises.
settings.register_profile(
    "default",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
settings.load_profile("default")


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def require_binary(name: str) -> str:
    """The path of the program `name`, on the PATH or in this venv (the dev extra's
    programs); skip locally when it is missing, fail under CI=true. Every name asked for
    must be declared in `.ci/tools` (tests/test_ci.py checks)."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        reason = (
            f"{name} is not installed (.ci/tools says where it comes from; .ci/run installs it)"
        )
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
def fake_api() -> Iterator[FakeApi]:
    with FakeApi(frozen_account(token=TOKEN)) as api:
        yield api


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """TLS files of one test CA, made once a session (as files: the web config names
    files): the server's certificate for localhost and 127.0.0.1 (`cert`, `key`, and the
    key encrypted with the password "pass", `encrypted`), the CA (`ca`), two clients it
    issued (`client` for prometheus@example, `other` for grafana@example) and one another
    CA issued (`stranger`), each client file holding its key and its chain."""
    tmp = tmp_path_factory.mktemp("tls")
    names = ("cert", "key", "encrypted", "ca", "client", "other", "stranger")
    files = {name: tmp / f"{name}.pem" for name in names}
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.cert_chain_pems[0].write_to_path(files["cert"])
    server.private_key_pem.write_to_path(files["key"])
    ca.cert_pem.write_to_path(files["ca"])
    key = serialization.load_pem_private_key(server.private_key_pem.bytes(), password=None)
    files["encrypted"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    clients = {
        "client": ca.issue_cert("prometheus@example"),
        "other": ca.issue_cert("grafana@example"),
        "stranger": trustme.CA().issue_cert("mallory@example"),
    }
    for name, issued in clients.items():
        issued.private_key_and_cert_chain_pem.write_to_path(files[name])
    return files


def tls_web_config(certs: dict[str, Path], **tls: object) -> dict[str, Any]:
    """A web config (as YAML would hold it) serving TLS with the `certs` server's files."""
    return {
        "tls_server_config": {"cert_file": str(certs["cert"]), "key_file": str(certs["key"]), **tls}
    }


@pytest.fixture
def make_client() -> Iterator[Callable[..., LatitudeClient]]:
    """Clients with fast backoff, closed after the test."""
    made: list[LatitudeClient] = []

    def make(
        url: str, *, token: str = TOKEN, budget: RequestBudget | None = None, **kwargs: Any
    ) -> LatitudeClient:
        kwargs.setdefault("backoff_base", 0.001)
        kwargs.setdefault("timeout", 5.0)
        client = LatitudeClient(
            token=lambda: SecretStr(token),
            budget=budget or RequestBudget(1e6),
            api=api_settings(url, kwargs),
            **kwargs,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


#: Client arguments the tests give by their old names, and the api setting each is.
_API_FIELDS = {
    "timeout": "timeout_seconds",
    "max_retries": "max_retries",
    "max_retry_wait": "max_retry_wait_seconds",
    "max_response_bytes": "max_response_bytes",
}


def api_settings(url: str, kwargs: dict[str, Any] | None = None) -> ApiSettings:
    """The `api` section for `url`, taking (and removing) the settings in `kwargs`."""
    given = kwargs if kwargs is not None else {}
    fields = {name: given.pop(arg) for arg, name in _API_FIELDS.items() if arg in given}
    return ApiSettings(base_url=url, **fields)


def default_limits(**overrides: int) -> Limits:
    """The cardinality guards at the config's defaults, or as given."""
    settings = Settings()
    values = {
        "products": settings.max_products_per_project,
        "servers": settings.max_servers_per_project,
        "tags_per_server": settings.max_tags_per_server,
    }
    return Limits(**{**values, **overrides})


def new_poller(source: UsageSource, store: SnapshotStore, **kwargs: Any) -> Poller:
    """A poller as the CLI builds one, at the config's defaults unless given."""
    settings = Settings()
    kwargs.setdefault("team", None)
    kwargs.setdefault("interval", settings.poll.interval_seconds)
    kwargs.setdefault("concurrency", settings.poll.concurrency)
    kwargs.setdefault("limits", default_limits())
    kwargs.setdefault("budget_seconds", lambda requests: 0.0)
    kwargs.setdefault("grace", settings.api.timeout_seconds)
    return Poller(source, store, **kwargs)


#: When the fixtures' answers are taken as received: two thirds into their period
#: (2026-11-01 to 2026-12-01).
AT = 1_795_219_200.0  # 2026-11-21T00:00:00Z


def usage_of(
    payload: dict[str, Any] | bytes,
    project: str,
    *,
    currency: str = "USD",
    limits: Limits | None = None,
    at: float | None = None,
) -> UsageSnapshot:
    """`payload`'s usage of `project`, as if received at `at` (default: `AT`)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    attributes = parse_document(BillingUsageDocument, body).usage_for(project)
    assert attributes is not None
    return build_usage(
        project,
        attributes,
        currency=currency,
        limits=limits or default_limits(),
        at=AT if at is None else at,
    )


def store_with(
    *payloads: tuple[str, dict[str, Any], str],
    team: str = "default",
    limits: Limits | None = None,
) -> SnapshotStore:
    """A store holding one successful poll of each (project id, answer, currency)."""
    store = SnapshotStore()
    store.add_team(team)
    store.set_projects(team, ((pid, "") for pid, _, _ in payloads))
    for pid, payload, currency in payloads:
        store.record_success(
            team,
            usage_of(payload, pid, currency=currency, limits=limits),
            duration=0.25,
            now=1_795_000_000.0,
        )
    return store


def versionless(text: str) -> str:
    """The build info carries this exporter's and this Python's versions: not the data
    a golden file pins."""
    return text.replace(f'version="{__version__}"', 'version="VERSION"').replace(
        f'python_version="{platform.python_version()}"', 'python_version="PYTHON"'
    )


def reference_exposition(store: SnapshotStore) -> bytes:
    """What prometheus_client renders for the store: the exposition's reference."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProjectCollector(store.view))
    registry.register(TeamCollector(store.view))
    return generate_latest(registry)


NEW = "proj_r0MK4O4kDa95w"
TRICKY = {
    "data": {
        "attributes": {
            "project": {
                "id": "proj_tricky",
                "slug": 'quote"slash\\',
                "name": "Café Ωmega\nline two",
            },
            "price": 150,
            "products": [
                {
                    "id": "si_x",
                    "name": 'GPU "big" \\ box',
                    "resource": "bare_metal",
                    "unit": "hour",
                    "usage_type": "metered",
                    "price": 150,
                    "quantity": 1.5,
                    "metadata": {
                        "id": "sv_1",
                        "hostname": "hôte-01",
                        "plan": "plan\\with\\slashes",
                        "tags": ['a "tag"'],
                    },
                },
            ],
        }
    }
}


#: The golden file's budgets: a project's by its slug, a tag's, the team's (only its USD
#: project counts) and one on a tag no server carries.
GOLDEN_BUDGETS = (
    Budget("default", 1000.0, (50.0, 75.0, 90.0, 100.0), "project", "fantastic-iron-clock"),
    Budget("default", 500.0, (80.0, 100.0), "tag", "web"),
    Budget("default", 2000.0, (12.5,)),
    Budget("default", 10.0, (100.0,), "tag", "nowhere"),
)


def golden_store() -> SnapshotStore:
    """Both answer shapes and every escaping case, as the golden file shows them."""
    store = store_with(
        (NEW, load_fixture("billing_usage_new.json"), "USD"),
        ("proj_old", load_fixture("billing_usage_old.json"), "BRL"),
        ("proj_tricky", TRICKY, "EUR"),
    )
    store.set_budgets(GOLDEN_BUDGETS)
    return store


def exposition_of(store: SnapshotStore) -> Exposition:
    """The exposition as the CLI wires it (without process metrics: deterministic)."""
    tail = CollectorRegistry(auto_describe=False)
    tail.register(TeamCollector(store.view))
    exposition = Exposition(tail)
    store.subscribe(exposition)
    return exposition


@contextmanager
def serving(
    store: SnapshotStore,
    *,
    web: WebSettings = WebSettings(),  # noqa: B008
    telemetry_path: str = "/metrics",
    **server: Any,
) -> Iterator[HttpServer]:
    """The HTTP side exactly as the CLI wires it, on a free local port."""
    app = WebApp(exposition_of(store), store.view, telemetry_path=telemetry_path, web=web)
    http = HttpServer(app, "127.0.0.1", 0, web=web, **server)
    http.start()
    try:
        yield http
    finally:
        http.stop()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the one sample of `name` whose labels include `labels`."""
    found = [value for (n, ls), value in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def http_get(
    url: str, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_bounded(
    code: str, *, memory_mib: int = 600, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run Python `code` in a child limited to `memory_mib` of address space, so that a
    blow-up fails the test (MemoryError, non-zero exit) instead of the machine."""
    limit = memory_mib * 1024 * 1024

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        preexec_fn=limit_memory,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        check=False,
    )


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`latitudesh-exporter ARGS` to its end, without the caller's exporter settings."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LATITUDESH_EXPORTER_", "LATITUDESH_AUTH"))
    }
    # A state file of its own: never the user's, never another test's.
    full_env["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="state-")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or ROOT,
        timeout=timeout,
        check=False,
    )


def api_env(api: FakeApi, **extra: str) -> dict[str, str]:
    """An exporter's environment for the fake API: its token, fast, few retries."""
    return {
        "LATITUDESH_AUTH_TOKEN": TOKEN,
        "LATITUDESH_EXPORTER_API__BASE_URL": api.url,
        "LATITUDESH_EXPORTER_API__REQUESTS_PER_MINUTE": "6000",
        "LATITUDESH_EXPORTER_API__MAX_RETRIES": "1",
        **extra,
    }


_PROCESSES = itertools.count()


class ExporterProcess:
    """`latitudesh-exporter` as a real process, its output kept for assertions."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        tmp: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        folder = tmp or Path(os.environ.get("TMPDIR", "/tmp"))
        self.log_path = folder / f"exporter-{os.getpid()}-{next(_PROCESSES)}.log"
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LATITUDESH_EXPORTER_", "LATITUDESH_AUTH"))
        }
        # A state file of its own (a test that restarts passes XDG_STATE_HOME itself).
        full_env["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="state-", dir=folder)
        full_env.update(env or {})
        self._log = self.log_path.open("wb")
        self._port: int | None = None
        # Port 0: the exporter binds a free port itself and says which in its log, so
        # no other test can take it between a pick and the bind.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--web.listen-address", "127.0.0.1:0", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd or ROOT,
            preexec_fn=preexec_fn,  # noqa: PLW1509 (limits for the child only)
        )

    @property
    def port(self) -> int:
        """The port the exporter bound, read from its "listening" log line."""
        if self._port is None:

            def bound() -> int | None:
                if self.proc.poll() is not None:
                    pytest.fail(f"exporter exited with {self.proc.returncode}:\n{self.output()}")
                return listening_port(self.output())

            self._port = wait_for(bound, 30, "the exporter to listen")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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


@pytest.fixture
def browser() -> Iterator[object]:
    """Chromium, headless, driven by Playwright (the system's chromium: `.ci/tools`)."""
    chromium = require_binary("chromium")
    from playwright.sync_api import sync_playwright  # the test extra

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield launched
        launched.close()
