"""Frozen per-project snapshots and the store the poller writes and the renderers read.

A snapshot is everything one successful poll says about a project, already in the
shape the metrics need: money in main units, duplicate lines merged, every family's
rows unique, cardinality folded, spend allocated to servers and tags. The collector and
the exposition only render it; nothing downstream merges or deduplicates again.

The store is the seam between the writer (poller) and the readers (collector,
exposition, status page): neither side imports the other. Every write replaces whole
immutable objects under a lock and tells the listeners (the exposition renders a
project's lines there, once per poll); a reader gets one consistent `StoreView`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from exporter.errors import POLL_ERROR_REASONS
from exporter.models import Product, UsageAttributes

_Row = TypeVar("_Row")

OTHER = "__other__"
UNTAGGED = "__untagged__"
UNATTRIBUTED = "__unattributed__"
ENDPOINTS = ("/billing/usage", "/projects")
DEFAULT_TEAM = "default"
#: Label values are cut here: a hostname of megabytes would be repeated on every series.
MAX_LABEL_CHARS = 512


def _money(cents: float | None) -> float | None:
    """The API counts in cents of the team's currency; Prometheus users want main units."""
    return None if cents is None else cents / 100.0


def _timestamp(when: datetime | None) -> float | None:
    if when is None:
        return None
    if when.tzinfo is None:  # every documented example carries +00:00
        when = when.replace(tzinfo=UTC)
    try:
        return when.timestamp()
    except (OverflowError, ValueError, OSError):  # year 1 or 9999 at the edge of the epoch
        return None


