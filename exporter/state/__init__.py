"""State that outlives the process: the last answer of every project, for a warm start,
the last answers of its closed billing periods, so that no period's bill is lost
at its close, and the points of its current period's spend curve.

Without it every restart was a blind spot: at the default budget an account of 1,000
projects needed 20 minutes to be back on `/metrics`. With it, a restart serves every
project still configured at once, from its last answer.

This module is the interface every backend implements (`State`: SQLite now, in
`state/sqlite.py`; Redis when replicas share one key) and `NoState` for `state.enabled:
false`, `--once` and `--check-config`. What is kept, per team and project: the last
successful answer's body (read again at a restart by `models.read_usage`, the live
path, so a stored answer is never trusted more than a live one), when it was received,
and the currency, slug and names it was exported with; the same of the last answer of
each of its last `CLOSED_PERIODS_KEPT` closed periods; the points of its current
period's spend curve (`curve.py`: at most `curve.MAX_POINTS`, those of older periods
forgotten), so that a restart draws the period's curve again. Never a token, a password
or a counter (counters restart at 0, as Prometheus expects).

A backend never costs the service: `keep` and `keep_point` never block or raise (a
poll lands in `/metrics` whatever the disk does), and a backend that cannot read or
write its file says so through `on_status` and goes on in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from exporter.curve import Curve

#: Why the state could not be used; the `reason` of `latitudesh_state_errors_total`.
STATE_ERROR_REASONS: tuple[str, ...] = (
    "unreadable",  # not a state file, truncated, malformed: moved aside, a new one made
    "newer_version",  # written by a newer exporter: left as it is, in memory meanwhile
    "locked",  # another process holds its write lock
    "read_only",  # the directory or the file cannot be written
    "disk_full",
    "io",  # any other failure to open, read or write
    "invalid_answer",  # a stored answer that no longer reads: not served, forgotten
)

#: Closed periods kept per project: a year, and the month a year before the last one.
CLOSED_PERIODS_KEPT = 13

#: What a backend reports: whether it is in use (writing to its file), and the reason
#: of a failure that happened now (counted), if any.
StatusSink = Callable[[bool, str | None], None]


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """One project's last successful answer, as a backend keeps it."""

    #: The team's key in the store (its configured name, or `default`).
    team: str
    project_id: str
    #: The decoded body of `GET /billing/usage`, as received.
    body: bytes
    #: Unix time the answer was received.
    received_at: float
    #: What it was exported with: the currency, the project's slug and name from
    #: discovery, and the team's name (its slug, once discovery learned it).
    currency: str
    slug: str | None = None
    name: str | None = None
    team_name: str | None = None
    #: The start of the answer's billing period, Unix time: an answer of a later
    #: period makes the kept one its project's closed period.
    period_start: float | None = None
    #: True for a closed period's last answer (`load` gives the newest of each project).
    closed: bool = False
    #: The answer's figures as a closed period shows them (`ClosedPeriod.encode`), kept
    #: beside it: a warm start reads these for a closed period instead of its answer
    #: (then `body` is empty). None where the file has none (written by an older one).
    summary: bytes | None = None


@dataclass(frozen=True, slots=True)
class Period:
    """Which answers `State.answers` reads (the downloads' `?period=`).

    Parameters:
        closed: False for the current period (each project's last answer); True for
            closed ones.
        day: with `closed`, the closed periods that started on this UTC day; None for
            each project's newest closed period (`previous`).
    """

    closed: bool = False
    day: date | None = None


class StateUnavailable(Exception):
    """The kept answers cannot be read: no state (`state.enabled: false`), or a file the
    exporter does not use (its reason in `latitudesh_state_errors_total`)."""


@dataclass(frozen=True, slots=True)
class StoredPoint:
    """One point of a project's spend curve, as a backend keeps it."""

    #: The team's key in the store.
    team: str
    project_id: str
    #: The start of the point's billing period, Unix time: a point of a later period
    #: makes the project's points of the earlier ones forgotten.
    period_start: float
    #: Unix time of the poll, and the price then, in main units.
    at: float
    price: float


@dataclass(frozen=True, slots=True)
class StoredCurve:
    """A project's kept curve, as `load_points` gives it back."""

    team: str
    project_id: str
    curve: Curve


class State(Protocol):
    """What the exporter needs of a state backend."""

    def load(self) -> Sequence[StoredAnswer]:
        """Every answer kept, and each project's newest closed period (`closed`), read
        once at start (none when the file is unusable)."""
        ...

    def start(self) -> None:
        """Begin writing (in a thread of the backend's own)."""
        ...

    def keep(self, answer: StoredAnswer) -> None:
        """Remember `answer` (the newest per project wins); never blocks, never raises.
        When it is of a later period than the one kept, the kept one becomes the
        project's closed period (at least `CLOSED_PERIODS_KEPT` of them are kept)."""
        ...

    def load_points(self) -> Sequence[StoredCurve]:
        """Each project's curve as `load` read it (call `load` first): the points of
        the newest period kept, oldest first, at most `curve.MAX_POINTS`."""
        ...

    def keep_point(self, point: StoredPoint) -> None:
        """Remember a point of a project's curve; never blocks, never raises. One of a
        later period than the project's kept points makes them forgotten; beyond
        `curve.MAX_POINTS`, the oldest go."""
        ...

    def answers(self, period: Period) -> Iterator[StoredAnswer]:
        """The kept answers of `period`, every team's, one at a time as they are read
        (never all at once: a download streams them), in team and project order;
        those not written yet included. Raises `StateUnavailable`."""
        ...

    def closed_days(self) -> Sequence[date]:
        """The UTC days closed periods kept start on, newest first (what `?period=`
        can name). Raises `StateUnavailable`."""
        ...

    def keep_only(self, team: str, project_ids: Collection[str]) -> None:
        """Forget the team's other projects (gone from its config or its discovery),
        their closed periods and curves too: what a deleted project cost stays in
        Prometheus' history and in the cost files downloaded before."""
        ...

    def close(self, timeout: float) -> None:
        """Write what is pending, within `timeout` seconds, and stop."""
        ...


class NoState:
    """`state.enabled: false`, `--once`, `--check-config`: nothing read or written."""

    def load(self) -> Sequence[StoredAnswer]:
        return ()

    def start(self) -> None:
        pass

    def keep(self, answer: StoredAnswer) -> None:
        pass

    def load_points(self) -> Sequence[StoredCurve]:
        return ()

    def keep_point(self, point: StoredPoint) -> None:
        pass

    def answers(self, period: Period) -> Iterator[StoredAnswer]:
        raise StateUnavailable("no state is kept (state.enabled: false)")

    def closed_days(self) -> Sequence[date]:
        raise StateUnavailable("no state is kept (state.enabled: false)")

    def keep_only(self, team: str, project_ids: Collection[str]) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass
