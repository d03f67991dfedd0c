"""The state in an embedded SQLite file: the default backend of `exporter.state`.

Standard library only (`sqlite3`). The file is in WAL mode with `synchronous=NORMAL`:
a commit is atomic, so a `kill -9` at any moment leaves the last committed state
(tested with 100 kills while writing). One writer thread owns the writing connection;
polls hand it their answers (`keep`: a dict assignment, never a wait on the disk) and
their curves' points (`keep_point`: a list append) and it writes what is pending once a
second, the newest answer of each project only, in one transaction, zlib-compressed
(level 1: an answer of 50 products, ~25 KB, is ~3 KB and costs well under a millisecond
to compress). A curve is one row a project (`curves`: its newest period's points as
`Curve.packed` records, at most `curve.MAX_POINTS`), read back as it is: at 1,000
projects of 241 points (a point every 3 hours of a month's period), 1,000 rows and
4.7 MB of file, loaded in ~0.1 s where the row a point of schema 4 (241,000 rows,
11.8 MB) took ~0.5 s of the warm start (benchmark section 16, issue 32's ≤ 5 s).

A file that cannot be used never costs the service; each case is one log line, a
counted reason (`latitudesh_state_errors_total`) and `latitudesh_state_up` 0, and the
exporter goes on in memory:

- not an SQLite file, truncated or malformed (`unreadable`): moved aside as
  `NAME.bad-TIMESTAMP` (never deleted) with its `-wal` and `-shm`, and a new file made;
- written by a newer exporter (`newer_version`): left exactly as it is;
- another process holds its write lock (`locked`), a read-only directory or file
  (`read_only`), a full disk (`disk_full`), any other failure (`io`): left as it is;
  writes are tried again each second and the state is up again after the first that
  succeeds.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TypeGuard

from exporter.curve import MAX_POINTS, Curve, Point
from exporter.state import (
    CLOSED_PERIODS_KEPT,
    Period,
    StateUnavailable,
    StatusSink,
    StoredAnswer,
    StoredCurve,
    StoredPoint,
)

log = logging.getLogger(__name__)

#: The file's layout; `PRAGMA user_version` holds it. Older files are migrated forward
#: (`MIGRATIONS`); a newer one is refused and left as it is.
SCHEMA_VERSION = 5


def _pack_curve_points(db: sqlite3.Connection) -> None:
    """Schema 5: the row-a-point curves of schema 4, each project's as one packed row."""
    rows = db.execute(
        "SELECT team, project_id, period_start, at, price FROM curve_points "
        "ORDER BY team, project_id, at"
    )
    db.executemany(
        "INSERT INTO curves (team, project_id, period_start, points) VALUES (?, ?, ?, ?)",
        [(c.team, c.project_id, c.curve.period_start, c.curve.packed) for c in _points(rows)],
    )


