"""The state in an embedded SQLite file: the default backend of `exporter.state`.

Standard library only (`sqlite3`). The file is in WAL mode with `synchronous=NORMAL`:
a commit is atomic, so a `kill -9` at any moment leaves the last committed state
(tested with 100 kills while writing). One writer thread owns the writing connection;
polls hand it their answers (`keep`: a dict assignment, never a wait on the disk) and
it writes what is pending once a second, the newest answer of each project only, in one
transaction, zlib-compressed (level 1: an answer of 50 products, ~25 KB, is ~3 KB and
costs well under a millisecond to compress).

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
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path

from exporter.state import CLOSED_PERIODS_KEPT, StatusSink, StoredAnswer

log = logging.getLogger(__name__)

#: The file's layout; `PRAGMA user_version` holds it. Older files are migrated forward
#: (`MIGRATIONS`); a newer one is refused and left as it is.
SCHEMA_VERSION = 2
#: The statements that bring a file of version N (the index) to N + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
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
)
#: How long a statement waits for another connection's lock before it fails `locked`.
BUSY_SECONDS = 1.0
#: How often pending answers are written.
FLUSH_SECONDS = 1.0
#: Seconds between two log lines of a failure that goes on.
LOG_EVERY_SECONDS = 60.0


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
        self._closing: dict[tuple[str, str], StoredAnswer] = {}
        self._forget: dict[str, frozenset[str]] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: False once the file was refused: the state lives in memory only.
        self._usable = True
        self._failing: str | None = None
        self._logged: dict[str, float] = {}

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

    def keep_only(self, team: str, project_ids: Collection[str]) -> None:
        if not self._usable:
            return
        keep = frozenset(project_ids)
        with self._lock:
            self._forget[team] = keep
            for pending in (self._pending, self._closing):
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
                    "team_name, body, period_start FROM answers"
                )
            ] + [
                (True, *row)
                for row in db.execute(
                    "SELECT team, project_id, received_at, currency, slug, name, "
                    "team_name, body, period_start "
                    "FROM closed_periods AS c WHERE period_start = "
                    "(SELECT MAX(period_start) FROM closed_periods "
                    "WHERE team = c.team AND project_id = c.project_id)"
                )
            ]
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
        ) in rows:
            body = _unpack(packed, self._max_body)
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
                )
            )
        if dropped:
            self._on_status(True, "invalid_answer")
            log.warning(
                "stored answers that no longer read are not served",
                extra={"path": str(self.path), "answers": dropped},
            )
        self._on_status(True, None)
        log.info("state loaded", extra={"path": str(self.path), "answers": len(answers)})
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
                pending, self._pending = self._pending, {}
                closing, self._closing = self._closing, {}
                forget, self._forget = self._forget, {}
            if pending or forget:
                try:
                    if db is None:
                        db = self._connect()
                    _write(db, [*closing.values(), *pending.values()], forget)
                except (sqlite3.Error, OSError) as exc:
                    self._failed(_reason(exc, self.path), exc, pending, closing, forget)
                else:
                    if self._failing is not None:
                        log.info("state file written again", extra={"path": str(self.path)})
                        self._failing = None
                    self._on_status(True, None)
            if stopping:
                if db is not None:
                    db.close()
                return

    def _failed(
        self,
        reason: str,
        exc: BaseException,
        pending: dict[tuple[str, str], StoredAnswer],
        closing: dict[tuple[str, str], StoredAnswer],
        forget: dict[str, frozenset[str]],
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
            for key, answer in pending.items():
                newer = self._pending.setdefault(key, answer)
                if newer is not answer and _later(newer, answer):
                    self._closing.setdefault(key, answer)
            for key, answer in closing.items():
                self._closing.setdefault(key, answer)
            for team, keep in forget.items():
                self._forget.setdefault(team, keep)


class _NewerVersion(sqlite3.DatabaseError):
    def __init__(self, version: int) -> None:
        super().__init__(
            f"the file's schema version {version} is newer than this exporter's {SCHEMA_VERSION}"
        )


def _migrate(db: sqlite3.Connection, version: int) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except sqlite3.Error:
        db.execute("ROLLBACK")
        raise


def _write(
    db: sqlite3.Connection,
    answers: Sequence[StoredAnswer],
    forget: dict[str, frozenset[str]],
) -> None:
    """One transaction: each answer in order (an answer of a later period than the
    kept one first moves that one to `closed_periods`, pruned to the newest
    `CLOSED_PERIODS_KEPT`), then the projects to forget."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for a in answers:
            if a.period_start is not None:
                moved = db.execute(
                    "INSERT OR REPLACE INTO closed_periods (team, project_id, received_at, "
                    "currency, slug, name, team_name, body, period_start) "
                    "SELECT team, project_id, received_at, currency, slug, name, "
                    "team_name, body, period_start "
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
                "team_name, body, period_start) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (team, project_id) DO UPDATE SET "
                "received_at = excluded.received_at, currency = excluded.currency, "
                "slug = excluded.slug, name = excluded.name, team_name = excluded.team_name, "
                "body = excluded.body, period_start = excluded.period_start",
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
                ),
            )
        for team, keep in forget.items():
            for table in ("answers", "closed_periods"):
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
