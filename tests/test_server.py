"""The HTTP endpoints over a real socket: routes, readiness, caching, gzip, OpenMetrics."""

from __future__ import annotations

import gzip
import http.client
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from exporter.cli import project_rows
from exporter.collector import BillingCollector, ExporterCollector
from exporter.server import Exposition, HttpServer, MetricsApp
from exporter.snapshot import SnapshotStore
from tests.conftest import http_get, parse_samples, sample
from tests.test_collector import golden_store


class Counting(BillingCollector):
    calls = 0

    def collect(self):  # type: ignore[no-untyped-def]
        Counting.calls += 1
        return super().collect()


def serve(store: SnapshotStore, **kwargs: object) -> HttpServer:
    billing = CollectorRegistry(auto_describe=False)
    billing.register(Counting(store.view))
    live = CollectorRegistry(auto_describe=False)
    live.register(ExporterCollector(store.view))
    exposition = Exposition([(billing, lambda: store.view().data_version),
                             (live, lambda: store.view().version)])

    app = MetricsApp(exposition, ready=lambda: store.view().ready,
                     projects=project_rows(store),
                     **kwargs)  # type: ignore[arg-type]
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    return server


@pytest.fixture
def store() -> SnapshotStore:
    return golden_store()


@pytest.fixture
def url(store: SnapshotStore) -> Iterator[str]:
    server = serve(store)
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def test_metrics_are_served_as_text(url: str) -> None:
    status, headers, body = http_get(url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = parse_samples(body.decode())
    assert sample(samples, "latitudesh_billing_price", project_id="proj_old") == 120.505
    assert sample(samples, "latitudesh_exporter_build_info") == 1.0


def test_openmetrics_when_asked(url: str) -> None:
    status, headers, body = http_get(url + "/metrics", {
        "Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1


def test_gzip_when_asked_is_one_valid_stream(url: str) -> None:
    status, headers, body = http_get(url + "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    plain = http_get(url + "/metrics")[2]
    assert gzip.decompress(body).split(b"# HELP latitudesh_up")[0] == \
        plain.split(b"# HELP latitudesh_up")[0]


def test_billing_part_renders_once_per_data_change(store: SnapshotStore, url: str) -> None:
    Counting.calls = 0
    for _ in range(5):
        http_get(url + "/metrics")
    assert Counting.calls == 1
    store.record_failure("proj_old", "timeout", duration=1)  # health only: still cached
    _status, _, body = http_get(url + "/metrics")
    assert Counting.calls == 1
    assert sample(parse_samples(body.decode()), "latitudesh_up", project_id="proj_old") == 0
    store.set_projects(["proj_old"])  # data changed: render again
    http_get(url + "/metrics")
    assert Counting.calls == 2


def test_healthz_and_readyz(url: str) -> None:
    assert http_get(url + "/healthz")[0] == 200
    assert http_get(url + "/readyz")[0] == 200


def test_readyz_is_503_until_every_project_was_polled() -> None:
    store = SnapshotStore()
    store.set_projects(["a", "b"])
    server = serve(store)
    url = f"http://127.0.0.1:{server.port}"
    try:
        assert http_get(url + "/readyz")[0] == 503
        store.record_failure("a", "timeout", duration=1)
        assert http_get(url + "/readyz")[0] == 503
        store.record_failure("b", "timeout", duration=1)
        assert http_get(url + "/readyz")[0] == 200
    finally:
        server.stop()


def test_landing_page_links_and_escapes(url: str) -> None:
    status, headers, body = http_get(url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert 'href="/metrics"' in page and 'href="/readyz"' in page
    assert "quote&quot;slash\\" in page  # the tricky slug, HTML-escaped
    assert "proj_old" in page


def test_unknown_path_is_404_and_other_methods_405(url: str) -> None:
    assert http_get(url + "/nope")[0] == 404
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    connection.request("POST", "/metrics", body=b"x")
    response = connection.getresponse()
    assert response.status == 405
    assert response.getheader("Allow") == "GET, HEAD"
    connection.close()


def test_head_has_no_body(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    connection.request("HEAD", "/metrics")
    response = connection.getresponse()
    assert response.status == 200
    assert int(response.getheader("Content-Length") or 0) > 0
    assert response.read() == b""
    connection.close()


def test_custom_telemetry_path(store: SnapshotStore) -> None:
    server = serve(store, telemetry_path="/probe")
    url = f"http://127.0.0.1:{server.port}"
    try:
        assert http_get(url + "/probe")[0] == 200
        assert http_get(url + "/metrics")[0] == 404
    finally:
        server.stop()


def test_parts_without_a_version_render_every_scrape_others_once_per_version() -> None:
    class Tally:
        def __init__(self, name: str) -> None:
            self.name, self.calls = name, 0

        def collect(self):  # type: ignore[no-untyped-def]
            from prometheus_client.core import GaugeMetricFamily

            self.calls += 1
            yield GaugeMetricFamily(self.name, "calls so far", value=self.calls)

    cached, fresh = Tally("cached_part"), Tally("fresh_part")
    registries = []
    for tally in (cached, fresh):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(tally)  # type: ignore[arg-type]
        registries.append(registry)
    version = [1]
    exposition = Exposition([(registries[0], lambda: version[0]), (registries[1], None)])
    for _ in range(3):
        exposition.render("", compress=False)
    assert (cached.calls, fresh.calls) == (1, 3)
    version[0] = 2
    chunks, _ = exposition.render("", compress=False)
    body = b"".join(chunks)
    assert cached.calls == 2
    assert b"cached_part 2.0" in body and b"fresh_part 4.0" in body


def test_gzip_is_made_from_the_cached_text_not_a_second_render(store: SnapshotStore,
                                                               url: str) -> None:
    Counting.calls = 0
    http_get(url + "/metrics")
    http_get(url + "/metrics", {"Accept-Encoding": "gzip"})
    assert Counting.calls == 1
