"""Closed billing periods: kept at the close, exported, and never lost to a restart.

The store and the SQLite file directly (what closes a period, how many are kept, a
version-1 file migrated), then the real exporter over real sockets against a fake API
whose clock the test moves: a roll-over live, one while the exporter was down, and a
restart with the API down.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from pathlib import Path
from typing import Any, cast

import pytest

from exporter import statuspage
from exporter.discovery import Target, UsageSource
from exporter.simulation import PERIOD, START_ELAPSED, DemoAccount
from exporter.snapshot import ClosedPeriod, ServerSpend
from exporter.state import CLOSED_PERIODS_KEPT, StoredAnswer
from exporter.state.sqlite import SqliteState
from exporter.store import SnapshotStore
from testing.fakeapi import FakeApi, Fault
from testing.waits import wait_for
from tests.conftest import (
    FIXED_NOW,
    TOKEN,
    ExporterProcess,
    api_env,
    http_get,
    new_poller,
    parse_samples,
    sample,
    usage_of,
)

MAX = 16 * 1024 * 1024
NOV_1 = 1_793_491_200.0  # 2026-11-01T00:00:00Z
DEC_1 = 1_796_083_200.0
JAN_1 = 1_798_761_600.0


def answer(price: float, start: str, end: str, tags: tuple[str, ...] = ("web",)) -> Any:
    return {
        "data": {
            "attributes": {
                "project": {"id": "p", "slug": "shop", "name": "Shop"},
                "period": {"start": start, "end": end},
                "price": price,
                "products": [
                    {
                        "id": "line",
                        "resource": "bare_metal",
                        "unit": "hour",
                        "usage_type": "metered",
                        "unit_price": 100,
                        "price": price,
                        "metadata": {
                            "servers": [
                                {"id": "sv1", "hostname": "web-1", "plan": "c2", "tags": list(tags)}
                            ]
                        },
                    }
                ],
            }
        }
    }


NOVEMBER = answer(70_000, "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")
DECEMBER = answer(1_000, "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z")


def store() -> SnapshotStore:
    s = SnapshotStore()
    s.add_team("t")
    s.set_projects("t", [("p", "")])
    return s


def test_a_later_period_closes_the_last_answer_of_the_one_before() -> None:
    s = store()
    landed = s.record_success("t", usage_of(NOVEMBER, "p"), duration=0.1, now=DEC_1 - 60)
    assert landed.closed is None
    # the same period again closes nothing
    landed = s.record_success("t", usage_of(NOVEMBER, "p"), duration=0.1, now=DEC_1 - 30)
    assert landed.closed is None
    closed = s.record_success("t", usage_of(DECEMBER, "p"), duration=0.1, now=DEC_1 + 60).closed
    assert closed is not None
    assert (closed.price, closed.period_start, closed.period_end) == (700.0, NOV_1, DEC_1)
    assert closed.observed_at == DEC_1 - 30  # the last answer of November, 30 s before its end
    assert {t.tag: t.price for t in closed.tags}["web"] == 700.0
    (status,) = s.view().projects
    assert status.previous_period == closed
    assert status.usage is not None and status.usage.price == 10.0
    page = statuspage.render(s.view(), now=DEC_1 + 60, telemetry_path="/", version="1")
    assert b'<dt>last period (to 2026-12-01)</dt><dd data-field="previous">700.00 USD' in page
    # a failed poll keeps it, as it keeps the current figures
    s.record_failure("t", "p", "timeout", duration=1.0)
    assert s.view().projects[0].previous_period == closed


def test_an_answer_of_an_earlier_period_closes_nothing() -> None:
    """A lagging replica of the API answering November after December: no close."""
    s = store()
    s.record_success("t", usage_of(DECEMBER, "p"), duration=0.1, now=DEC_1 + 60)
    landed = s.record_success("t", usage_of(NOVEMBER, "p"), duration=0.1, now=DEC_1 + 90)
    assert landed.closed is None
    assert s.view().projects[0].previous_period is None


def stored(period_start: float, received_at: float, price: int = 100) -> StoredAnswer:
    body = json.dumps({"data": {"attributes": {"price": price}}}).encode()
    return StoredAnswer("t", "p", body, received_at, "USD", period_start=period_start)


def backend(path: Path, **kwargs: Any) -> SqliteState:
    return SqliteState(path, on_status=lambda up, reason: None, max_body_bytes=MAX, **kwargs)


def flushed(path: Path, answers: list[StoredAnswer]) -> list[StoredAnswer]:
    """`answers` kept one after another, each written before the next comes (a process
    each: `close` writes what is pending), then what a new process loads."""
    for a in answers:
        state = backend(path)
        state.load()
        state.start()
        state.keep(a)
        state.close(10)
    return list(backend(path).load())


def closed_rows(path: Path) -> list[tuple[float, float]]:
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT period_start, received_at FROM closed_periods ORDER BY period_start"
        ).fetchall()


def test_the_file_keeps_the_last_closed_periods_and_loads_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    months = 20
    answers = [stored(float(m), 100.0 * m + 50, price=m) for m in range(months)]
    loaded = flushed(path, answers)
    rows = closed_rows(path)
    assert len(rows) == CLOSED_PERIODS_KEPT == 13
    # the newest thirteen closed periods, each with its last answer's time
    assert rows == [(float(m), 100.0 * m + 50) for m in range(months - 1 - 13, months - 1)]
    current = [a for a in loaded if not a.closed]
    closed = [a for a in loaded if a.closed]
    assert [(a.period_start, a.received_at) for a in current] == [(19.0, 1950.0)]
    assert [(a.period_start, a.received_at) for a in closed] == [(18.0, 1850.0)]
    assert json.loads(closed[0].body)["data"]["attributes"]["price"] == 18


def test_the_last_answer_of_a_period_is_kept_even_when_the_next_comes_before_a_write(
    tmp_path: Path,
) -> None:
    """Two answers of two periods within one flush: the first is still closed."""
    path = tmp_path / "state.db"
    state = backend(path, flush_seconds=3600)
    state.load()
    state.start()
    state.keep(stored(1.0, 10.0))
    state.keep(stored(2.0, 20.0))
    state.close(10)
    assert closed_rows(path) == [(1.0, 10.0)]


def test_forgetting_a_project_forgets_its_closed_periods(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    flushed(path, [stored(1.0, 10.0), stored(2.0, 20.0)])
    state = backend(path)
    state.load()
    state.start()
    state.keep_only("t", [])
    state.close(10)
    assert closed_rows(path) == []


def test_a_version_1_file_is_migrated_and_its_answers_kept(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE answers (team TEXT NOT NULL, project_id TEXT NOT NULL, "
            "received_at REAL NOT NULL, currency TEXT NOT NULL, slug TEXT, name TEXT, "
            "team_name TEXT, body BLOB NOT NULL, PRIMARY KEY (team, project_id)) WITHOUT ROWID"
        )
        db.execute(
            "INSERT INTO answers VALUES ('t', 'p', 5.0, 'USD', 's', 'n', 'tn', ?)",
            (zlib.compress(b'{"data": {}}'),),
        )
        db.execute("PRAGMA user_version = 1")
    loaded = backend(path).load()
    assert [(a.project_id, a.received_at, a.period_start, a.closed) for a in loaded] == [
        ("p", 5.0, None, False)
    ]
    # an answer after the upgrade replaces it without a close (no period known)
    flushed(path, [stored(1.0, 10.0)])
    assert closed_rows(path) == []


# --- the real exporter, over real sockets ------------------------------------------------


class Clock:
    """The fake API's clock, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def moving_account(clock: Clock) -> DemoAccount:
    return DemoAccount(clock=clock, token=TOKEN)


#: Seconds of the account's clock from its start to its period's end (speed 60).
TO_THE_END = (PERIOD - START_ELAPSED) / 60


def metrics(exporter: ExporterProcess) -> dict[Any, float]:
    status, _, body = http_get(exporter.url + "/metrics")
    assert status == 200
    return parse_samples(body.decode())


def wait_sample(exporter: ExporterProcess, name: str, **labels: str) -> dict[Any, float]:
    def found() -> dict[Any, float] | None:
        samples = metrics(exporter)
        return samples if sample(samples, name, **labels) is not None else None

    result: dict[Any, float] = wait_for(
        found, timeout=60, message=f"{name} {labels}\n{exporter.output()[-3000:]}"
    )
    return result


def exporter_on(api: FakeApi, folder: Path) -> ExporterProcess:
    env = api_env(api, XDG_STATE_HOME=str(folder), LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS="1")
    return ExporterProcess([], env=env, cwd=folder, tmp=folder)


@pytest.mark.slow
def test_a_roll_over_live_then_a_restart_with_the_api_down(tmp_path: Path) -> None:
    clock = Clock(FIXED_NOW)
    with FakeApi(moving_account(clock)) as api:
        exporter = exporter_on(api, tmp_path)
        try:
            before = wait_sample(exporter, "latitudesh_billing_price", project_id="proj_demo_gpu")
            last = sample(before, "latitudesh_billing_price", project_id="proj_demo_gpu")
            start = sample(
                before,
                "latitudesh_billing_period_start_timestamp_seconds",
                project_id="proj_demo_gpu",
            )
            assert sample(before, "latitudesh_billing_previous_period_price") is None
            # every project has an answer of this period before the clock moves on
            # (else a project's first answer is already of the next: nothing closes)
            for project in ("proj_demo_web", "proj_demo_data", "proj_demo_dev"):
                wait_sample(exporter, "latitudesh_billing_price", project_id=project)
            clock.now += TO_THE_END + 60  # a minute into the next period
            after = wait_sample(
                exporter, "latitudesh_billing_previous_period_price", project_id="proj_demo_gpu"
            )
            assert sample(
                after, "latitudesh_billing_previous_period_price", project_id="proj_demo_gpu"
            ) == pytest.approx(last)
            assert (
                sample(
                    after,
                    "latitudesh_billing_previous_period_start_timestamp_seconds",
                    project_id="proj_demo_gpu",
                )
                == start
            )
            # the new period starts again near 0
            now_price = sample(after, "latitudesh_billing_price", project_id="proj_demo_gpu")
            assert now_price is not None and last is not None and now_price < last
            assert sample(
                after,
                "latitudesh_billing_previous_period_tag_price",
                project_id="proj_demo_gpu",
                tag="ml",
            )
            assert 'msg="billing period closed"' in exporter.output()
            # written: every project's closed period is in the file
            wait_for(lambda: len(closed_in(tmp_path)) == 4, timeout=30, message="periods written")
        finally:
            assert exporter.stop() == 0

        api.inject(Fault("delay", delay=60), times=None)  # the API hangs from now on
        again = exporter_on(api, tmp_path)
        try:
            served = wait_sample(
                again, "latitudesh_billing_previous_period_price", project_id="proj_demo_gpu"
            )
            assert sample(
                served, "latitudesh_billing_previous_period_price", project_id="proj_demo_gpu"
            ) == sample(
                after, "latitudesh_billing_previous_period_price", project_id="proj_demo_gpu"
            )
            assert sample(
                served,
                "latitudesh_billing_previous_period_observed_timestamp_seconds",
                project_id="proj_demo_gpu",
            ) == sample(
                after,
                "latitudesh_billing_previous_period_observed_timestamp_seconds",
                project_id="proj_demo_gpu",
            )
        finally:
            api.clear_faults()
            again.stop()


