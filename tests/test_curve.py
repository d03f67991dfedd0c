"""The period's spend curve (issue 32, item 3): the rule that keeps its points, the store
that extends it, the SQLite file that keeps it (and a version-2 file migrated), a warm
start of the real exporter drawing it from the file with the API down, and the SVG of
the status page read back into the points it was drawn from."""

from __future__ import annotations

import itertools
import json
import math
import re
import sqlite3
import struct
import tracemalloc
import zlib
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, cast

import pytest

from exporter import chart, statuspage
from exporter.curve import (
    MAX_POINTS,
    MIN_STEP_SECONDS,
    Curve,
    Point,
    extend,
    step,
    summed,
)
from exporter.discovery import Target, UsageSource
from exporter.simulation import DemoAccount
from exporter.snapshot import UsageSnapshot
from exporter.state import StoredAnswer, StoredCurve, StoredPoint
from exporter.state.sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteState
from exporter.store import Restored, SnapshotStore
from testing.fakeapi import FakeApi, Fault
from testing.waits import wait_for
from tests.conftest import TOKEN, ExporterProcess, api_env, http_get, new_poller, usage_of

OCT_1 = 1_790_812_800.0  # 2026-10-01T00:00:00Z
NOV_1 = 1_793_491_200.0
DEC_1 = 1_796_083_200.0
JAN_1 = 1_798_761_600.0
MONTH_STEP = (DEC_1 - NOV_1) / 240  # 3 hours
MAX = 16 * 1024 * 1024


def usage(
    price: float | None,
    start: float | None = NOV_1,
    end: float | None = DEC_1,
    *,
    project: str = "p",
    threshold: float | None = None,
    credit: float | None = None,
    projected: float | None = None,
    currency: str = "USD",
) -> UsageSnapshot:
    return UsageSnapshot(
        project,
        "slug",
        "Name",
        currency,
        price,
        price,
        credit,
        threshold,
        start,
        end,
        (),
        projected_price=projected,
    )


# --- the rule ----------------------------------------------------------------------------


def test_the_step_is_a_240th_of_the_period_and_never_under_a_minute() -> None:
    assert step(NOV_1, DEC_1) == MONTH_STEP == 3 * 3600
    assert step(0.0, 12 * 3600) == 180.0  # the demo's period: 12 real hours
    assert step(0.0, 3600) == MIN_STEP_SECONDS == 60.0


def test_a_point_when_empty_then_one_a_step_and_a_copy_each_time() -> None:
    first, point = extend(None, period_start=NOV_1, period_end=DEC_1, at=NOV_1 + 100, price=1.0)
    assert point == (NOV_1 + 100, 1.0)
    assert first is not None and first.points() == [(NOV_1 + 100, 1.0)]
    early, none = extend(
        first, period_start=NOV_1, period_end=DEC_1, at=NOV_1 + 100 + MONTH_STEP - 1, price=2.0
    )
    assert none is None and early is first
    second, point = extend(
        first, period_start=NOV_1, period_end=DEC_1, at=NOV_1 + 100 + MONTH_STEP, price=3.0
    )
    assert point == (NOV_1 + 100 + MONTH_STEP, 3.0)
    assert second is not None and second.points() == [(NOV_1 + 100, 1.0), point]
    assert first.points() == [(NOV_1 + 100, 1.0)]  # a reader holding the old one: unchanged
    assert second.last == point


def test_a_later_period_restarts_the_curve_and_an_earlier_adds_nothing() -> None:
    november, _ = extend(None, period_start=NOV_1, period_end=DEC_1, at=DEC_1 - 60, price=700.0)
    december, point = extend(
        november, period_start=DEC_1, period_end=JAN_1, at=DEC_1 + 60, price=1.0
    )
    assert point == (DEC_1 + 60, 1.0)
    assert december is not None and december.period_start == DEC_1
    assert december.points() == [(DEC_1 + 60, 1.0)]
    # a lagging replica answering November again, a day later: nothing
    after, none = extend(
        december, period_start=NOV_1, period_end=DEC_1, at=DEC_1 + 86400, price=700.0
    )
    assert none is None and after is december


