"""Budgets set against the spend: how much of each is spent, what the run rate takes it
to by the period's end, and when it runs out at that rate.

A budget (`budgets` in the config) is an amount a team, one of its projects or one of
its tags may spend per billing period, in the team's currency:

- a project's spend is its `price`; a project is named by its id or its slug;
- a tag's is what the team's servers carrying it cost (`latitudesh_billing_tag_price`),
  summed over the team's projects;
- a team's is the sum of its projects' prices.

Only projects billed in the team's currency count (a sum of two currencies means
nothing). The run rate is the same sum of what runs now (`forecast.py`), so the
projection and the run-out time move as soon as a server is added or deleted, not a
day later as a derivative would. Pure: reads a `StoreView`, no clock (times are those
of the polls), so every scrape of one view says the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from exporter.config import DEFAULT_TEAM, Settings
from exporter.snapshot import Budget, ProjectStatus, StoreView, UsageSnapshot

SECONDS_PER_HOUR = 3600.0
#: Seconds between two looks for budgets that name nothing (`UnknownScopes`).
CHECK_SECONDS = 10.0

log = logging.getLogger("exporter")


def from_settings(settings: Settings) -> tuple[Budget, ...]:
    """The config's budgets, each for its team's key (the only team's when none is
    named: the config checked that there is one)."""
    only = settings.teams[0].name if settings.teams else DEFAULT_TEAM
    return tuple(
        Budget(
            team=budget.team if budget.team is not None else only,
            amount=budget.amount,
            levels=budget.levels,
            scope=budget.scope[0],
            target=budget.scope[1],
        )
        for budget in settings.budgets
    )


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One budget against the spend, as the polls last saw it."""

    budget: Budget
    #: The team's `team` label now (its name, or its key before discovery names it).
    team: str
    currency: str
    #: A project budget's project: its id once seen (else the id or slug configured).
    project_id: str
    #: Whether the scope names something the team has: the team, a project of it, or a
    #: tag one of its servers carries (an unknown one has no spend, and says so).
    found: bool
    spent: float | None = None
    #: The spend at the period's end if what runs now keeps running.
    projected: float | None = None
    period_end: float | None = None
    #: Unix time at which the run rate spends the rest of the amount; None when nothing
    #: runs, or the amount is already spent.
    run_out: float | None = None

    @property
    def spent_ratio(self) -> float | None:
        return None if self.spent is None else self.spent / self.budget.amount

    @property
    def projected_ratio(self) -> float | None:
        return None if self.projected is None else self.projected / self.budget.amount

    @property
    def tag(self) -> str:
        return self.budget.target if self.budget.scope == "tag" else ""

    @property
    def levels(self) -> tuple[tuple[str, float], ...]:
        """Each level as its label (`75`, `12.5`) and its share of the amount."""
        return tuple((f"{level:g}", level / 100.0) for level in self.budget.levels)


def assess(view: StoreView) -> tuple[BudgetStatus, ...]:
    """Every budget of the view against its scope's spend."""
    if not view.budgets:
        return ()
    teams = {team.key: team for team in view.teams}
    statuses = []
    spends: dict[str, _TeamSpend] = {}
    for budget in view.budgets:
        team = teams.get(budget.team)
        if team is None:  # not added yet (the config names only teams it has)
            statuses.append(BudgetStatus(budget, budget.team, "", _target_id(budget), False))
            continue
        spend = spends.get(team.name)
        if spend is None:
            spend = spends[team.name] = _TeamSpend.of(team.name, team.currency, view.projects)
        statuses.append(spend.assess(budget))
    return tuple(statuses)


@dataclass(frozen=True, slots=True)
class _Part:
    """One project's share of a scope's spend."""

    spent: float
    rate: float | None
    period_end: float | None
    at: float | None


