"""The store: the seam between the writer (poller) and the readers (exposition, status page).

Neither side imports the other. Every write replaces whole immutable rows under a
short lock; a reader gets one consistent `StoreView`. Listeners (the exposition, which
formats and compresses a project's lines when its poll lands, about 3 ms a project of
fifty products) are told of every change *outside* that lock, one change at a time and
in the order the changes happened: a scrape or the status page reading the view never
waits behind a render, and no listener ever sees an older change after a newer one.

Teams are known by a key that never changes: the name they were added with (their
configured name, or `default`). Discovery may learn a team's display name (its slug)
later; `rename_team` changes what the `team` label says, and every write still names
the team by its key, so a writer wired before discovery (the client's request counter)
needs no reference to anything built after it.

Ownership: a project belongs to one team. When two teams' keys both see it, the owner
is stable and documented, whichever discovery lands first: a team that lists the
project in its config beats one that discovered it, and among equals the team listed
first in the config wins. Writes from a team that does not own a project are ignored.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from exporter.curve import Curve, Point, extend
from exporter.errors import POLL_ERROR_REASONS
from exporter.snapshot import (
    Budget,
    ClosedPeriod,
    ProjectStatus,
    ReloadStatus,
    StateStatus,
    StoreView,
    TeamProblem,
    TeamStatus,
    UsageSnapshot,
    closes,
    label,
)
from exporter.state import STATE_ERROR_REASONS

STALLED = "stalled"


class StoreListener(Protocol):
    """Told of every change, in the order they happened, one at a time."""

    def project_changed(self, status: ProjectStatus) -> None: ...

    def projects_changed(self, projects: Sequence[ProjectStatus]) -> None: ...


@dataclass(slots=True)
class _Team:
    status: TeamStatus
    #: Rank among teams: its place in the config; lower wins a shared project.
    rank: int
    project_ids: list[str] = field(default_factory=list)
    requests: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Landed:
    """What a successful poll changed beyond the figures, for the poller to say and keep."""

    #: The period its answer closed (one of a later period came), if any.
    closed: ClosedPeriod | None = None
    #: The point it added to the project's curve (`curve.py`), if one was due.
    point: Point | None = None


@dataclass(frozen=True, slots=True)
class Restored:
    """What the state kept of one project, served at a warm start."""

    project_id: str
    #: Its last answer's figures, and when that answer was received.
    usage: UsageSnapshot | None
    received_at: float
    #: Its last closed period.
    closed: ClosedPeriod | None = None
    #: Its curve's kept points, of `usage`'s period only.
    curve: Curve | None = None


@dataclass(frozen=True, slots=True)
class Claims:
    """What `set_projects` did with the ids a team asked for."""

    taken: list[str]
    #: Ids a team with a better claim owns (see the module docstring).
    refused: list[str]


class SnapshotStore:
    """The latest status of every project and team.

    Parameters:
        listeners: told of every change (more can `subscribe` later).
        clock: the wall clock, for when a team's problem started.
    """

    def __init__(
        self, listeners: Sequence[StoreListener] = (), *, clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._teams: dict[str, _Team] = {}
        self._projects: dict[str, ProjectStatus] = {}
        #: project id → (0 when configured, 1 when discovered; the owner's rank)
        self._claims: dict[str, tuple[int, int]] = {}
        self._listeners = list(listeners)
        self._version = 0
        self._view: StoreView | None = None
        self._changes: deque[ProjectStatus | tuple[ProjectStatus, ...]] = deque()
        self._telling = threading.Lock()
        self._reload = ReloadStatus()
        self._state = StateStatus()
        self._budgets: tuple[Budget, ...] = ()

    def subscribe(self, listener: StoreListener) -> None:
        with self._telling, self._lock:
            self._listeners.append(listener)
            projects = tuple(self._projects.values())
        listener.projects_changed(projects)

    # --- teams ----------------------------------------------------------------

    def add_team(self, key: str, rank: int | None = None, *, key_origin: str = "") -> None:
        """A team, known by `key` for good (and named so until `rename_team`), ranked by
        its place in the config (default: after every other); `key_origin` says where
        its API key comes from, for the hints people read."""
        with self._lock:
            if key not in self._teams:
                status = TeamStatus(key, key_origin=key_origin, key=key)
                team = _Team(status, rank if rank is not None else len(self._teams))
                team.requests = dict(team.status.api_requests)
                self._teams[key] = team
                self._changed()

    def rename_team(self, key: str, name: str) -> bool:
        """The team's name became known (its slug, from /projects): the `team` label of
        its figures and projects says `name` from now on; writes still use `key`. A name
        another team already has is refused (two teams would share one label). True
        when the team is now called `name`."""
        with self._lock:
            team = self._teams.get(key)
            if team is None:
                return False
            if team.status.name == name:
                return True
            if any(other.status.name == name for other in self._teams.values()):
                return False
            team.status = replace(team.status, name=name)
            for pid in team.project_ids:
                self._projects[pid] = replace(self._projects[pid], team=name)
            self._reorder()
        self._tell()
        return True

    def set_projects(
        self, team: str, projects: Iterable[tuple[str, str]], *, configured: bool = False
    ) -> Claims:
        """Track exactly these (id, slug) projects for `team`: new ones appear unpolled,
        gone ones vanish, a project another team has a weaker claim on moves here."""
        with self._lock:
            owner = self._teams[team]
            name = owner.status.name
            claim = (0 if configured else 1, owner.rank)
            wanted: dict[str, str] = {}
            refused: list[str] = []
            for pid, slug in projects:
                held = self._claims.get(pid)
                current = self._projects.get(pid)
                if current is not None and current.team != name and held is not None:
                    if held <= claim:
                        refused.append(pid)
                        continue
                    self._release(current.team, pid)
                wanted.setdefault(pid, slug)
            changed = list(wanted) != owner.project_ids
            for pid, slug in wanted.items():
                current = self._projects.get(pid)
                self._claims[pid] = claim
                if current is None:
                    self._projects[pid] = ProjectStatus(pid, team=name, slug=label(slug))
                    changed = True
                elif current.team != name:  # taken over: the figures are the project's
                    self._projects[pid] = replace(current, team=name, slug=label(slug))
                    changed = True
                elif slug and current.slug != label(slug):
                    self._projects[pid] = replace(current, slug=label(slug))
                    changed = True
            for pid in set(owner.project_ids) - set(wanted):
                self._projects.pop(pid, None)
                self._claims.pop(pid, None)
            owner.project_ids = list(wanted)
            if changed:
                self._reorder()
        self._tell()
        return Claims(list(wanted), refused)

    def _release(self, name: str, pid: str) -> None:
        """The team named `name` loses `pid` to a better claim."""
        for loser in self._teams.values():
            if loser.status.name == name and pid in loser.project_ids:
                loser.project_ids.remove(pid)

    # --- polls ------------------------------------------------------------------

    def record_success(
        self, team: str, usage: UsageSnapshot, *, duration: float, now: float
    ) -> Landed:
        """A poll of the project succeeded. When its answer is of a later period than
        the last one known (live or restored), that one's figures become the closed
        period, as of when it was received; the project's curve gets the point if one
        is due (`curve.extend`). Both returned, so that the poller can say the one and
        keep the other."""
        closed = None
        point = None
        with self._lock:
            previous = self._owned(team, usage.project_id)
            if previous is not None:
                if closes(previous.usage, usage) and previous.last_success is not None:
                    assert previous.usage is not None
                    closed = ClosedPeriod.of(previous.usage, previous.last_success)
                spend, point = extend(
                    previous.curve,
                    period_start=usage.period_start,
                    period_end=usage.period_end,
                    at=now,
                    price=usage.price,
                )
                self._update(
                    replace(
                        previous,
                        usage=usage,
                        previous_period=closed or previous.previous_period,
                        curve=spend,
                        up=True,
                        polled=True,
                        last_success=now,
                        poll_duration=duration,
                        last_error=None,
                    )
                )
        self._tell()
        return Landed(closed, point)

    def record_failure(self, team: str, project_id: str, reason: str, *, duration: float) -> None:
        with self._lock:
            previous = self._owned(team, project_id)
            if previous is not None:
                self._update(
                    replace(
                        previous,
                        up=False,
                        polled=True,
                        poll_duration=duration,
                        last_error=reason,
                        errors=_bump(previous.errors, reason),
                    )
                )
                self._trouble(team, reason)
        self._tell()

    def record_stalled(self, team: str, project_ids: Iterable[str]) -> int:
        """The watchdog found no poll outcome in time: `up` 0 and one `stalled` count
        per episode (a project already stalled, with no outcome since, is left as is).
        Returns how many projects were newly marked."""
        marked = 0
        with self._lock:
            for pid in project_ids:
                previous = self._owned(team, pid)
                if previous is None or previous.last_error == STALLED:
                    continue
                self._update(
                    replace(
                        previous,
                        up=False,
                        polled=True,  # an outcome: the watchdog's
                        last_error=STALLED,
                        errors=_bump(previous.errors, STALLED),
                    )
                )
                marked += 1
            if marked:
                self._trouble(team, STALLED)
        self._tell()
        return marked

    def record_team_stalled(self, team: str) -> int:
        """The team's refresh did not start in time: every project of it stalled, and
        the team not ready until its next refresh starts. Returns the projects marked."""
        with self._lock:
            owner = self._teams.get(team)
            if owner is None:
                return 0
            owner.status = replace(owner.status, stalled=True, restarts=owner.status.restarts + 1)
            self._changed()
            ids = list(owner.project_ids)
        return self.record_stalled(team, ids)

    # --- the exporter's own figures ---------------------------------------------

    def record_discovery_failure(self, team: str, reason: str) -> None:
        with self._lock:
            owner = self._teams[team]
            owner.status = replace(
                owner.status, discovery_errors=_bump(owner.status.discovery_errors, reason)
            )
            self._trouble(team, reason)
            self._changed()

    def record_discovery_success(self, team: str, now: float, *, refused_ids: int = 0) -> None:
        with self._lock:
            owner = self._teams[team]
            owner.status = replace(owner.status, discovery_success=now, refused_ids=refused_ids)
            self._changed()

    def record_request(self, team: str, endpoint: str, code: str) -> None:
        with self._lock:
            owner = self._teams.get(team)
            if owner is None:
                return
            key = (endpoint, code)
            owner.requests[key] = owner.requests.get(key, 0) + 1
            owner.status = replace(owner.status, api_requests=tuple(owner.requests.items()))
            self._changed()

    def record_refresh(
        self,
        team: str,
        *,
        duration: float | None,
        effective_interval: float,
        currency: str | None = None,
        healthy: bool = False,
    ) -> None:
        """A refresh of `team` ended (`duration`) or starts (`duration` None); a start
        ends a stall; a `healthy` end (discovery and every poll fine) ends its problem."""
        with self._lock:
            owner = self._teams[team]
            status = owner.status
            owner.status = replace(
                status,
                problem=None if duration is not None and healthy else status.problem,
                effective_interval=effective_interval,
                refresh_duration=duration if duration is not None else status.refresh_duration,
                refreshed=status.refreshed or duration is not None,
                currency=currency if currency is not None else status.currency,
                stalled=status.stalled and duration is not None,
            )
            self._changed()

    def record_reload(self, *, successful: bool, now: float) -> None:
        """The config files were loaded (at start, or on SIGHUP), or a reload refused."""
        with self._lock:
            last = now if successful else self._reload.last_success
            self._reload = ReloadStatus(successful=successful, last_success=last)
            self._changed()

    def record_state(self, up: bool, reason: str | None = None) -> None:
        """The state backend is in use (`up`) or not; `reason`: a failure, counted."""
        with self._lock:
            state = self._state
            errors = state.errors or (0,) * len(STATE_ERROR_REASONS)
            if reason is not None:
                index = STATE_ERROR_REASONS.index(reason)
                errors = (*errors[:index], errors[index] + 1, *errors[index + 1 :])
            if (state.enabled, state.up, state.errors) != (True, up, errors):
                self._state = replace(state, enabled=True, up=up, errors=errors)
                self._changed()

    def record_download_skipped(self, answers: int) -> None:
        """`answers` kept answers that no longer read were left out of a download."""
        with self._lock:
            state = self._state
            self._state = replace(state, skipped_in_downloads=state.skipped_in_downloads + answers)
            self._changed()

    def record_restored(self, team: str, restored: Iterable[Restored]) -> None:
        """Projects' last answers from the state, at start, each with its last closed
        period and its curve's points (usage or period absent where none was kept):
        served as they were; no poll of this process is claimed (`up` stays absent
        until the first outcome). One change for all of them: a thousand projects are
        rendered once each and their blocks joined once."""
        with self._lock:
            changed = False
            for kept in restored:
                previous = self._owned(team, kept.project_id)
                if previous is not None and not previous.polled:
                    usage = kept.usage
                    self._projects[kept.project_id] = replace(
                        previous,
                        usage=usage or previous.usage,
                        last_success=kept.received_at if usage else previous.last_success,
                        previous_period=kept.closed or previous.previous_period,
                        curve=kept.curve if kept.curve is not None else previous.curve,
                    )
                    changed = True
            if changed:
                owner = self._teams[team]
                owner.status = replace(owner.status, restored=True)
                self._changed()
                self._changes.append(tuple(self._projects.values()))
        self._tell()

    def set_budgets(self, budgets: Sequence[Budget]) -> None:
        """The budgets in force (at start, and each SIGHUP that reads the config)."""
        with self._lock:
            self._budgets = tuple(budgets)
            self._changed()

    def view(self) -> StoreView:
        with self._lock:
            if self._view is None:
                self._view = StoreView(
                    projects=tuple(self._projects.values()),
                    teams=tuple(team.status for team in self._teams.values()),
                    version=self._version,
                    reload=self._reload,
                    state=self._state,
                    budgets=self._budgets,
                )
            return self._view

    # --- under the lock -----------------------------------------------------------

    def _owned(self, team: str, project_id: str) -> ProjectStatus | None:
        """The project's status if the team keyed `team` owns it; None when it was
        dropped from discovery, or moved to another team, while its poll ran."""
        status = self._projects.get(project_id)
        owner = self._teams.get(team)
        if status is None or owner is None or status.team != owner.status.name:
            return None
        return status

    def _trouble(self, team: str, reason: str) -> None:
        """The team's problem is `reason` now (since when it first failed so)."""
        owner = self._teams.get(team)
        if owner is None:
            return
        now = self._clock()
        problem = owner.status.problem
        since = problem.since if problem is not None and problem.reason == reason else now
        owner.status = replace(owner.status, problem=TeamProblem(reason, since, now))
        self._changed()

    def _update(self, status: ProjectStatus) -> None:
        self._projects[status.project_id] = status
        self._changed()
        self._changes.append(status)

    def _reorder(self) -> None:
        """Projects in team order, each team's in the order it listed them."""
        self._projects = {
            pid: self._projects[pid]
            for team in self._teams.values()
            for pid in team.project_ids
            if pid in self._projects
        }
        self._changed()
        self._changes.append(tuple(self._projects.values()))

    def _changed(self) -> None:
        self._version += 1
        self._view = None

    # --- telling the listeners ------------------------------------------------------

    def _tell(self) -> None:
        """Deliver the queued changes, in order, outside the store's lock.

        Whoever holds `_telling` delivers every change queued meanwhile, its own and
        other threads'; a thread that finds it taken leaves its change to the holder,
        and the holder looks once more after letting go, so no change is left behind.
        """
        while self._changes:
            if not self._telling.acquire(blocking=False):
                return
            try:
                while True:
                    with self._lock:
                        if not self._changes:
                            break
                        change = self._changes.popleft()
                        listeners = list(self._listeners)
                    for listener in listeners:
                        if isinstance(change, tuple):
                            listener.projects_changed(change)
                        else:
                            listener.project_changed(change)
            finally:
                self._telling.release()


def _bump(counts: tuple[int, ...], reason: str) -> tuple[int, ...]:
    index = POLL_ERROR_REASONS.index(reason)
    return (*counts[:index], counts[index] + 1, *counts[index + 1 :])