def closed_in(folder: Path) -> list[tuple[str, float]]:
    path = folder / "latitudesh-exporter" / "state.db"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return db.execute("SELECT project_id, period_start FROM closed_periods").fetchall()


@pytest.mark.slow
def test_a_roll_over_while_the_exporter_was_down_still_closes_the_period(tmp_path: Path) -> None:
    clock = Clock(FIXED_NOW)
    with FakeApi(moving_account(clock)) as api:
        exporter = exporter_on(api, tmp_path)
        try:
            first = wait_sample(exporter, "latitudesh_billing_price", project_id="proj_demo_web")
            wait_for(
                lambda: stored_prices(tmp_path).get("proj_demo_web") is not None,
                timeout=30,
                message="the answer written",
            )
        finally:
            assert exporter.stop() == 0
        last_seen = stored_prices(tmp_path)["proj_demo_web"]
        clock.now += TO_THE_END + 3600  # the period closed while nothing ran
        again = exporter_on(api, tmp_path)
        try:
            after = wait_sample(
                again, "latitudesh_billing_previous_period_price", project_id="proj_demo_web"
            )
            assert sample(
                after, "latitudesh_billing_previous_period_price", project_id="proj_demo_web"
            ) == pytest.approx(last_seen[0])
            # seen when the first run received it, not when this one started
            assert sample(
                after,
                "latitudesh_billing_previous_period_observed_timestamp_seconds",
                project_id="proj_demo_web",
            ) == pytest.approx(last_seen[1])
            assert sample(first, "latitudesh_billing_price", project_id="proj_demo_web")
        finally:
            again.stop()


