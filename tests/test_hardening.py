"""Faults and hostile input over real sockets: every failure counted and bounded in time
and memory, chaos with scrapes running, churn, bad keys, rotating token files."""

from __future__ import annotations

import os
import random
import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from exporter import errors
from exporter.config import DEFAULT_TEAM
from exporter.errors import POLL_ERROR_REASONS
from exporter.httpserver import HttpServer
from exporter.poller import Poller
from exporter.simulation import DemoAccount, DemoProduct, DemoProject, DemoServer
from exporter.snapshot import OTHER
from exporter.store import SnapshotStore
from testing.fakeapi import CHAOS, HOSTILE, FakeApi, Fault, probe_script
from testing.waits import wait_for
from tests.conftest import (
    TOKEN,
    ExporterProcess,
    api_env,
    frozen_account,
    http_get,
    new_poller,
    parse_samples,
    run_bounded,
    sample,
    serving,
)

PROJECTS = ["proj_demo_web", "proj_demo_gpu", "proj_demo_data", "proj_demo_dev"]


@dataclass
class Rig:
    api: FakeApi
    store: SnapshotStore
    poller: Poller
    server: HttpServer
    metrics_url: str
    clock: list[float]


@pytest.fixture
def rig(make_client) -> Iterator[Rig]:  # type: ignore[no-untyped-def]
    api = FakeApi(frozen_account(token=TOKEN)).start()
    store = SnapshotStore()
    client = make_client(
        api.url,
        on_request=partial(store.record_request, DEFAULT_TEAM),
        max_retries=1,
        timeout=2.0,
        max_retry_wait=0.05,
        unauthorized_backoff=0,
        # over 9,000 products (3.3 MB), under 15,000 (5.5 MB): CHAOS folds one, refuses
        # the other; a small cap keeps the huge answer quick to make (0.2 s)
        max_response_bytes=4 * 1024 * 1024,
    )
    clock = [1000.0]
    poller = new_poller(client, store, concurrency=4, now=lambda: clock[0])
    with serving(store) as server:
        yield Rig(api, store, poller, server, f"http://127.0.0.1:{server.port}/metrics", clock)
    poller.stop()
    api.stop()


#: Seconds between two scrapes of the chaos test: one scrape lands in each cycle many
#: times over, without a busy loop's CPU on both sides (it doubled the test's cost).
SCRAPE_EVERY = 0.02


def test_chaos_every_error_counted_once_others_fresh_scrapes_always_answer(rig: Rig) -> None:
    stop = threading.Event()
    scrape_failures: list[str] = []
    scrapes = [0]

    def scraper() -> None:  # scrapes all along: /metrics must answer every time
        while not stop.wait(SCRAPE_EVERY):
            try:
                status, _, body = http_get(rig.metrics_url, timeout=10)
                parse_samples(body.decode())
                if status != 200:
                    scrape_failures.append(str(status))
            except Exception as exc:
                scrape_failures.append(repr(exc))
            scrapes[0] += 1

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    assert rig.poller.refresh()
    try:
        for cycle, (fault, reason) in enumerate(CHAOS):
            target = PROJECTS[cycle % len(PROJECTS)]
            before = {p.project_id: p.errors for p in rig.store.view().projects}
            rig.clock[0] += 60
            rig.api.inject(fault, project=target, times=None)
            rig.poller.refresh()
            rig.api.clear_faults()
            view = rig.store.view()
            status = {p.project_id: p for p in view.projects}
            where = f"cycle {cycle}: {fault} on {target}"
            if reason is None:
                assert status[target].up, where
            else:
                assert not status[target].up, where
                assert status[target].last_error == reason, where
                assert status[target].usage is not None, f"{where}: last good values lost"
            changed = {
                (pid, r): after - was
                for pid, p in status.items()
                for r, was, after in zip(POLL_ERROR_REASONS, before[pid], p.errors, strict=True)
                if after != was
            }
            assert changed == ({(target, reason): 1} if reason else {}), where
            for other in PROJECTS:
                if other != target:
                    assert status[other].up, f"{where}: {other} was affected"
                    assert status[other].last_success == rig.clock[0], where
    finally:
        stop.set()
        thread.join(timeout=15)
    assert scrape_failures == []
    assert scrapes[0] > len(CHAOS)
    # the last cycle was a good one: everyone recovered and the guard held
    rig.clock[0] += 60
    rig.api.inject(Fault("huge", products=9_000), project="proj_demo_web", times=None)
    assert rig.poller.refresh()
    web = next(p for p in rig.store.view().projects if p.project_id == "proj_demo_web")
    assert web.usage is not None
    assert len(web.usage.products) == 1001
    assert web.usage.products[-1].product_id == OTHER
    assert web.usage.products_folded == 9_004 - 1000
    samples = parse_samples(http_get(rig.metrics_url)[2].decode())
    prices = [
        ls
        for (name, ls) in samples
        if name == "latitudesh_billing_product_price" and ("project_id", "proj_demo_web") in ls
    ]
    assert len(prices) == 1001
    assert (
        sample(samples, "latitudesh_billing_servers_folded", project_id="proj_demo_web")
        == 9_003 - 1000
    )