@dataclass(frozen=True, slots=True)
class _TeamSpend:
    """A team's spend read once a view, however many budgets it has: each budget is
    then a lookup. A scrape renders the budgets: 982 budgets over 1,000 projects take
    16 ms here (a pass over every project for each budget would be a million steps)."""

    team: str
    currency: str
    #: Project id or slug → its project id.
    ids: dict[str, str]
    #: Project id → its part, for projects billed in the team's currency.
    projects: dict[str, _Part]
    #: Tag → its parts across the team's projects billed in its currency.
    tags: dict[str, list[_Part]]

    @classmethod
    def of(cls, team: str, currency: str, projects: Sequence[ProjectStatus]) -> _TeamSpend:
        mine = [p for p in projects if p.team == team]
        currency = currency or next((p.usage.currency for p in mine if p.usage), "")
        ids: dict[str, str] = {}
        parts: dict[str, _Part] = {}
        tags: dict[str, list[_Part]] = {}
        for status in mine:
            ids.setdefault(status.project_id, status.project_id)
            if status.project_slug:
                ids.setdefault(status.project_slug, status.project_id)
            usage = status.usage
            if usage is None or usage.currency != currency:
                continue
            parts[status.project_id] = _project_part(status, usage)
            for tag in usage.tags:
                tags.setdefault(tag.tag, []).append(
                    _Part(tag.price, tag.rate, usage.period_end, status.last_success)
                )
        return cls(team, currency, ids, parts, tags)

    def assess(self, budget: Budget) -> BudgetStatus:
        project_id = _target_id(budget)
        if budget.scope == "project":
            found = budget.target in self.ids
            project_id = self.ids.get(budget.target, project_id)
            part = self.projects.get(project_id)
            parts = [part] if part is not None else []
        elif budget.scope == "tag":
            parts = self.tags.get(budget.target, [])
            found = bool(parts)
        else:
            parts = list(self.projects.values())
            found = True
        return _status(budget, (self.team, self.currency, project_id), found, parts)


def _status(
    budget: Budget, names: tuple[str, str, str], found: bool, parts: list[_Part]
) -> BudgetStatus:
    """The budget against its parts; `names`: its team, currency and project id."""
    team, currency, project_id = names
    if not parts:  # nothing polled yet in the scope: no figure rather than a false 0
        return BudgetStatus(budget, team, currency, project_id, found)
    spent = sum(part.spent for part in parts)
    rates = [part.rate for part in parts if part.rate is not None]
    rate = sum(rates) if rates else None
    period_end = _latest(part.period_end for part in parts)
    at = _latest(part.at for part in parts)
    projected = run_out = None
    if rate is not None and period_end is not None and at is not None:
        projected = spent + rate * max(0.0, period_end - at) / SECONDS_PER_HOUR
        if rate > 0 and spent < budget.amount:
            run_out = at + (budget.amount - spent) / rate * SECONDS_PER_HOUR
    return BudgetStatus(
        budget,
        team,
        currency,
        project_id,
        found,
        spent=spent,
        projected=projected,
        period_end=period_end,
        run_out=run_out,
    )


def _project_part(status: ProjectStatus, usage: UsageSnapshot) -> _Part:
    return _Part(usage.price or 0.0, usage.run_rate, usage.period_end, status.last_success)


def _target_id(budget: Budget) -> str:
    return budget.target if budget.scope == "project" else ""


def _latest(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return max(known) if known else None


class UnknownScopes:
    """Tells, in one warning line each, of a budget whose project or tag its team does
    not have, once the team has something to measure (its first refresh was attempted,
    or its projects came from the state): a discovered project or a tag cannot be
    checked at start. Warned again only after the scope was found and was lost again.

    Parameters:
        view: the store's view (read each `check`).
        warned: budgets already told of (at start, by the config's check).
    """

    def __init__(self, view: Callable[[], StoreView], warned: Iterable[Budget] = ()) -> None:
        self._view = view
        self._warned: set[Budget] = set(warned)

    def check(self) -> None:
        view = self._view()
        ready = {team.name for team in view.teams if team.refreshed or team.restored}
        for status in assess(view):
            budget = status.budget
            if status.found:
                self._warned.discard(budget)
            elif status.team in ready and budget not in self._warned:
                self._warned.add(budget)
                log.warning(
                    f"a budget names a {budget.scope} its team does not have: nothing to measure",
                    extra={"team": status.team, budget.scope: budget.target},
                )