def _add(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def label(value: str | None) -> str:
    """A label value: never None, bounded, and stored once however often it repeats."""
    if not value:
        return ""
    return sys.intern(value[:MAX_LABEL_CHARS])


@dataclass(frozen=True, slots=True)
class ServerInfo:
    server_id: str
    hostname: str
    plan: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProductUsage:
    """One product line (lines with the same labels merged); money in main units."""

    product_id: str
    name: str
    resource: str
    unit: str
    usage_type: str
    plan: str
    hostname: str
    price: float | None
    amount: float | None
    price_without_discount: float | None
    unit_price: float | None
    quantity: float | None
    servers: tuple[ServerInfo, ...] = ()

    @property
    def identity(self) -> tuple[str, ...]:
        """The label values that make this product line's series unique."""
        return (
            self.product_id,
            self.name,
            self.resource,
            self.unit,
            self.usage_type,
            self.plan,
            self.hostname,
        )


@dataclass(frozen=True, slots=True)
class DiscountInfo:
    product_id: str
    description: str
    #: A percent discount as a ratio (5 % → 0.05); None for other kinds.
    ratio: float | None
    #: A fixed-amount discount in main currency units; None for percent discounts.
    amount: float | None


@dataclass(frozen=True, slots=True)
class ProductServer:
    """A server behind a product line (`latitudesh_billing_product_server_info`)."""

    product_id: str
    server_id: str
    hostname: str
    plan: str


@dataclass(frozen=True, slots=True)
class BucketInfo:
    product_id: str
    bucket_id: str
    name: str
    location: str


@dataclass(frozen=True, slots=True)
class UnitDivisor:
    product_id: str
    divisor: float


@dataclass(frozen=True, slots=True)
class ServerSpend:
    """A server's share of the spend: each line's price split evenly over its servers."""

    server_id: str
    hostname: str
    plan: str
    price: float
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServerTag:
    server_id: str
    hostname: str
    tag: str


@dataclass(frozen=True, slots=True)
class TagSpend:
    tag: str
    price: float


@dataclass(frozen=True, slots=True)
class UsageSnapshot:
    """One successful poll of one project, in main currency units, rows unique per family."""

    project_id: str
    project_slug: str
    project_name: str
    currency: str
    price: float | None
    amount: float | None
    available_credit_balance: float | None
    threshold: float | None
    period_start: float | None
    period_end: float | None
    products: tuple[ProductUsage, ...]
    products_folded: int = 0
    discounts: tuple[DiscountInfo, ...] = ()
    buckets: tuple[BucketInfo, ...] = ()
    divisors: tuple[UnitDivisor, ...] = ()
    servers: tuple[ServerSpend, ...] = ()
    servers_folded: int = 0
    tags_folded: int = 0
    tags: tuple[TagSpend, ...] = ()

    # The two row kinds below are derived when read (once per poll, by the exposition)
    # rather than stored: at a large account they were a quarter of the store.

    @property
    def product_servers(self) -> tuple[ProductServer, ...]:
        """Each server behind each product line (`..._product_server_info`)."""
        return _unique(
            ProductServer(p.product_id, s.server_id, s.hostname, s.plan)
            for p in self.products
            for s in p.servers
        )

    @property
    def server_tags(self) -> tuple[ServerTag, ...]:
        """Each tag of each named server (`latitudesh_billing_server_tag_info`)."""
        return tuple(
            ServerTag(s.server_id, s.hostname, tag)
            for s in self.servers
            if s.server_id != OTHER
            for tag in s.tags
        )


@dataclass(frozen=True, slots=True)
class ProjectStatus:
    project_id: str
    team: str = DEFAULT_TEAM
    #: The last good usage; kept through failed polls so a blip never blanks a dashboard.
    usage: UsageSnapshot | None = None
    up: bool = False
    polled: bool = False
    last_success: float | None = None
    poll_duration: float | None = None
    last_error: str | None = None
    #: Failed polls by reason, in the order of `POLL_ERROR_REASONS`.
    errors: tuple[int, ...] = (0,) * len(POLL_ERROR_REASONS)
    #: From discovery, for the status page before the first successful poll.
    slug: str = ""

    @property
    def project_slug(self) -> str:
        return self.usage.project_slug if self.usage and self.usage.project_slug else self.slug


@dataclass(frozen=True, slots=True)
class TeamStatus:
    """The exporter's own figures of one API key."""

    name: str
    discovery_errors: tuple[int, ...] = (0,) * len(POLL_ERROR_REASONS)
    #: (endpoint, code) → requests, in the order they first happened.
    api_requests: tuple[tuple[tuple[str, str], int], ...] = tuple(
        ((endpoint, "200"), 0) for endpoint in ENDPOINTS
    )
    effective_interval: float | None = None
    refresh_duration: float | None = None
    #: A first refresh has been attempted (whatever its outcome).
    refreshed: bool = False
    currency: str = ""
    #: Unix time of the last /projects discovery that succeeded.
    discovery_success: float | None = None


@dataclass(frozen=True, slots=True)
class StoreView:
    """Everything one scrape renders, read in one go."""

    projects: tuple[ProjectStatus, ...]
    teams: tuple[TeamStatus, ...]
    #: Changes on every write.
    version: int

    @property
    def ready(self) -> bool:
        """Serving, and every team's first refresh has been attempted (failed or not):
        a failing API must not hide the exporter and its error metrics from Prometheus."""
        return bool(self.teams) and all(team.refreshed for team in self.teams)


class StoreListener(Protocol):
    """Told of every change, under the store's lock, in the order they happen."""

    def project_changed(self, status: ProjectStatus) -> None: ...

    def projects_changed(self, projects: Sequence[ProjectStatus]) -> None: ...


@dataclass(slots=True)
class _Team:
    status: TeamStatus
    project_ids: list[str] = field(default_factory=list)
    requests: dict[tuple[str, str], int] = field(default_factory=dict)


class SnapshotStore:
    def __init__(self, listeners: Sequence[StoreListener] = ()) -> None:
        self._lock = threading.Lock()
        self._teams: dict[str, _Team] = {}
        self._projects: dict[str, ProjectStatus] = {}
        self._listeners = list(listeners)
        self._version = 0
        self._view: StoreView | None = None

    def subscribe(self, listener: StoreListener) -> None:
        with self._lock:
            self._listeners.append(listener)
            listener.projects_changed(tuple(self._projects.values()))

    # --- teams ----------------------------------------------------------------

    def add_team(self, name: str) -> None:
        with self._lock:
            if name not in self._teams:
                team = _Team(TeamStatus(name))
                team.requests = dict(team.status.api_requests)
                self._teams[name] = team
                self._changed()

    def rename_team(self, old: str, new: str) -> None:
        """The team's name became known (its slug, from /projects): carry its figures over."""
        with self._lock:
            if old == new or old not in self._teams or new in self._teams:
                return
            team = self._teams[old]
            team.status = replace(team.status, name=new)
            self._teams = {(new if name == old else name): t for name, t in self._teams.items()}
            for pid in team.project_ids:
                self._projects[pid] = replace(self._projects[pid], team=new)
            self._reorder()

    def set_projects(self, team: str, projects: Iterable[tuple[str, str]]) -> list[str]:
        """Track exactly these (id, slug) projects for `team`: new ones appear unpolled,
        gone ones vanish. Returns the ids taken; an id another team owns is refused."""
        with self._lock:
            owner = self._teams[team]
            wanted: dict[str, str] = {}
            for pid, slug in projects:
                current = self._projects.get(pid)
                if current is not None and current.team != team:
                    continue
                wanted.setdefault(pid, slug)
            changed = list(wanted) != owner.project_ids
            for pid, slug in wanted.items():
                current = self._projects.get(pid)
                if current is None:
                    self._projects[pid] = ProjectStatus(pid, team=team, slug=label(slug))
                    changed = True
                elif slug and current.slug != slug:
                    self._projects[pid] = replace(current, slug=label(slug))
            for pid in set(owner.project_ids) - set(wanted):
                del self._projects[pid]
            owner.project_ids = list(wanted)
            if changed:
                self._reorder()
            return list(wanted)

    # --- polls ------------------------------------------------------------------

    def record_success(self, usage: UsageSnapshot, *, duration: float, now: float) -> None:
        with self._lock:
            previous = self._projects.get(usage.project_id)
            if previous is None:
                return  # dropped from discovery while its poll ran
            self._update(
                replace(
                    previous,
                    usage=usage,
                    up=True,
                    polled=True,
                    last_success=now,
                    poll_duration=duration,
                    last_error=None,
                )
            )

    def record_failure(self, project_id: str, reason: str, *, duration: float) -> None:
        with self._lock:
            previous = self._projects.get(project_id)
            if previous is None:
                return
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

    # --- the exporter's own figures ---------------------------------------------

    def record_discovery_failure(self, team: str, reason: str) -> None:
        with self._lock:
            owner = self._teams[team]
            owner.status = replace(
                owner.status, discovery_errors=_bump(owner.status.discovery_errors, reason)
            )
            self._changed()

    def record_discovery_success(self, team: str, now: float) -> None:
        with self._lock:
            owner = self._teams[team]
            owner.status = replace(owner.status, discovery_success=now)
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
    ) -> None:
        """A refresh of `team` ended (`duration`) or starts (`duration` None)."""
        with self._lock:
            owner = self._teams[team]
            owner.status = replace(
                owner.status,
                effective_interval=effective_interval,
                refresh_duration=duration
                if duration is not None
                else owner.status.refresh_duration,
                refreshed=owner.status.refreshed or duration is not None,
                currency=currency if currency is not None else owner.status.currency,
            )
            self._changed()

    def view(self) -> StoreView:
        with self._lock:
            if self._view is None:
                self._view = StoreView(
                    projects=tuple(self._projects.values()),
                    teams=tuple(team.status for team in self._teams.values()),
                    version=self._version,
                )
            return self._view

    def _update(self, status: ProjectStatus) -> None:
        self._projects[status.project_id] = status
        self._changed()
        for listener in self._listeners:
            listener.project_changed(status)

    def _reorder(self) -> None:
        """Projects in team order, each team's in the order it listed them."""
        self._projects = {
            pid: self._projects[pid] for team in self._teams.values() for pid in team.project_ids
        }
        self._changed()
        ordered = tuple(self._projects.values())
        for listener in self._listeners:
            listener.projects_changed(ordered)

    def _changed(self) -> None:
        self._version += 1
        self._view = None