@pytest.mark.parametrize(
    ("price", "start", "end", "at"),
    [
        (None, NOV_1, DEC_1, NOV_1),
        (1.0, None, DEC_1, NOV_1),
        (1.0, NOV_1, None, NOV_1),
        (1.0, DEC_1, NOV_1, NOV_1),  # an end before the start
        (math.nan, NOV_1, DEC_1, NOV_1),
        (math.inf, NOV_1, DEC_1, NOV_1),
        (1.0, NOV_1, DEC_1, math.inf),
    ],
)
def test_nothing_without_a_price_a_period_or_finite_numbers(
    price: float | None, start: float | None, end: float | None, at: float
) -> None:
    assert extend(None, period_start=start, period_end=end, at=at, price=price) == (None, None)


def test_a_period_polled_every_ten_seconds_keeps_at_most_241_points() -> None:
    start, end = 0.0, 12 * 3600.0
    curve = None
    at = start
    while at <= end:
        curve, _ = extend(curve, period_start=start, period_end=end, at=at, price=at / 100)
        at += 10
    assert curve is not None
    times = [t for t, _ in curve.points()]
    assert len(times) == 241
    assert all(b - a >= step(start, end) for a, b in itertools.pairwise(times))


def test_the_cap_drops_the_oldest() -> None:
    """Answers of one period for longer than it lasts (a stuck period): MAX_POINTS."""
    start, end = 0.0, 3600.0
    curve = None
    for minute in range(400):
        curve, point = extend(
            curve, period_start=start, period_end=end, at=minute * 60.0, price=float(minute)
        )
        assert point == (minute * 60.0, float(minute))
    assert curve is not None and len(curve) == MAX_POINTS == 256
    assert curve.points()[0] == ((400 - MAX_POINTS) * 60.0, float(400 - MAX_POINTS))
    assert curve.points()[-1] == (399 * 60.0, 399.0)


def test_times_are_kept_to_the_second() -> None:
    curve, point = extend(None, period_start=NOV_1, period_end=DEC_1, at=NOV_1 + 12.6, price=5.25)
    assert point == (NOV_1 + 13, 5.25)
    assert curve is not None and curve.points() == [point]


def test_a_stored_curve_is_put_in_order_once_a_second_and_capped() -> None:
    points = [(NOV_1 + 60.0 * i, float(i)) for i in range(300)]
    curve = Curve.of(NOV_1, [*reversed(points), points[-1]])
    assert curve.points() == points[-MAX_POINTS:]
    assert Curve.of(NOV_1, []).points() == [] and Curve.of(NOV_1, []).last is None