#: What brings a file of version N (the index) to N + 1: statements, and a function
#: where data changes shape.
Migration = str | Callable[[sqlite3.Connection], None]
MIGRATIONS: tuple[tuple[Migration, ...], ...] = (
    (
        """
        CREATE TABLE answers (
            team TEXT NOT NULL,
            project_id TEXT NOT NULL,
            received_at REAL NOT NULL,
            currency TEXT NOT NULL,
            slug TEXT,
            name TEXT,
            team_name TEXT,
            body BLOB NOT NULL,
            PRIMARY KEY (team, project_id)
        ) WITHOUT ROWID
        """,
    ),
    # Closed periods: an answer of a later period moves the kept one here. A row of
    # version 1 has no period start: the first answer after the upgrade replaces it
    # without closing a period (a roll-over during the upgrade itself goes unrecorded).
    (
        "ALTER TABLE answers ADD COLUMN period_start REAL",
        """
        CREATE TABLE closed_periods (
            team TEXT NOT NULL,
            project_id TEXT NOT NULL,
            period_start REAL NOT NULL,
            received_at REAL NOT NULL,
            currency TEXT NOT NULL,
            slug TEXT,
            name TEXT,
            team_name TEXT,
            body BLOB NOT NULL,
            PRIMARY KEY (team, project_id, period_start)
        ) WITHOUT ROWID
        """,
    ),
    # The spend curve of each project's current period (`curve.py`).
    (
        """
        CREATE TABLE curve_points (
            team TEXT NOT NULL,
            project_id TEXT NOT NULL,
            at REAL NOT NULL,
            price REAL NOT NULL,
            period_start REAL NOT NULL,
            PRIMARY KEY (team, project_id, at)
        ) WITHOUT ROWID
        """,
    ),
    # The figures of each answer as a closed period shows them (`StoredAnswer.summary`),
    # moved with it: a warm start reads them instead of the answer.
    (
        "ALTER TABLE answers ADD COLUMN summary BLOB",
        "ALTER TABLE closed_periods ADD COLUMN summary BLOB",
    ),
    # A project's curve as one row of packed points (`Curve.packed`).
    (
        """
        CREATE TABLE curves (
            team TEXT NOT NULL,
            project_id TEXT NOT NULL,
            period_start REAL NOT NULL,
            points BLOB NOT NULL,
            PRIMARY KEY (team, project_id)
        ) WITHOUT ROWID
        """,
        _pack_curve_points,
        "DROP TABLE curve_points",
    ),
)
#: How long a statement waits for another connection's lock before it fails `locked`.
BUSY_SECONDS = 1.0
#: How often pending answers are written.
FLUSH_SECONDS = 1.0
#: Seconds between two log lines of a failure that goes on.
LOG_EVERY_SECONDS = 60.0
#: The longest a reader of the kept answers waits for what is pending to be written
#: (a download shows every answer kept before it was asked for).
READ_FLUSH_SECONDS = 2.0
#: The columns of a kept answer, as `_answer` reads them.
_ANSWER = "team, project_id, received_at, currency, slug, name, team_name, body, period_start"


