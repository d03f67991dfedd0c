"""What a team polls: its configured or discovered projects, its currency and its name.

One answer of `/projects` serves three purposes: the projects (when none are
configured), the team's currency (when none is configured) and the team's name for the
`team` label (its slug, when the config names none). The ids are claimed in the store,
which decides who owns a project that two keys see (see `store.py`). An id longer than
`MAX_ID_CHARS` is refused and counted: it would be cut in labels, and a cut id no
longer names the project the poll was for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from exporter import errors
from exporter.models import MAX_ID_CHARS, PROJECTS_PAGE_SIZE, ProjectResource, UsageAnswer
from exporter.store import SnapshotStore

log = logging.getLogger(__name__)


def discovery_needed(*, configured: bool, currency: str | None) -> bool:
    """Whether a team must read /projects: to find its projects, or its currency. With
    both in the config the exporter never asks (a key that may not list projects then
    works, and costs no request); the team's name is taken from /projects only when it
    is read anyway."""
    return not configured or not currency


class UsageSource(Protocol):
    """The API as the poller sees it (`LatitudeClient`, or a fake in tests)."""

    def billing_usage(
        self, project_id: str, *, plan: str | None = None, products: Sequence[str] = ()
    ) -> UsageAnswer: ...

    def projects(self) -> list[ProjectResource]: ...


@dataclass(frozen=True, slots=True)
class Target:
    """One project to poll, with the filters of its config and the names discovery saw."""

    project_id: str
    plan: str | None = None
    products: tuple[str, ...] = ()
    slug: str | None = None
    name: str | None = None


class Discovery:
    """A team's targets, kept current by `run()`.

    Parameters:
        source: the API.
        store: where the team's projects are claimed.
        team: the `team` label, or None to take the team's slug from /projects.
        targets: the configured projects; none means every project /projects lists.
        currency: the configured currency, or None to take the team's.
        now: the wall clock, for the discovery's timestamp.
        hint: what to do about a failure's reason, for the log line.
    """

    def __init__(
        self,
        source: UsageSource,
        store: SnapshotStore,
        *,
        team: str,
        named: bool,
        targets: Sequence[Target],
        currency: str | None,
        now: Callable[[], float],
        hint: Callable[[str], str],
    ) -> None:
        self._source = source
        self._store = store
        #: The team's key in the store, for good; `team` is its name, which /projects
        #: may give it later.
        self.key = team
        self.team = team
        self._named = named
        self._configured = tuple(targets)
        self.targets: tuple[Target, ...] = self._configured
        self.currency = currency
        self._currency_configured = currency is not None
        self._now = now
        self._hint = hint
        self._warned: set[str] = set()
        #: Projects the last discovery read from /projects (None: none has run yet).
        self._listed: int | None = None
        if self._configured:
            self._claim(configured=True)

    @property
    def needed(self) -> bool:
        """Whether /projects must be read (see `discovery_needed`)."""
        return discovery_needed(configured=bool(self._configured), currency=self.currency)

    def requests(self) -> int:
        """Requests one discovery makes: a page per hundred projects /projects lists (and
        a last one): what the last discovery read, ids refused or not configured
        included; the targets' count until one has run."""
        if not self.needed:
            return 0
        listed = self._listed if self._listed is not None else len(self.targets)
        return listed // PROJECTS_PAGE_SIZE + 1

    def run(self) -> bool:
        """Read /projects once and apply what it says; False when it failed."""
        outcome = errors.attempt(self._source.projects)
        if isinstance(outcome, errors.Unexpected):
            log.debug("unexpected error in discovery", exc_info=outcome.__cause__)
        if isinstance(outcome, errors.Cancelled):
            return False  # stopping: nothing to count
        if isinstance(outcome, errors.LatitudeError):
            self._store.record_discovery_failure(self.key, outcome.reason)
            log.warning(
                "project discovery failed",
                extra={
                    "team": self.team,
                    "reason": outcome.reason,
                    "error": str(outcome),
                    "hint": self._hint(outcome.reason),
                    "known_projects": len(self.targets),
                },
            )
            return False
        self._apply(outcome)
        return True

    def _apply(self, projects: list[ProjectResource]) -> None:
        self._listed = len(projects)
        if not self._currency_configured:
            self.currency = next((p.currency for p in projects if p.currency), self.currency)
        if not self._named:
            slug = next((p.team.slug for p in projects if p.team and p.team.slug), None)
            if slug and slug != self.team and self._store.rename_team(self.key, slug):
                self.team = slug
        by_id: dict[str, ProjectResource] = {}
        too_long = 0
        for project in projects:
            if not project.id:
                continue
            if len(project.id) > MAX_ID_CHARS:
                too_long += 1
                continue
            by_id.setdefault(project.id, project)
        if too_long:
            log.warning(
                "project ids refused: longer than the API's ids can be",
                extra={"team": self.team, "count": too_long, "max_chars": MAX_ID_CHARS},
            )
        found = self._configured if self._configured else tuple(Target(pid) for pid in by_id)
        if not self._configured and {t.project_id for t in found} != {
            t.project_id for t in self.targets
        }:
            log.info("projects discovered", extra={"team": self.team, "projects": len(found)})
        self.targets = tuple(
            replace(
                t, slug=_attr(by_id, t.project_id, "slug"), name=_attr(by_id, t.project_id, "name")
            )
            for t in found
        )
        self._claim(configured=bool(self._configured))
        self._store.record_discovery_success(self.key, self._now(), refused_ids=too_long)

    def restore(
        self, targets: Sequence[Target], *, currency: str | None, team_name: str | None
    ) -> tuple[Target, ...]:
        """What the state kept, at start: the configured projects among `targets` (a
        project dropped from the config is not served), or, when the team discovers its
        projects, all of them until discovery answers; the currency and the team's name
        it last learned. Returns the targets restored."""
        if self._configured:
            kept = {t.project_id for t in self._configured}
            return tuple(t for t in targets if t.project_id in kept)
        if not self._currency_configured and currency:
            self.currency = currency
        if (
            not self._named
            and team_name
            and team_name != self.team
            and self._store.rename_team(self.key, team_name)
        ):
            self.team = team_name
        self.targets = tuple(targets)
        self._claim(configured=False)
        return self.targets

    def _claim(self, *, configured: bool) -> None:
        claims = self._store.set_projects(
            self.key, ((t.project_id, t.slug or "") for t in self.targets), configured=configured
        )
        refused = set(claims.refused)
        news = sorted(refused - self._warned)
        if news:
            log.warning(
                "projects another team's key sees too are left to that team",
                extra={
                    "team": self.team,
                    "projects": ",".join(news[:10]),
                    "count": len(news),
                    "hint": "a project belongs to the team that configures it, else to "
                    "the team listed first",
                },
            )
        self._warned = refused
        self.targets = tuple(t for t in self.targets if t.project_id not in refused)


def _attr(by_id: dict[str, ProjectResource], project_id: str, name: str) -> str | None:
    project = by_id.get(project_id)
    if project is None or project.attributes is None:
        return None
    value = getattr(project.attributes, name)
    return value if isinstance(value, str) else None