def test_a_thousand_projects_of_241_points_hold_under_4_mb() -> None:
    """The measured target of issue 32: curves held as `curve.py` keeps them (each
    built point by point by `extend`, copying), with their period starts."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        curves = []
        for project in range(1000):
            start = NOV_1 + project  # each project's own float, as each usage has
            curve = None
            for k in range(241):
                curve, _ = extend(
                    curve,
                    period_start=start,
                    period_end=start + (DEC_1 - NOV_1),
                    at=start + k * MONTH_STEP,
                    price=1_000.0 + k + project / 7,
                )
            curves.append(curve)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert all(c is not None and len(c) == 241 for c in curves)
    print(f"1,000 curves of 241 points: {held / 1e6:.2f} MB")
    assert held < 4_000_000


def test_a_team_sum_is_step_interpolated_at_the_periods_grid() -> None:
    st = MONTH_STEP
    a = [(NOV_1, 1.0), (NOV_1 + 3 * st, 4.0)]
    b = [(NOV_1 + st + 5, 10.0), (NOV_1 + 2 * st + 1, 20.0), (NOV_1 + 3 * st + 100, 25.0)]
    assert summed([a, b], start=NOV_1, end=DEC_1) == [
        (NOV_1, 1.0),  # b has no point yet: nothing of it
        (NOV_1 + st, 1.0),  # b's first point is 5 s later
        (NOV_1 + 2 * st, 11.0),
        (NOV_1 + 3 * st, 24.0),
        (NOV_1 + 3 * st + 100, 29.0),  # the newest point of any: every series' newest
    ]
    # the grid starts at the first point of any, not at the period's start
    late = summed([[(NOV_1 + 10 * st + 7, 2.0)]], start=NOV_1, end=DEC_1)
    assert late == [(NOV_1 + 10 * st + 7, 2.0)]
    assert summed([], start=NOV_1, end=DEC_1) == []


def test_a_team_sum_has_a_periods_worth_of_times_whatever_the_points_say() -> None:
    """A hostile answer: a one-minute period in 1970, polled today. Its one point sits
    56 years after the period's start; the grid at the period's step (a minute) would
    hold 30 million times, and the page would take seconds and a gigabyte to draw."""
    points = [[(0.0, 1.0), (1_795_219_200.0, 2.0)]]
    grid = summed(points, start=0.0, end=60.0)
    assert len(grid) <= 242
    assert grid[0] == (0.0, 1.0) and grid[-1] == (1_795_219_200.0, 2.0)


# --- the store -----------------------------------------------------------------------------


def one_project_store() -> SnapshotStore:
    store = SnapshotStore()
    store.add_team("t")
    store.set_projects("t", [("p", "")])
    return store


def test_the_store_adds_a_point_when_due_and_says_which() -> None:
    store = one_project_store()
    landed = store.record_success("t", usage(10.0), duration=0.1, now=NOV_1 + 60)
    assert landed.point == (NOV_1 + 60, 10.0) and landed.closed is None
    held = store.view()
    landed = store.record_success("t", usage(11.0), duration=0.1, now=NOV_1 + 120)
    assert landed.point is None  # not due: a step is 3 hours
    landed = store.record_success("t", usage(40.0), duration=0.1, now=NOV_1 + 60 + MONTH_STEP)
    assert landed.point == (NOV_1 + 60 + MONTH_STEP, 40.0)
    (status,) = store.view().projects
    assert status.curve is not None
    assert status.curve.points() == [(NOV_1 + 60, 10.0), (NOV_1 + 60 + MONTH_STEP, 40.0)]
    # a view read before holds the curve of then
    curve = held.projects[0].curve
    assert curve is not None and curve.points() == [(NOV_1 + 60, 10.0)]
    # a failed poll keeps it
    store.record_failure("t", "p", "timeout", duration=1.0)
    assert store.view().projects[0].curve == status.curve


def test_a_new_period_closes_the_last_and_restarts_the_curve() -> None:
    store = one_project_store()
    store.record_success("t", usage(700.0), duration=0.1, now=DEC_1 - 60)
    landed = store.record_success("t", usage(1.0, DEC_1, JAN_1), duration=0.1, now=DEC_1 + 60)
    assert landed.closed is not None and landed.closed.price == 700.0
    assert landed.point == (DEC_1 + 60, 1.0)
    curve = store.view().projects[0].curve
    assert curve is not None and curve.period_start == DEC_1
    assert curve.points() == [(DEC_1 + 60, 1.0)]


def test_restored_points_are_served_and_the_next_poll_extends_them() -> None:
    store = one_project_store()
    kept = Curve.of(NOV_1, [(NOV_1 + 60, 1.0), (NOV_1 + 60 + MONTH_STEP, 2.0)])
    store.record_restored("t", [Restored("p", usage(2.5), NOV_1 + 7000, curve=kept)])
    (status,) = store.view().projects
    assert status.curve == kept and not status.polled
    # less than a step after the last kept point: nothing; a step after: a point
    assert (
        store.record_success("t", usage(3.0), duration=0.1, now=NOV_1 + 2 * MONTH_STEP).point
        is None
    )
    landed = store.record_success("t", usage(4.0), duration=0.1, now=NOV_1 + 60 + 2 * MONTH_STEP)
    assert landed.point == (NOV_1 + 60 + 2 * MONTH_STEP, 4.0)
    curve = store.view().projects[0].curve
    assert curve is not None and len(curve) == 3


def body(price: int, start: str, end: str) -> bytes:
    return json.dumps(
        {
            "data": {
                "attributes": {
                    "project": {"id": "p"},
                    "period": {"start": start, "end": end},
                    "price": price,
                }
            }
        }
    ).encode()


def test_a_warm_start_hands_over_the_points_of_the_answers_period_only() -> None:
    december = StoredAnswer(
        "default",
        "p",
        body(500, "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
        DEC_1 + 7200,
        "USD",
        period_start=DEC_1,
    )
    points = [(DEC_1 + 60, 1.0), (DEC_1 + 60 + MONTH_STEP, 4.0)]
    for kept, served in [
        (Curve.of(DEC_1, points), points),
        (Curve.of(NOV_1, [(NOV_1 + 60, 1.0)]), None),  # of another period: not served
    ]:
        store = SnapshotStore()
        poller = new_poller(cast(UsageSource, object()), store, targets=[Target("p")])
        assert poller.restore([december], [StoredCurve("default", "p", kept)]) == 1
        curve = store.view().projects[0].curve
        assert (curve.points() if curve else None) == served


# --- the SQLite file -------------------------------------------------------------------


def backend(path: Path, **kwargs: Any) -> SqliteState:
    kwargs.setdefault("on_status", lambda up, reason: None)
    return SqliteState(path, max_body_bytes=MAX, flush_seconds=0.05, **kwargs)


def written(path: Path, *points: StoredPoint) -> None:
    """`points` kept by a backend of their own, and written before it stops."""
    state = backend(path)
    state.load()
    state.start()
    for p in points:
        state.keep_point(p)
    state.close(timeout=30)


def loaded(path: Path) -> dict[tuple[str, str], Curve]:
    state = backend(path)
    state.load()
    return {(c.team, c.project_id): c.curve for c in state.load_points()}


def rows(path: Path) -> list[tuple[str, float, float]]:
    """(project, period start, time) of each point in the file, read without the
    backend."""
    with sqlite3.connect(path) as db:
        stored = db.execute(
            "SELECT project_id, period_start, points FROM curves ORDER BY project_id"
        ).fetchall()
    return [
        (pid, start, at) for pid, start, packed in stored for at, _ in Curve(start, packed).points()
    ]


def test_points_are_written_and_loaded_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    written(
        path,
        StoredPoint("t", "a", NOV_1, NOV_1 + 2 * MONTH_STEP, 3.0),
        StoredPoint("t", "a", NOV_1, NOV_1 + 60, 1.0),
        StoredPoint("t", "b", NOV_1, NOV_1 + 61, 7.0),
        StoredPoint("u", "a", NOV_1, NOV_1 + 62, 9.0),
    )
    curves = loaded(path)
    assert set(curves) == {("t", "a"), ("t", "b"), ("u", "a")}
    assert curves[("t", "a")].points() == [(NOV_1 + 60, 1.0), (NOV_1 + 2 * MONTH_STEP, 3.0)]
    assert curves[("t", "b")].points() == [(NOV_1 + 61, 7.0)]
    assert curves[("u", "a")].period_start == NOV_1
    state = backend(path)
    state.load()
    assert state.load_points() and not state.load_points()  # handed over once


def test_a_point_of_a_later_period_deletes_the_earlier_ones(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    written(path, *(StoredPoint("t", "p", NOV_1, NOV_1 + 60 + i * MONTH_STEP, i) for i in range(5)))
    written(path, StoredPoint("t", "q", NOV_1, NOV_1 + 60, 1.0))
    assert len(rows(path)) == 6
    written(path, StoredPoint("t", "p", DEC_1, DEC_1 + 60, 1.0))  # p's December
    assert rows(path) == [("p", DEC_1, DEC_1 + 60), ("q", NOV_1, NOV_1 + 60)]
    # both periods pending in one write: the earlier never reaches the file
    written(
        path,
        StoredPoint("t", "q", NOV_1, NOV_1 + 60 + MONTH_STEP, 2.0),
        StoredPoint("t", "q", DEC_1, DEC_1 + 120, 3.0),
    )
    assert rows(path) == [("p", DEC_1, DEC_1 + 60), ("q", DEC_1, DEC_1 + 120)]
    assert loaded(path)[("t", "q")].points() == [(DEC_1 + 120, 3.0)]


def test_a_project_keeps_at_most_max_points(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    points = [StoredPoint("t", "p", 0.0, 60.0 * i, float(i)) for i in range(300)]
    written(path, *points[:200])  # two writes: the cap holds across them
    written(path, *points[200:])
    assert len(rows(path)) == MAX_POINTS
    curve = loaded(path)[("t", "p")]
    assert curve.points() == [(p.at, p.price) for p in points[-MAX_POINTS:]]


def test_forgetting_a_project_forgets_its_points(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    written(
        path, StoredPoint("t", "p", NOV_1, NOV_1, 1.0), StoredPoint("t", "q", NOV_1, NOV_1, 2.0)
    )
    state = backend(path)
    state.load()
    state.start()
    state.keep_point(
        StoredPoint("t", "p", NOV_1, NOV_1 + MONTH_STEP, 3.0)
    )  # pending: forgotten too
    state.keep_only("t", ["q"])
    state.close(timeout=30)
    assert [r[0] for r in rows(path)] == ["q"]


def packed(*records: tuple[int, float]) -> bytes:
    return b"".join(struct.pack("<id", t, p) for t, p in records)


def test_stored_points_that_do_not_read_are_skipped(tmp_path: Path) -> None:
    """A hand-edited or damaged file: text where a number goes, a record cut short,
    a price that is not finite, times out of order, more points than a curve keeps."""
    path = tmp_path / "state.db"
    written(path, StoredPoint("t", "ok", NOV_1, NOV_1 + 60, 1.0))
    many = packed(*((60 * i, float(i)) for i in range(MAX_POINTS + 5)))
    with sqlite3.connect(path) as db:
        for index, row in enumerate(
            (
                ("soon", packed((60, 1.0))),
                (NOV_1, "a lot"),
                (NOV_1, packed((60, 1.0), (120, 2.0))[:-3]),
                (NOV_1, packed((60, 1.0), (90, math.nan), (120, math.inf), (150, 4.0))),
                (NOV_1, packed((120, 2.0), (60, 1.0), (120, 3.0))),
                (NOV_1, many),
                (NOV_1, b""),
            )
        ):
            db.execute("INSERT INTO curves VALUES ('t', ?, ?, ?)", (f"p{index}", *row))
    curves = {pid: c.points() for (_, pid), c in loaded(path).items()}
    at = [NOV_1 + t for t in (60, 120, 150)]
    assert sorted(curves.values()) == sorted(
        [
            [(NOV_1 + 60, 1.0)],  # the good one
            [(at[0], 1.0)],  # the cut record dropped
            [(at[0], 1.0), (at[2], 4.0)],  # not finite: skipped
            [(at[0], 1.0), (at[1], 3.0)],  # in time order, the last of a second
            [(NOV_1 + 60 * i, float(i)) for i in range(5, MAX_POINTS + 5)],  # the newest
        ]
    )


def test_points_not_written_are_written_by_the_next_try(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    seen: list[str | None] = []
    state = backend(path, on_status=lambda up, reason: seen.append(reason))
    state.load()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        state.start()
        state.keep_point(StoredPoint("t", "p", NOV_1, NOV_1 + 60, 1.0))
        wait_for(lambda: "locked" in seen, timeout=30, message="the write to fail locked")
        state.keep_point(StoredPoint("t", "p", NOV_1, NOV_1 + 60 + MONTH_STEP, 2.0))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    state.close(timeout=30)
    assert [r[2] for r in rows(path)] == [NOV_1 + 60, NOV_1 + 60 + MONTH_STEP]


def schema(db: sqlite3.Connection, version: int) -> None:
    """The tables of a file of schema `version` (whose migrations are statements)."""
    for statements in MIGRATIONS[:version]:
        for statement in statements:
            assert isinstance(statement, str)
            db.execute(statement)


def test_a_version_2_file_is_migrated_keeping_its_answers_and_closed_periods(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        schema(db, 2)
        db.execute(
            "INSERT INTO answers VALUES ('t', 'p', 5.0, 'USD', 's', 'n', 'tn', ?, ?)",
            (zlib.compress(b'{"data": {}}'), DEC_1),
        )
        db.execute(
            "INSERT INTO closed_periods VALUES ('t', 'p', ?, 4.0, 'USD', 's', 'n', 'tn', ?)",
            (NOV_1, zlib.compress(b'{"data": {"old": 1}}')),
        )
        db.execute("PRAGMA user_version = 2")
    state = backend(path)
    answers = state.load()
    assert sorted((a.closed, a.received_at, a.period_start, a.body) for a in answers) == [
        (False, 5.0, DEC_1, b'{"data": {}}'),
        (True, 4.0, NOV_1, b'{"data": {"old": 1}}'),
    ]
    assert state.load_points() == []
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    written(path, StoredPoint("t", "p", DEC_1, DEC_1 + 60, 1.0))
    assert loaded(path)[("t", "p")].points() == [(DEC_1 + 60, 1.0)]
    assert len(backend(path).load()) == 2  # the answers are still there


def test_a_version_4_file_keeps_its_curves_as_one_row_a_project(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        schema(db, 4)
        db.executemany(
            "INSERT INTO curve_points (team, project_id, at, price, period_start) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                ("t", "p", NOV_1 + 120, 2.0, NOV_1),
                ("t", "p", NOV_1 + 60, 1.0, NOV_1),
                ("t", "p", NOV_1 + 90, "a lot", NOV_1),
                ("t", "q", NOV_1 + 60, 5.0, NOV_1),
                ("t", "q", DEC_1 + 60, 6.0, DEC_1),  # q's newest period only
                ("u", "p", DEC_1 + 30, 7.0, DEC_1),
            ],
        )
        db.execute("PRAGMA user_version = 4")
    assert backend(path).load() == []
    assert {k: c.points() for k, c in loaded(path).items()} == {
        ("t", "p"): [(NOV_1 + 60, 1.0), (NOV_1 + 120, 2.0)],
        ("t", "q"): [(DEC_1 + 60, 6.0)],
        ("u", "p"): [(DEC_1 + 30, 7.0)],
    }
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert "curve_points" not in tables and "curves" in tables


@pytest.mark.slow
def test_a_thousand_projects_of_241_points_in_the_file(tmp_path: Path) -> None:
    """Bounded in rows and bytes: 1,000 rows, 4.7 MB (ids of 18 characters, as
    Latitude.sh's are; 241,000 rows and 11.8 MB when schema 4 kept a row a point)."""
    path = tmp_path / "state.db"
    ids = [f"proj_{i:013d}" for i in range(1000)]
    written(
        path,
        *(
            StoredPoint("default", pid, NOV_1, NOV_1 + k * MONTH_STEP, 1_000.0 + k)
            for k in range(241)
            for pid in ids
        ),
    )
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        count = db.execute("SELECT COUNT(*) FROM curves").fetchone()[0]
    size = path.stat().st_size
    print(f"1,000 projects of 241 points: {count} rows, {size / 1e6:.1f} MB")
    assert count == 1_000
    assert size < 6_000_000
    curves = loaded(path)
    assert len(curves) == 1000 and all(len(c) == 241 for c in curves.values())


# --- the SVG read back -------------------------------------------------------------------


@dataclass
class Chart:
    """One `<svg>` of the page: its attributes, its title and its drawn elements."""

    owner: tuple[str, str]
    attrs: dict[str, str]
    title: str = ""
    elements: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def series(self, name: str) -> list[dict[str, str]]:
        return [a for _, a in self.elements if a.get("data-series") == name]

    @property
    def plot(self) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = (float(v) for v in self.attrs["data-plot"].split())
        return x0, y0, x1, y1

    def value(self, x: float, y: float) -> Point:
        """The (time, price) a coordinate stands for."""
        x0, y0, x1, y1 = self.plot
        start, end = float(self.attrs["data-start"]), float(self.attrs["data-end"])
        bottom, top = float(self.attrs["data-bottom"]), float(self.attrs["data-top"])
        return (
            start + (x - x0) / (x1 - x0) * (end - start),
            bottom + (y1 - y) / (y1 - y0) * (top - bottom),
        )

    @property
    def rounding(self) -> Point:
        """How far a value may be off: coordinates are written to 0.1 of a unit."""
        x0, y0, x1, y1 = self.plot
        start, end = float(self.attrs["data-start"]), float(self.attrs["data-end"])
        bottom, top = float(self.attrs["data-bottom"]), float(self.attrs["data-top"])
        return 0.051 / (x1 - x0) * (end - start), 0.051 / (y1 - y0) * (top - bottom)

    def curve(self) -> list[Point]:
        (line,) = self.series("curve")
        return [self.value(*(float(v) for v in pair.split(","))) for pair in line["points"].split()]

    def line(self, name: str) -> tuple[Point, Point]:
        (line,) = self.series(name)
        return (
            self.value(float(line["x1"]), float(line["y1"])),
            self.value(float(line["x2"]), float(line["y2"])),
        )


class Charts(HTMLParser):
    """Every chart of a page, each with the card or team chart it is in."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.charts: list[Chart] = []
        self._owner = ("", "")
        self._open: Chart | None = None
        self._in_title = False
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "data-project" in a:
            self._owner = ("project", a["data-project"])
        elif a.get("data-field") == "team-curve":
            self._owner = ("team", a["data-currency"])
        if tag == "svg" and a.get("class") == "curve":  # not a legend's key
            self._open = Chart(self._owner, a)
            self.charts.append(self._open)
        elif self._open is not None:
            if tag == "title":
                self._in_title = True
            else:
                self._open.elements.append((tag, a))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._open = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._open is not None and self._in_title:
            self._open.title += data

    def of(self, kind: str, name: str) -> Chart:
        (found,) = [c for c in self.charts if c.owner == (kind, name)]
        return found


def close_to(got: list[Point], expected: list[Point], rounding: Point) -> bool:
    dt, dp = rounding
    return len(got) == len(expected) and all(
        abs(a - c) <= dt and abs(b - d) <= dp for (a, b), (c, d) in zip(got, expected, strict=True)
    )


def page(store: SnapshotStore, now: float) -> str:
    return statuspage.render(store.view(), now=now, telemetry_path="/m", version="v").decode()


def test_a_cards_svg_reads_back_as_the_kept_points_and_the_live_one() -> None:
    store = one_project_store()
    kept: list[Point] = []
    for k in range(6):
        at, price = NOV_1 + 30 + k * MONTH_STEP, 10.0 + k * k
        landed = store.record_success(
            "t",
            usage(price, threshold=120.0, credit=50.0, projected=100.0),
            duration=0.1,
            now=at,
        )
        assert landed.point == (at, price)
        kept.append((at, price))
    live = (NOV_1 + 30 + 5 * MONTH_STEP + 600, 37.5)  # a poll between two points
    store.record_success(
        "t", usage(37.5, threshold=120.0, credit=50.0, projected=100.0), duration=0.1, now=live[0]
    )
    drawn = Charts(page(store, now=live[0] + 5)).of("project", "p")
    assert drawn.attrs["viewbox"] == f"0 0 {chart.CARD[0]} {chart.CARD[1]}"
    assert close_to(drawn.curve(), [*kept, live], drawn.rounding)
    (now,) = drawn.series("now")
    assert close_to([drawn.value(float(now["cx"]), float(now["cy"]))], [live], drawn.rounding)
    # the projection: from the live point to the period's end, at the projected price
    begin, end = drawn.line("projection")
    assert close_to([begin, end], [live, (DEC_1, 100.0)], drawn.rounding)
    assert drawn.series("projection")[0]["stroke-dasharray"]
    # the threshold across the period; the credit where it runs out (price + credit)
    assert close_to(list(drawn.line("threshold")), [(NOV_1, 120.0), (DEC_1, 120.0)], drawn.rounding)
    assert close_to(list(drawn.line("credit")), [(NOV_1, 87.5), (DEC_1, 87.5)], drawn.rounding)
    # y grows upwards, from 0 to the highest value drawn
    assert (float(drawn.attrs["data-bottom"]), float(drawn.attrs["data-top"])) == (0.0, 120.0)
    assert drawn.attrs["role"] == "img" and drawn.attrs["aria-label"] == drawn.title
    assert drawn.title == (
        "Spend through the period to 2026-12-01: 37.50 USD now, 100.00 USD projected at its "
        "end, threshold 120.00 USD, credit runs out at 87.50 USD"
    )


def test_without_threshold_or_credit_no_line_and_a_linear_projection() -> None:
    store = one_project_store()
    at = NOV_1 + (DEC_1 - NOV_1) / 2  # half the period gone
    store.record_success("t", usage(50.0, credit=-5.0), duration=0.1, now=at)
    drawn = Charts(page(store, now=at)).of("project", "p")
    assert not drawn.series("threshold") and not drawn.series("credit")
    assert close_to(drawn.curve(), [(at, 50.0)], drawn.rounding)
    # no forecast: at the pace so far, twice the spend at half the period
    assert close_to(list(drawn.line("projection")), [(at, 50.0), (DEC_1, 100.0)], drawn.rounding)


def test_the_team_svg_is_the_sum_of_its_projects() -> None:
    store = SnapshotStore()
    store.add_team("t")
    store.set_projects("t", [("a", ""), ("b", ""), ("c", "")])
    for k in range(5):
        at = NOV_1 + 10 + k * MONTH_STEP
        store.record_success("t", usage(1.0 + k, project="a", projected=20.0), duration=0.1, now=at)
        if k >= 2:  # b is watched from the third step on
            store.record_success(
                "t", usage(10.0 * k, project="b", projected=80.0), duration=0.1, now=at + 30
            )
    # c answered of an earlier period (a lagging replica): not in the newest period's sum
    store.record_success("t", usage(999.0, OCT_1, NOV_1, project="c"), duration=0.1, now=NOV_1)
    charts = Charts(page(store, now=NOV_1 + 5 * MONTH_STEP))
    team = charts.of("team", "USD")
    assert team.attrs["viewbox"] == f"0 0 {chart.TEAM[0]} {chart.TEAM[1]}"
    # every poll was a step after the one before: each project's points are its polls
    kept = {p.project_id: p.curve.points() for p in store.view().projects if p.curve}
    assert len(kept["a"]) == 5 and len(kept["b"]) == 3
    expected = summed([kept["a"], kept["b"]], start=NOV_1, end=DEC_1)
    assert expected[-1][1] == pytest.approx(5.0 + 40.0)
    assert close_to(team.curve(), expected, team.rounding)
    begin, end = team.line("projection")
    assert close_to([begin, end], [expected[-1], (DEC_1, 100.0)], team.rounding)  # 20 + 80
    assert "(2 projects)" in team.title


def test_nothing_but_numbers_goes_into_the_svg_unescaped() -> None:
    store = one_project_store()
    hostile = '"><script>alert(1)</script><svg onload=alert(2)>'
    store.record_success(
        "t", usage(5.0, threshold=10.0, currency=hostile), duration=0.1, now=NOV_1 + 60
    )
    html = page(store, now=NOV_1 + 60)
    assert "<script" not in html and "<svg onload" not in html
    drawn = Charts(html).of("project", "p")
    assert hostile in drawn.title  # escaped in the markup, read back as it was
    fixed = {"data-series", "stroke", "fill", "stroke-linejoin"}  # the chart's own words
    assert {name for _, a in drawn.elements for name in a} - fixed
    for _, attrs in drawn.elements:
        for name, value in attrs.items():
            assert name in fixed or re.fullmatch(r"[-\d., ]+", value), (name, value)
    for name in ("data-start", "data-end", "data-bottom", "data-top", "data-plot"):
        assert re.fullmatch(r"[-\d., ]+", drawn.attrs[name]), name


# --- the warm start, against the real exporter ------------------------------------------


def curve_rows(folder: Path) -> dict[str, int]:
    path = folder / "latitudesh-exporter" / "state.db"
    if not path.exists():
        return {}
    with sqlite3.connect(path) as db:
        stored = db.execute("SELECT project_id, period_start, points FROM curves").fetchall()
    return {pid: len(Curve(start, points)) for pid, start, points in stored}


@pytest.mark.slow
def test_a_warm_start_draws_the_kept_curve_with_the_api_down(tmp_path: Path) -> None:
    """A first run keeps a point per project; the test adds a day of earlier points to
    the file, as a longer run would have; a second run, with the API hanging, draws
    them all (and the live point of the last answer) before any poll."""
    path = tmp_path / "latitudesh-exporter" / "state.db"
    # the real clock: the period (12 real hours) holds the exporter's own poll times
    with FakeApi(DemoAccount(token=TOKEN)) as api:
        env = api_env(api, XDG_STATE_HOME=str(tmp_path))
        first = ExporterProcess([], env=env, cwd=tmp_path, tmp=tmp_path)
        try:
            first.wait_ready()
            wait_for(
                lambda: len(curve_rows(tmp_path)) == 4,
                timeout=30,
                message="a point of every project written",
            )
        finally:
            assert first.stop() == 0
        state = backend(path)
        answer = next(a for a in state.load() if a.project_id == "proj_demo_gpu")
        assert answer.period_start is not None
        start = answer.period_start
        earlier = [
            StoredPoint("default", "proj_demo_gpu", start, start + 30 + k * 180, 5.0 * k)
            for k in range(20)
        ]
        written(path, *earlier)
        kept = loaded(path)[("default", "proj_demo_gpu")].points()
        assert len(kept) == 21 and kept[:20] == [(p.at, p.price) for p in earlier]

        api.inject(Fault("delay", delay=60), times=None)  # the API hangs from now on
        second = ExporterProcess([], env=env, cwd=tmp_path, tmp=tmp_path)
        try:
            html = wait_for(
                lambda: (
                    (got := http_get(second.url + "/")[2].decode())
                    and 'data-project="proj_demo_gpu"' in got
                    and "<polyline" in got
                    and got
                ),
                timeout=30,
                message="the page drawn from the file",
            )
        finally:
            api.clear_faults()
            second.stop()
    assert 'class="pending">pending</span>' in html  # no poll of this run landed
    drawn = Charts(html).of("project", "proj_demo_gpu")
    restored = usage_of(answer.body, "proj_demo_gpu", at=answer.received_at)
    assert restored.price is not None and restored.projected_price is not None
    live = [(answer.received_at, restored.price)] if answer.received_at >= kept[-1][0] + 1 else []
    assert close_to(drawn.curve(), [*kept, *live], drawn.rounding)
    _, end = drawn.line("projection")
    assert close_to([end], [(restored.period_end or 0.0, restored.projected_price)], drawn.rounding)
    assert Charts(html).of("team", "USD").series("curve")