def _bump(counts: tuple[int, ...], reason: str) -> tuple[int, ...]:
    index = POLL_ERROR_REASONS.index(reason)
    return (*counts[:index], counts[index] + 1, *counts[index + 1 :])


# --- building a snapshot from one answer -----------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """Cardinality guards; what is beyond them folds into `__other__` and is counted."""

    products: int = 1000
    servers: int = 1000
    tags_per_server: int = 20


def build_usage(
    project_id: str,
    attributes: UsageAttributes,
    *,
    currency: str,
    limits: Limits = Limits(),
    slug: str | None = None,
    name: str | None = None,
) -> UsageSnapshot:
    """Turn one parsed answer into a snapshot; merging, folding and allocation live here."""
    ref = attributes.project
    start = _timestamp(attributes.period.start) if attributes.period else None
    end = _timestamp(attributes.period.end) if attributes.period else None
    if start is not None and end is not None and start > end:
        start = end = None  # an inverted period would make every projection nonsense
    lines = [_ProductLine.read(p) for p in attributes.products]
    merged = _merge_duplicates(lines)
    products, folded = _fold_cheapest(merged, limits.products)
    # Rows of folded products would name product ids no product series carries.
    kept = {p.product_id for p in products}
    allocation = _allocate(lines, limits)
    return UsageSnapshot(
        project_id=label(project_id),
        project_slug=label((ref.slug if ref else None) or slug),
        project_name=label((ref.name if ref else None) or name),
        currency=label(currency),
        price=_money(attributes.price),
        amount=_money(attributes.amount),
        available_credit_balance=_money(attributes.available_credit_balance),
        threshold=_money(attributes.threshold),
        period_start=start,
        period_end=end,
        products=products,
        products_folded=folded,
        discounts=_discounts(merged, kept),
        buckets=_unique(
            BucketInfo(line.usage.product_id, *line.bucket)
            for line in merged
            if line.bucket is not None and line.usage.product_id in kept
        ),
        divisors=_first_per_product(
            UnitDivisor(line.usage.product_id, line.divisor)
            for line in merged
            if line.divisor is not None and line.usage.product_id in kept
        ),
        servers=allocation.servers,
        servers_folded=allocation.servers_folded,
        tags_folded=allocation.tags_folded,
        tags=allocation.tags,
    )