class SqliteState:
    """The last answer of every project, in an SQLite file.

    Parameters:
        path: the file (its directory is made, mode 0700, when missing).
        on_status: told whether the file is in use, and the reason of each failure.
        max_body_bytes: the largest answer kept or read back (`api.max_response_bytes`:
            a stored answer is never bigger than a live one may be).
        flush_seconds: how often pending answers are written.
        clock: the wall clock, for the name of a file moved aside.
    """

    def __init__(
        self,
        path: Path,
        *,
        on_status: StatusSink,
        max_body_bytes: int,
        flush_seconds: float = FLUSH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._on_status = on_status
        self._max_body = max_body_bytes
        self._flush_seconds = flush_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], StoredAnswer] = {}
        #: The answers the writer took and has not committed yet: a reader sees them
        #: while a slow write goes on (a stalled disk), not only once it ends.
        self._writing: dict[tuple[str, str], StoredAnswer] = {}
        self._closing: dict[tuple[str, str], StoredAnswer] = {}
        self._forget: dict[str, frozenset[str]] = {}
        #: Points not written yet, per project: of its newest period, at most MAX_POINTS.
        self._points: dict[tuple[str, str], list[StoredPoint]] = {}
        #: The curves `load` read, until `load_points` hands them over.
        self._curves: list[StoredCurve] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: False once the file was refused: the state lives in memory only.
        self._usable = True
        self._failing: str | None = None
        self._logged: dict[str, float] = {}
        #: Readers' asks for a write (`_asked`, under `_lock`) and the newest ask a
        #: finished write (or try) took in (`_served`, under `_flushed`).
        self._flushed = threading.Condition()
        self._asked = 0
        self._served = 0

    # --- the interface ------------------------------------------------------------

    def load(self) -> Sequence[StoredAnswer]:
        try:
            return self._load()
        except (sqlite3.Error, OSError) as exc:
            reason = _reason(exc, self.path)
            if reason != "unreadable":
                self._refuse(reason, exc)
                return ()
            self._quarantine(exc)
        try:  # a new file where the unreadable one was
            return self._load()
        except (sqlite3.Error, OSError) as exc:
            self._refuse(_reason(exc, self.path), exc)
            return ()

    def start(self) -> None:
        if self._usable:
            self._thread = threading.Thread(target=self._run, name="state", daemon=True)
            self._thread.start()

    def keep(self, answer: StoredAnswer) -> None:
        if not self._usable or len(answer.body) > self._max_body:
            return
        key = (answer.team, answer.project_id)
        with self._lock:
            older = self._pending.get(key)
            if older is not None and _later(answer, older):
                # the last answer of a period, not written yet: written before the
                # answer of the next period closes it
                self._closing[key] = older
            self._pending[key] = answer

    def load_points(self) -> Sequence[StoredCurve]:
        """The curves `load` read, handed over once (the store keeps them from then on)."""
        curves, self._curves = self._curves, []
        return curves

    def keep_point(self, point: StoredPoint) -> None:
        if not self._usable:
            return
        key = (point.team, point.project_id)
        with self._lock:
            pending = self._points.setdefault(key, [])
            if pending and point.period_start != pending[-1].period_start:
                if point.period_start < pending[-1].period_start:
                    return  # of an earlier period: it would be deleted when written
                pending.clear()
            pending.append(point)
            if len(pending) > MAX_POINTS:
                del pending[0]

    def answers(self, period: Period) -> Iterator[StoredAnswer]:
        db = self._reader()
        args: tuple[float, ...] = ()
        if not period.closed:
            query = f"SELECT {_ANSWER} FROM answers ORDER BY team, project_id"  # noqa: S608
        elif period.day is None:
            query = (
                f"SELECT {_ANSWER} FROM closed_periods AS c WHERE period_start = "  # noqa: S608
                "(SELECT MAX(period_start) FROM closed_periods "
                "WHERE team = c.team AND project_id = c.project_id) ORDER BY team, project_id"
            )
        else:
            start = datetime(period.day.year, period.day.month, period.day.day, tzinfo=UTC)
            query, args = (
                f"SELECT {_ANSWER} FROM closed_periods "  # noqa: S608
                "WHERE period_start >= ? AND period_start < ? ORDER BY team, project_id",
                (start.timestamp(), (start + timedelta(days=1)).timestamp()),
            )
        with self._lock:  # not written yet: being written, or the writer failed
            pending = {} if period.closed else {**self._writing, **self._pending}
        return self._read(db, query, args, pending, closed=period.closed)

    def closed_days(self) -> Sequence[date]:
        db = self._reader()
        try:
            starts = [
                row[0]
                for row in db.execute(
                    "SELECT DISTINCT period_start FROM closed_periods ORDER BY period_start DESC"
                )
            ]
        except sqlite3.Error as exc:
            raise StateUnavailable(f"the state file could not be read: {exc}") from None
        finally:
            db.close()
        days = (datetime.fromtimestamp(s, UTC).date() for s in starts if _finite(s))
        return list(dict.fromkeys(days))

    def _reader(self) -> sqlite3.Connection:
        """A read-only connection, once what is pending was written (or the writer
        failed, or `READ_FLUSH_SECONDS` passed). Raises `StateUnavailable`."""
        if not self._usable:
            raise StateUnavailable(
                "the state file is not in use: see latitudesh_state_errors_total"
            )
        if self._thread is not None and self._thread.is_alive():
            with self._lock:
                self._asked += 1
                ask = self._asked
            self._wake.set()
            with self._flushed:
                self._flushed.wait_for(lambda: self._served >= ask, timeout=READ_FLUSH_SECONDS)
        try:
            db = sqlite3.connect(
                f"{self.path.absolute().as_uri()}?mode=ro",
                uri=True,
                timeout=BUSY_SECONDS,
                check_same_thread=False,  # a download's chunks come from pool threads
            )
            # each row is read once, in order: a page cache would only cost memory
            db.execute("PRAGMA cache_size = -64")
            return db
        except sqlite3.Error as exc:
            raise StateUnavailable(f"the state file could not be read: {exc}") from None

    def _read(
        self,
        db: sqlite3.Connection,
        query: str,
        args: tuple[float, ...],
        pending: dict[tuple[str, str], StoredAnswer],
        *,
        closed: bool,
    ) -> Iterator[StoredAnswer]:
        """The rows of `query` one at a time (an answer that does not read skipped),
        a pending answer instead of its project's row, then the pending others."""
        try:
            for row in db.execute(query, args):
                key = (str(row[0]), str(row[1]))
                newer = pending.pop(key, None)
                answer = newer or _answer(row, self._max_body, closed=closed)
                if answer is not None:
                    yield answer
        except sqlite3.Error as exc:
            log.warning(
                "state file read failed: the download ends short",
                extra={"path": str(self.path), "error": str(exc)},
            )
            raise
        finally:
            db.close()
        yield from pending.values()

    def keep_only(self, team: str, project_ids: Collection[str]) -> None:
        if not self._usable:
            return
        keep = frozenset(project_ids)
        with self._lock:
            self._forget[team] = keep
            for pending in (self._pending, self._closing, self._points):
                for key in [k for k in pending if k[0] == team and k[1] not in keep]:
                    del pending[key]

    def close(self, timeout: float) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- reading --------------------------------------------------------------------

    def _load(self) -> list[StoredAnswer]:
        db = self._connect()
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                _migrate(db, version)
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("database disk image is malformed")
            rows = [
                (False, *row)
                for row in db.execute(
                    "SELECT team, project_id, received_at, currency, slug, name, "
                    "team_name, body, period_start, NULL FROM answers"
                )
            ] + [
                (True, *row)
                for row in db.execute(
                    "SELECT team, project_id, received_at, currency, slug, name, "
                    "team_name, CASE WHEN summary IS NULL THEN body END, period_start, "
                    "summary FROM closed_periods AS c WHERE period_start = "
                    "(SELECT MAX(period_start) FROM closed_periods "
                    "WHERE team = c.team AND project_id = c.project_id)"
                )
            ]
            curves = _curves(
                db.execute("SELECT team, project_id, period_start, points FROM curves")
            )
        finally:
            db.close()
        answers = []
        dropped = 0
        for (
            closed,
            team,
            project_id,
            received_at,
            currency,
            slug,
            name,
            team_name,
            packed,
            start,
            packed_summary,
        ) in rows:
            summary = None if packed_summary is None else _unpack(packed_summary, self._max_body)
            # a closed period's summary stands for its answer, which is not read at all
            body = b"" if summary is not None else _unpack(packed, self._max_body)
            if body is None:
                dropped += 1
                continue
            answers.append(
                StoredAnswer(
                    team,
                    project_id,
                    body,
                    received_at,
                    currency,
                    slug,
                    name,
                    team_name,
                    period_start=start,
                    closed=closed,
                    summary=summary,
                )
            )
        if dropped:
            self._on_status(True, "invalid_answer")
            log.warning(
                "stored answers that no longer read are not served",
                extra={"path": str(self.path), "answers": dropped},
            )
        self._curves = curves
        self._on_status(True, None)
        log.info(
            "state loaded",
            extra={"path": str(self.path), "answers": len(answers), "curves": len(curves)},
        )
        return answers

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(
            self.path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
        )
        try:
            # Before anything writes (even the WAL switch rewrites the header): a file
            # of a newer exporter is left exactly as it is.
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise _NewerVersion(version)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error:
            db.close()
            raise
        # What a team spends is its own business: the owner only (SQLite gives the
        # -wal and -shm files the mode of the database file).
        with contextlib.suppress(OSError):
            if self.path.stat().st_mode & 0o077:
                self.path.chmod(0o600)
        return db

    def _refuse(self, reason: str, exc: BaseException) -> None:
        """The file cannot be used: memory only from now on, the file left as it is."""
        self._usable = False
        self._on_status(False, reason)
        hint = {
            "newer_version": "written by a newer latitudesh-exporter: left as it is",
            "locked": "another process holds its write lock (two exporters on one file?)",
            "read_only": "its directory or the file cannot be written: check the volume",
            "disk_full": "the disk is full",
        }.get(reason, "check the file and its directory")
        log.warning(
            "state file not used: serving from memory only",
            extra={"path": str(self.path), "reason": reason, "error": str(exc), "hint": hint},
        )

    def _quarantine(self, exc: BaseException) -> None:
        """Move the unreadable file (and its -wal, -shm) aside; never delete it."""
        stamp = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y%m%dT%H%M%SZ")
        moved = self.path.with_name(f"{self.path.name}.bad-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.rename(f"{moved}{suffix}")
        self._on_status(True, "unreadable")
        log.warning(
            "state file unreadable: moved aside, a new one made",
            extra={"path": str(self.path), "moved_to": str(moved), "error": str(exc)},
        )

    # --- writing ------------------------------------------------------------------

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        while True:
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            stopping = self._stopping.is_set()
            with self._lock:
                asked = self._asked
                pending, self._pending = self._pending, {}
                self._writing = pending
                closing, self._closing = self._closing, {}
                forget, self._forget = self._forget, {}
                points, self._points = self._points, {}
            if pending or forget or points:
                try:
                    if db is None:
                        db = self._connect()
                    _write(db, [*closing.values(), *pending.values()], forget, points)
                except (sqlite3.Error, OSError) as exc:
                    self._failed(
                        _reason(exc, self.path),
                        exc,
                        pending=pending,
                        closing=closing,
                        forget=forget,
                        points=points,
                    )
                else:
                    if self._failing is not None:
                        log.info("state file written again", extra={"path": str(self.path)})
                        self._failing = None
                    self._on_status(True, None)
            with self._lock:
                self._writing = {}  # committed, or put back by `_failed`
            with self._flushed:
                self._served = asked
                self._flushed.notify_all()
            if stopping:
                if db is not None:
                    db.close()
                return

    def _failed(
        self,
        reason: str,
        exc: BaseException,
        *,
        pending: dict[tuple[str, str], StoredAnswer],
        closing: dict[tuple[str, str], StoredAnswer],
        forget: dict[str, frozenset[str]],
        points: dict[tuple[str, str], list[StoredPoint]],
    ) -> None:
        """Count it, say it (at most once a minute), and keep what was not written for
        the next try, unless something newer came meanwhile."""
        self._failing = reason
        self._on_status(False, reason)
        now = time.monotonic()
        if now - self._logged.get(reason, -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS:
            self._logged[reason] = now
            log.warning(
                "state not written: polls go on in memory; tried again each second",
                extra={"path": str(self.path), "reason": reason, "error": str(exc)},
            )
        with self._lock:
            for team, keep in forget.items():
                self._forget.setdefault(team, keep)  # a newer `keep_only` wins

            def kept(key: tuple[str, str]) -> bool:
                """Not forgotten meanwhile: a `keep_only` during the failed write must
                not see its projects come back (they would be retried forever, and
                on a full disk the write that makes room would never succeed)."""
                keep = self._forget.get(key[0])
                return keep is None or key[1] in keep

            for key, answer in pending.items():
                if not kept(key):
                    continue
                newer = self._pending.setdefault(key, answer)
                if newer is not answer and _later(newer, answer):
                    self._closing.setdefault(key, answer)
            for key, answer in closing.items():
                if kept(key):
                    self._closing.setdefault(key, answer)
            for key, older in points.items():
                if kept(key):
                    self._points[key] = _merge(older, self._points.get(key, []))


class _NewerVersion(sqlite3.DatabaseError):
    def __init__(self, version: int) -> None:
        super().__init__(
            f"the file's schema version {version} is newer than this exporter's {SCHEMA_VERSION}"
        )


def _migrate(db: sqlite3.Connection, version: int) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        for steps in MIGRATIONS[version:]:
            for step in steps:
                if isinstance(step, str):
                    db.execute(step)
                else:
                    step(db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except sqlite3.Error:
        db.execute("ROLLBACK")
        raise


def _write(
    db: sqlite3.Connection,
    answers: Sequence[StoredAnswer],
    forget: dict[str, frozenset[str]],
    points: dict[tuple[str, str], list[StoredPoint]] | None = None,
) -> None:
    """One transaction: each answer in order (an answer of a later period than the
    kept one first moves that one to `closed_periods`, pruned to the newest
    `CLOSED_PERIODS_KEPT`), then each project's curve points (added to its kept curve
    of the same period, replacing one of an earlier period), then the projects to
    forget."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for a in answers:
            if a.period_start is not None:
                moved = db.execute(
                    "INSERT OR REPLACE INTO closed_periods (team, project_id, received_at, "
                    "currency, slug, name, team_name, body, period_start, summary) "
                    "SELECT team, project_id, received_at, currency, slug, name, "
                    "team_name, body, period_start, summary "
                    "FROM answers WHERE team = ? AND project_id = ? "
                    "AND period_start IS NOT NULL AND period_start < ?",
                    (a.team, a.project_id, a.period_start),
                ).rowcount
                if moved:
                    db.execute(
                        "DELETE FROM closed_periods WHERE team = ? AND project_id = ? "
                        "AND period_start NOT IN (SELECT period_start FROM closed_periods "
                        "WHERE team = ? AND project_id = ? ORDER BY period_start DESC LIMIT ?)",
                        (a.team, a.project_id, a.team, a.project_id, CLOSED_PERIODS_KEPT),
                    )
            db.execute(
                "INSERT INTO answers (team, project_id, received_at, currency, slug, name, "
                "team_name, body, period_start, summary) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (team, project_id) DO UPDATE SET "
                "received_at = excluded.received_at, currency = excluded.currency, "
                "slug = excluded.slug, name = excluded.name, team_name = excluded.team_name, "
                "body = excluded.body, period_start = excluded.period_start, "
                "summary = excluded.summary",
                (
                    a.team,
                    a.project_id,
                    a.received_at,
                    a.currency,
                    a.slug,
                    a.name,
                    a.team_name,
                    zlib.compress(a.body, 1),
                    a.period_start,
                    None if a.summary is None else zlib.compress(a.summary, 1),
                ),
            )
        for (team, project_id), added in (points or {}).items():
            if not added:
                continue
            start = max(p.period_start for p in added)
            new = [(p.at, p.price) for p in added if p.period_start == start]
            kept = _curve(
                db.execute(
                    "SELECT period_start, points FROM curves WHERE team = ? AND project_id = ?",
                    (team, project_id),
                ).fetchone()
            )
            if kept is not None and kept.period_start > start:
                continue  # a lagging poll's points: of an earlier period than the file's
            if kept is not None and kept.period_start == start:
                new = kept.points() + new
            db.execute(
                "INSERT OR REPLACE INTO curves (team, project_id, period_start, points) "
                "VALUES (?, ?, ?, ?)",
                (team, project_id, start, Curve.of(start, new).packed),
            )
        for team, keep in forget.items():
            for table in ("answers", "closed_periods", "curves"):
                stored = {
                    r[0]
                    for r in db.execute(
                        f"SELECT project_id FROM {table} WHERE team = ?",  # noqa: S608
                        (team,),
                    )
                }
                db.executemany(
                    f"DELETE FROM {table} WHERE team = ? AND project_id = ?",  # noqa: S608
                    [(team, pid) for pid in stored if pid not in keep],
                )
        db.execute("COMMIT")
    except sqlite3.Error:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _answer(row: Sequence[object], limit: int, *, closed: bool) -> StoredAnswer | None:
    """A kept answer as `_ANSWER` reads it, or None where it does not read as one."""
    team, project_id, received_at, currency, slug, name, team_name, packed, start = row
    body = _unpack(packed, limit)
    if body is None or not _finite(received_at):
        return None
    return StoredAnswer(
        str(team),
        str(project_id),
        body,
        float(received_at),
        str(currency),
        None if slug is None else str(slug),
        None if name is None else str(name),
        None if team_name is None else str(team_name),
        period_start=float(start) if _finite(start) else None,
        closed=closed,
    )


def _merge(older: list[StoredPoint], newer: list[StoredPoint]) -> list[StoredPoint]:
    """A project's points not written yet, `older` before `newer`: those of its newest
    period only (the others would be deleted when it is written), the last
    `MAX_POINTS`."""
    merged = older + newer
    if not merged:
        return merged
    newest = max(p.period_start for p in merged)
    return [p for p in merged if p.period_start == newest][-MAX_POINTS:]


def _curves(rows: Iterable[tuple[object, ...]]) -> list[StoredCurve]:
    """Each project's curve from its row (team, project, period start, points); a row
    that does not read as one is skipped."""
    curves = []
    for team, project_id, *row in rows:
        curve = _curve(row)
        if curve is not None and len(curve):
            curves.append(StoredCurve(str(team), str(project_id), curve))
    return curves


def _curve(row: Sequence[object] | None) -> Curve | None:
    """A stored (period start, points) as a curve, or None where it is not one."""
    if row is None:
        return None
    start, packed = row
    if not _finite(start) or not isinstance(packed, bytes):
        return None
    return Curve.read(float(start), packed)


def _points(rows: Iterable[tuple[object, ...]]) -> list[StoredCurve]:
    """Each project's curve from schema 4's rows, one a point (in team, project and time
    order): the points of its newest period, rows that are not numbers skipped."""
    curves: list[StoredCurve] = []
    key: tuple[str, str] | None = None
    periods: dict[float, list[Point]] = {}

    def done() -> None:
        if key is not None and periods:
            start = max(periods)
            curves.append(StoredCurve(key[0], key[1], Curve.of(start, periods[start])))

    for team, project_id, start, at, price in rows:
        if (team, project_id) != key:
            done()
            key, periods = (str(team), str(project_id)), {}
        if _finite(start) and _finite(at) and _finite(price):
            periods.setdefault(float(start), []).append((float(at), float(price)))
    done()
    return curves


def _finite(value: object) -> TypeGuard[float]:
    """A number SQLite gave back as one (a REAL column stores text it cannot convert)."""
    return isinstance(value, float | int) and math.isfinite(value)


def _later(new: StoredAnswer, old: StoredAnswer) -> bool:
    """Whether `new` is of a later billing period than `old`."""
    return (
        new.period_start is not None
        and old.period_start is not None
        and new.period_start > old.period_start
    )


def _unpack(packed: object, limit: int) -> bytes | None:
    """The stored body, decompressed without ever holding more than `limit` bytes."""
    if not isinstance(packed, bytes):
        return None
    inflater = zlib.decompressobj()
    try:
        body = inflater.decompress(packed, limit + 1)
    except zlib.error:
        return None
    if len(body) > limit or not inflater.eof:
        return None
    return body


def _reason(exc: BaseException, path: Path) -> str:
    """The `STATE_ERROR_REASONS` entry of a failure to use the file."""
    if isinstance(exc, _NewerVersion):
        return "newer_version"
    if isinstance(exc, OSError):
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return "read_only"
        return "disk_full" if exc.errno == errno.ENOSPC else "io"
    text = str(exc).lower()
    if "not a database" in text or "malformed" in text or "file is encrypted" in text:
        return "unreadable"
    if "locked" in text or "busy" in text:
        return "locked"
    if "readonly" in text or "read-only" in text:
        return "read_only"
    if "disk is full" in text or "disk full" in text:
        return "disk_full"
    if "unable to open" in text and not os.access(path.parent, os.W_OK):
        return "read_only"
    return "io"
