"""What the micro-benchmarks time against: one project's answer, and a large account's store
with the exposition that the daemon keeps beside it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from benchmarks.workloads import _limits, synthetic_store
from exporter.collector import TeamCollector
from exporter.exposition import Exposition
from exporter.models import BillingUsageDocument, parse_document
from exporter.store import SnapshotStore
from exporter.usage import build_usage
from testing.largeapi import SEQ, project_body

PRODUCTS = 50  # per project, as in every benchmark
PROJECTS = 1000  # the account of the steady state


def answer(index: int = 0, seq: int = 100_000_000_001) -> bytes:
    """Project `index`'s billing answer, its figures at sequence number `seq`."""
    return project_body(0, index, PRODUCTS).replace(SEQ, str(seq).encode())


@dataclass
class Account:
    """A store of PROJECTS x PRODUCTS and the exposition subscribed to it."""

    store: SnapshotStore
    exposition: Exposition
    sequence: Iterator[int]

    def poll(self, index: int) -> None:
        """What one poll of project `index` does after the HTTP: parse, build, store
        (which tells the exposition, which renders and compresses the project)."""
        pid = f"proj_b00_{index:05d}"
        body = answer(index, next(self.sequence))
        attributes = parse_document(BillingUsageDocument, body).usage_for(pid)
        assert attributes is not None
        usage = build_usage(pid, attributes, currency="USD", limits=_limits(), at=1_795_000_000.0)
        self.store.record_success("bench", usage, duration=0.2, now=1_795_000_000.0)

    def scrape(self, accept: str, encoding: str) -> int:
        """The bytes of one scrape's body, produced as the server sends them."""
        body = self.exposition.render(accept, encoding)
        return sum(len(chunk) for chunk in body.chunks)


@pytest.fixture(scope="session")
def account() -> Account:
    store: Any = synthetic_store(PROJECTS, PRODUCTS)
    tail = CollectorRegistry(auto_describe=False)
    tail.register(TeamCollector(store.view))
    exposition = Exposition(tail)
    store.subscribe(exposition)
    return Account(store, exposition, count(200_000_000_001))