def stored_prices(folder: Path) -> dict[str, tuple[float, float]]:
    """Each project's price (main units) and receive time, as the file keeps them."""
    path = folder / "latitudesh-exporter" / "state.db"
    if not path.exists():
        return {}
    loaded = backend(path).load()
    return {
        a.project_id: (json.loads(a.body)["data"]["attributes"]["price"] / 100, a.received_at)
        for a in loaded
        if not a.closed
    }


def test_a_closed_period_keeps_each_server_share_as_the_usage_had_it() -> None:
    """Kept as columns (the memory of 1,000 closed periods), given back as rows."""
    november = usage_of(NOVEMBER, "p")
    assert november.servers  # the answer names servers
    closed = ClosedPeriod.of(november, DEC_1 - 30)
    assert closed.servers == november.servers
    assert ClosedPeriod.decode(closed.encode()) == closed
    again = ClosedPeriod.decode(closed.encode())
    assert again is not None and again.servers == november.servers
    # equal tags are one tuple, however many servers carry them
    many = [ServerSpend(f"sv_{i}", f"h{i}", "c2", float(i), ("web", "prod")) for i in range(3)]
    spread = ClosedPeriod.with_servers(
        project_id="p",
        project_slug="p",
        currency="USD",
        price=3.0,
        period_start=NOV_1,
        period_end=DEC_1,
        observed_at=DEC_1,
        tags=(),
        servers=[ServerSpend(s.server_id, s.hostname, s.plan, s.price, (*s.tags,)) for s in many],
    )
    assert spread.servers == tuple(many)
    assert len({id(t) for t in spread.server_tags}) == 1


def test_a_closed_period_is_kept_as_its_figures_and_read_back_without_its_answer() -> None:
    """A warm start reads a closed period's figures, not its answer: 1,000 answers of
    50 products parsed again cost 3 s of the start (benchmark section 16)."""
    s = store()
    s.record_success("t", usage_of(NOVEMBER, "p"), duration=0.1, now=DEC_1 - 30)
    closed = s.record_success("t", usage_of(DECEMBER, "p"), duration=0.1, now=DEC_1 + 60).closed
    assert closed is not None
    assert ClosedPeriod.decode(closed.encode()) == closed
    for garbage in (b"", b"{}", b"[1, 2]", b'["p","s","USD",NaN,0,1,2,[],[]]', b"\xff"):
        assert ClosedPeriod.decode(garbage) is None, garbage
    # restored from the figures alone (the closed answer's body is empty: never read)
    again = SnapshotStore()
    poller = new_poller(cast(UsageSource, object()), again, targets=[Target("p")])
    current = StoredAnswer(
        "default", "p", json.dumps(DECEMBER).encode(), DEC_1 + 60, "USD", period_start=DEC_1
    )
    closed_record = StoredAnswer(
        "default",
        "p",
        b"",
        DEC_1 - 30,
        "USD",
        period_start=NOV_1,
        closed=True,
        summary=closed.encode(),
    )
    assert poller.restore([current, closed_record]) == 1
    (status,) = again.view().projects
    assert status.previous_period == closed
    assert status.usage is not None and status.usage.price == 10.0