@dataclass(frozen=True, slots=True)
class _ProductLine:
    """A product line as read, with what only the snapshot needs besides its usage."""

    usage: ProductUsage
    discounts: tuple[tuple[str, str, float | None], ...]
    bucket: tuple[str, str, str] | None
    divisor: float | None

    @classmethod
    def read(cls, product: Product) -> _ProductLine:
        metadata = product.metadata
        servers = metadata.all_servers() if metadata else []
        infos = tuple(
            dict.fromkeys(
                ServerInfo(
                    label(s.id),
                    label(s.hostname),
                    label(s.plan),
                    tuple(dict.fromkeys(label(t) for t in s.tags if t)),
                )
                for s in servers
            )
        )
        plans = {info.plan for info in infos}
        bucket = metadata.bucket if metadata else None
        divisor = metadata.billing_unit_divisor if metadata else None
        return cls(
            usage=ProductUsage(
                product_id=label(product.id),
                name=label(product.name or product.description),
                resource=label(product.resource),
                unit=label(product.unit),
                usage_type=label(product.usage_type),
                plan=plans.pop() if len(plans) == 1 else "",
                hostname=infos[0].hostname if len(infos) == 1 else "",
                price=_money(product.price),
                amount=_money(product.amount),
                price_without_discount=_money(product.amount_without_discount),
                unit_price=_money(product.unit_price),
                quantity=product.quantity,
                servers=infos,
            ),
            discounts=tuple(
                (label(d.description), (d.type or "").lower(), d.value) for d in product.discounts
            ),
            bucket=(label(bucket.id), label(bucket.name), label(bucket.location))
            if bucket is not None and (bucket.id or bucket.name)
            else None,
            divisor=divisor if divisor is not None and divisor > 0 else None,
        )


def _merge_duplicates(lines: Iterable[_ProductLine]) -> list[_ProductLine]:
    """Two lines with the same labels would be a duplicate series: add them up."""
    merged: dict[tuple[str, ...], _ProductLine] = {}
    for line in lines:
        key = line.usage.identity
        seen = merged.get(key)
        if seen is None:
            merged[key] = line
            continue
        a, b = seen.usage, line.usage
        merged[key] = replace(
            seen,
            usage=replace(
                a,
                price=_add(a.price, b.price),
                amount=_add(a.amount, b.amount),
                price_without_discount=_add(a.price_without_discount, b.price_without_discount),
                quantity=_add(a.quantity, b.quantity),
                servers=tuple(dict.fromkeys(a.servers + b.servers)),
            ),
            discounts=seen.discounts + line.discounts,
            bucket=seen.bucket or line.bucket,
            divisor=seen.divisor if seen.divisor is not None else line.divisor,
        )
    return list(merged.values())


def _fold_cheapest(lines: list[_ProductLine], limit: int) -> tuple[tuple[ProductUsage, ...], int]:
    products = [line.usage for line in lines]
    if len(products) <= limit:
        return tuple(products), 0
    ranked = sorted(products, key=lambda p: p.price or 0.0, reverse=True)
    kept, rest = ranked[:limit], ranked[limit:]
    other = ProductUsage(
        product_id=OTHER,
        name="other",
        resource="",
        unit="",
        usage_type="",
        plan="",
        hostname="",
        price=_sum(p.price for p in rest),
        amount=_sum(p.amount for p in rest),
        price_without_discount=_sum(p.price_without_discount for p in rest),
        unit_price=None,
        quantity=None,  # units differ across products: a sum would mean nothing
    )
    return (*kept, other), len(rest)


