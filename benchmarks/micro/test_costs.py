"""Per-call costs on the way from an API answer to a scrape's bytes, at 50 products per
project and (for a scrape) 1,000 projects."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from benchmarks.micro.conftest import Account, answer
from benchmarks.workloads import _limits, synthetic_store
from exporter.collector import ProjectCollector
from exporter.exposition import crc32_combine, crc32_combine_python, render_project
from exporter.models import BillingUsageDocument, parse_document
from exporter.usage import build_usage

PID = "proj_b00_00000"
PROMETHEUS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"

# --- a poll ---------------------------------------------------------------------------


def test_json_loads_of_one_answer(benchmark: Any) -> None:
    """The floor of parsing: the standard library's json, no validation."""
    body = answer()
    benchmark(json.loads, body)


def test_parse_one_answer(benchmark: Any) -> None:
    """`models.parse_document`: bounded, tolerant parsing into the pydantic models."""
    body = answer()
    assert benchmark(parse_document, BillingUsageDocument, body).usage_for(PID) is not None


def test_build_one_projects_usage(benchmark: Any) -> None:
    """`usage.build_usage`: one parsed answer into a snapshot."""
    attributes = parse_document(BillingUsageDocument, answer()).usage_for(PID)
    assert attributes is not None
    benchmark(build_usage, PID, attributes, currency="USD", limits=_limits())


def test_render_one_project(benchmark: Any, account: Account) -> None:
    """`exposition.render_project`: one project's sample lines, every family."""
    status = account.store.view().projects[0]
    lines = benchmark(render_project, status)
    assert any(lines)


def test_one_poll_lands(benchmark: Any, account: Account) -> None:
    """Parse, build, store, and the exposition's render and compress of the project: a
    poll's CPU after the HTTP, at 1,000 x 50."""
    indexes = iter(range(10**9))
    benchmark(lambda: account.poll(next(indexes) % 1000))


# --- a scrape -------------------------------------------------------------------------


def test_gzip_scrape_unchanged(benchmark: Any, account: Account) -> None:
    """A Prometheus scrape (OpenMetrics, gzip) of 1,000 x 50 when nothing changed since
    the last: the columns are joined already."""
    account.scrape(PROMETHEUS, "gzip")
    assert benchmark(account.scrape, PROMETHEUS, "gzip") > 0


def test_gzip_scrape_after_one_poll(benchmark: Any, account: Account) -> None:
    """A poll landed since the last scrape: the changed block of each family is joined
    again (the join), then the body as above."""
    indexes = iter(range(10**9))

    def poll_then_scrape() -> int:
        account.poll(next(indexes) % 1000)
        return account.scrape(PROMETHEUS, "gzip")

    benchmark(poll_then_scrape)


def test_plain_text_scrape(benchmark: Any, account: Account) -> None:
    """The rare client without gzip: the same deflate data inflated on the way out."""
    benchmark.pedantic(account.scrape, args=("text/plain", ""), rounds=5, iterations=1)


def test_crc32_combine_zlib(benchmark: Any) -> None:
    """zlib's crc32_combine through ctypes, once per block of a gzip scrape."""
    benchmark(crc32_combine, 0x12345678, 0x9ABCDEF0, 100_000)


def test_crc32_combine_python_fallback(benchmark: Any) -> None:
    """The fallback where libz cannot be loaded: a pass over as many zeros."""
    benchmark(crc32_combine_python, 0x12345678, 0x9ABCDEF0, 100_000)


def test_prometheus_client_render_reference(benchmark: Any) -> None:
    """prometheus_client's own render of the same table at 100 x 50 (the reference the
    exposition is held byte-identical to): what a scrape would cost without the cache."""
    store = synthetic_store(100, 50)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProjectCollector(store.view))
    benchmark.pedantic(generate_latest, args=(registry,), rounds=3, iterations=1)