def test_a_scrape_answers_at_once_while_a_poll_hangs(rig: Rig) -> None:
    assert rig.poller.refresh()
    rig.api.inject(Fault("delay", delay=5.0), times=None)
    arrived = rig.api.arrivals
    hanging = threading.Thread(target=rig.poller.refresh, daemon=True)
    hanging.start()
    wait_for(lambda: rig.api.arrivals > arrived, timeout=10, message="a poll in flight")
    status, _, body = http_get(rig.metrics_url, timeout=2)  # would time out if it waited
    assert status == 200
    assert sample(parse_samples(body.decode()), "latitudesh_up", project_id="proj_demo_web") == 1.0
    rig.api.clear_faults()
    hanging.join(timeout=15)


# --- hostile answers, under a memory limit -----------------------------------------


@pytest.fixture(scope="module")
def hostile_api() -> Iterator[FakeApi]:
    with FakeApi(frozen_account(token=TOKEN)) as api:
        yield api


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_answer_is_refused_within_bounded_memory(hostile_api: FakeApi, name: str) -> None:
    fault, outcome = HOSTILE[name]
    hostile_api.inject(fault(), project="proj_demo_web")
    result = run_bounded(
        probe_script(hostile_api.url, TOKEN),
        memory_mib=700,
        env={"MALLOC_ARENA_MAX": "2"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith(outcome)
    peak = int(lines[1].split()[1])
    print(f"{name}: peak RSS {peak} MiB")
    assert peak < 400


@pytest.mark.parametrize("layers", [1, 2])
def test_a_gzip_bomb_is_refused_before_it_expands(hostile_api: FakeApi, layers: int) -> None:
    """256 MiB of spaces, gzipped once (255 KiB) or twice (590 bytes). httpx's decoders
    inflate at once whatever they are given, so the client hands them the raw bytes in
    slices and no call yields more than `client.DECODE_STEP`. Measured: 76 and 70 MiB
    peak RSS; with the decoders fed unsliced, 175 and 560 MiB."""
    bomb = Fault("gzip", layers=layers, body=" " * (256 * 1024 * 1024))
    hostile_api.inject(bomb, project="proj_demo_web")
    result = run_bounded(
        probe_script(hostile_api.url, TOKEN), memory_mib=700, env={"MALLOC_ARENA_MAX": "2"}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "REFUSED invalid_response"
    peak = int(lines[1].split()[1])
    print(f"gzip bomb, {layers} layer(s): peak RSS {peak} MiB")
    assert peak < 120


def test_endless_project_pages_stop_at_the_cap(make_client) -> None:  # type: ignore[no-untyped-def]
    with FakeApi(frozen_account(token=TOKEN)) as api:
        api.inject(Fault("pages"), project="/projects", times=None)
        store = SnapshotStore()
        poller = new_poller(make_client(api.url, max_retries=0), store)
        assert not poller.refresh()
        assert api.request_count("/projects") == 100
        (team,) = store.view().teams
        assert team.discovery_errors[POLL_ERROR_REASONS.index("invalid_response")] == 1
        poller.stop()


def test_a_bad_key_is_not_hammered(make_client) -> None:  # type: ignore[no-untyped-def]
    with FakeApi(frozen_account(token="the-real-token")) as api:
        store = SnapshotStore()
        client = make_client(api.url, token="a-wrong-token", max_retries=3)
        poller = new_poller(client, store, concurrency=2)
        for _ in range(5):
            poller.refresh()
        assert api.request_count() == 1  # one 401, then nothing until the back-off ends
        (team,) = store.view().teams
        assert team.discovery_errors[POLL_ERROR_REASONS.index("unauthorized")] == 5
        # Said in plain order: when the back-off ends, not "300s before" it.
        with pytest.raises(errors.Unauthorized, match=r"the back-off ends in (300|299)s"):
            client.projects()
        assert store.view().ready  # a failing API never hides the exporter
        poller.stop()


def test_token_file_rotation_and_a_vanishing_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("revoked-token\n")
    token_file.chmod(0o644)  # world-readable: must be warned about
    with FakeApi(frozen_account(token=TOKEN)) as api:
        env = api_env(
            api,
            LATITUDESH_EXPORTER_API__TOKEN_FILE=str(token_file),
            LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS="1",
        )
        del env["LATITUDESH_AUTH_TOKEN"]
        exporter = ExporterProcess([], env=env, cwd=tmp_path, tmp=tmp_path)
        try:
            wait_for(
                lambda: "unauthorized" in exporter.output(),
                timeout=30,
                message="the rejected token to be reported",
            )
            exporter.wait_ready(timeout=30)  # ready although the key is refused
            token_file.write_text(TOKEN + "\n")
            os.utime(token_file, (1, 1))
            wait_for(
                lambda: (
                    sample(exporter.scrape(), "latitudesh_up", project_id="proj_demo_web") == 1.0
                ),
                timeout=30,
                message="polls to succeed with the rotated token",
            )
            token_file.unlink()  # the secret vanishes for good
            wait_for(
                lambda: (
                    sample(exporter.scrape(), "latitudesh_up", project_id="proj_demo_web") == 0.0
                ),
                timeout=30,
                message="polls to fail without a token",
            )
            samples = exporter.scrape()
            failed = sample(
                samples,
                "latitudesh_poll_errors_total",
                project_id="proj_demo_web",
                reason="token_unreadable",
            )
            assert failed is not None and failed >= 1
            assert (
                sample(samples, "latitudesh_billing_price", project_id="proj_demo_web") is not None
            )  # last data kept
        finally:
            exporter.stop()
        output = exporter.output()
    assert 'msg="token file is readable by every user"' in output
    assert "mode=0o644" in output
    assert 'msg="project discovery failed" team=default reason=unauthorized' in output
    # the one-line fix names where this team's key comes from
    assert f"the API rejected the key from the file {token_file} (api.token_file)" in output
    assert "reason=token_unreadable" in output
    assert TOKEN not in output and "revoked-token" not in output


def churn_account(rng: random.Random) -> DemoAccount:
    projects = []
    for p in rng.sample(range(12), rng.randint(1, 6)):
        products = [
            DemoProduct(
                f"si_{p}_{i}",
                f"product {i}",
                rng.choice(["bare_metal", "vm"]),
                "hour",
                "metered",
                unit_price=rng.randint(1, 500),
                rate=1,
                servers=(
                    DemoServer(
                        f"sv_{p}_{i}",
                        f"host-{rng.randint(0, 30)}",
                        rng.choice(["c2", "c3", "g3"]),
                        tuple(rng.sample(["a", "b", "c"], 2)),
                    ),
                ),
            )
            for i in rng.sample(range(40), rng.randint(0, 15))
        ]
        projects.append(
            DemoProject(
                f"proj_churn_{p}",
                f"churn-{p}",
                f"Churn {p}",
                threshold=rng.choice([None, 10_000]),
                credit=0,
                products=products,
            )
        )
    return DemoAccount(projects, clock=lambda: 1_795_000_000.0)


def expected_series(account: DemoAccount) -> set[tuple[str, str, str]]:
    """(project, product, hostname) of every product line the API currently shows."""
    found = set()
    for project in account.projects.values():
        attributes = account.usage(project)["data"]["attributes"]
        for product in attributes["products"]:
            (server,) = product["metadata"]["servers"]
            found.add((project.id, product["id"], server["hostname"]))
    return found


def test_churn_leaves_no_stale_series_and_memory_flat(make_client) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(20261125)
    with FakeApi(churn_account(rng)) as api:
        store = SnapshotStore()
        poller = new_poller(make_client(api.url), store, concurrency=4, team="t", currency="USD")
        sizes = []
        try:
            with serving(store) as server:
                url = f"http://127.0.0.1:{server.port}/metrics"
                for cycle in range(60):  # the 500-cycle soak with RSS is benchmarks/
                    api.account = churn_account(rng)
                    poller.refresh()
                    samples = parse_samples(http_get(url)[2].decode())
                    seen = {
                        (dict(ls)["project_id"], dict(ls)["product_id"], dict(ls)["hostname"])
                        for (name, ls) in samples
                        if name == "latitudesh_billing_product_price"
                    }
                    assert seen == expected_series(api.account), f"cycle {cycle}"
                    ups = {
                        dict(ls)["project_id"] for (name, ls) in samples if name == "latitudesh_up"
                    }
                    assert ups == set(api.account.projects), f"cycle {cycle}"
                    sizes.append(len(samples))
                    if cycle == 15:  # traced from here: what the later cycles keep
                        tracemalloc.start()
                        baseline = tracemalloc.get_traced_memory()[0]
                grown = tracemalloc.get_traced_memory()[0] - baseline
        finally:
            tracemalloc.stop()
            poller.stop()
    assert max(sizes) < 3000  # bounded by what one account can hold, not by history
    assert grown < 4 * 1024 * 1024, f"traced memory grew {grown} bytes over 45 cycles"