def _discounts(lines: list[_ProductLine], kept: set[str]) -> tuple[DiscountInfo, ...]:
    """One row per (product, description): amounts add up, a percent keeps its largest."""
    rows: dict[tuple[str, str], DiscountInfo] = {}
    for line in lines:
        product_id = line.usage.product_id
        if product_id not in kept:
            continue
        for description, kind, value in line.discounts:
            percent = kind == "percent"
            ratio = value / 100.0 if percent and value is not None else None
            amount = _money(value) if not percent else None
            seen = rows.get((product_id, description))
            if seen is not None:
                ratio = (
                    max(r for r in (seen.ratio, ratio) if r is not None)
                    if (seen.ratio is not None or ratio is not None)
                    else None
                )
                amount = _add(seen.amount, amount)
            rows[(product_id, description)] = DiscountInfo(product_id, description, ratio, amount)
    return tuple(rows.values())


@dataclass(frozen=True, slots=True)
class _Allocation:
    servers: tuple[ServerSpend, ...]
    servers_folded: int
    tags_folded: int
    tags: tuple[TagSpend, ...]


@dataclass(slots=True)
class _Share:
    server: ServerInfo
    price: float
    tags: dict[str, None]


def _allocate(lines: list[_ProductLine], limits: Limits) -> _Allocation:
    """Each line's price split evenly over the servers it lists; the rest unattributed.

    Additive by construction: Σ server prices + the unattributed spend = Σ line prices.
    A listed server with neither id nor hostname cannot be named: its share is
    unattributed. Allocation reads the lines as the API gave them, before products
    fold, so folding never moves money between servers.
    """
    ranked, unattributed = _shares(lines)
    folded: list[_Share] = []
    if len(ranked) > limits.servers:
        ranked.sort(key=lambda share: share.price, reverse=True)
        ranked, folded = ranked[: limits.servers], ranked[limits.servers :]
    servers: list[ServerSpend] = []
    tags_folded = 0
    for share in ranked:
        # One line's server keeps its own tuple of tags (no copy per server in the store).
        tags = share.server.tags if len(share.tags) == len(share.server.tags) else tuple(share.tags)
        if len(tags) > limits.tags_per_server:
            tags_folded += len(tags) - limits.tags_per_server
            tags = (*tags[: limits.tags_per_server], OTHER)
        info = share.server
        servers.append(
            ServerSpend(info.server_id, info.hostname, info.plan, _round(share.price), tags)
        )
    if folded:
        servers.append(ServerSpend(OTHER, "", "", _round(sum(s.price for s in folded)), (OTHER,)))
    by_tag: dict[str, float] = {UNATTRIBUTED: unattributed, UNTAGGED: 0.0}
    for server in servers:
        for tag in server.tags or (UNTAGGED,):
            by_tag[tag] = by_tag.get(tag, 0.0) + server.price
    return _Allocation(
        servers=tuple(servers),
        servers_folded=len(folded),
        tags_folded=tags_folded,
        tags=tuple(TagSpend(tag, _round(price)) for tag, price in sorted(by_tag.items())),
    )


def _shares(lines: list[_ProductLine]) -> tuple[list[_Share], float]:
    """Each named server's summed share, in order of appearance, and what no server
    can be given."""
    shares: dict[str, _Share] = {}
    unattributed = 0.0
    for line in lines:
        price = line.usage.price
        servers = line.usage.servers
        if price is None:
            continue
        if not servers:
            unattributed += price
            continue
        each = price / len(servers)
        for server in servers:
            if not (server.server_id or server.hostname):
                unattributed += each
                continue
            key = server.server_id or f"\0{server.hostname}"
            share = shares.get(key)
            if share is None:
                shares[key] = _Share(server, each, dict.fromkeys(server.tags))
            else:
                share.price += each
                share.tags.update(dict.fromkeys(server.tags))
    return list(shares.values()), unattributed


def _round(money: float) -> float:
    """Shares of a split price: a millionth of a unit is far below a cent, and without
    it 34.56 / 3 reads 11.520000000000001."""
    return round(money, 6)


def _unique(rows: Iterable[_Row]) -> tuple[_Row, ...]:
    return tuple(dict.fromkeys(rows))


def _first_per_product(rows: Iterable[UnitDivisor]) -> tuple[UnitDivisor, ...]:
    found: dict[str, UnitDivisor] = {}
    for row in rows:
        found.setdefault(row.product_id, row)
    return tuple(found.values())


def _sum(values: Iterable[float | None]) -> float | None:
    total: float | None = None
    for value in values:
        total = _add(total, value)
    return total
