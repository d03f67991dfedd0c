"""Frozen per-project snapshots and the store the poller writes and the collector reads.

The store is the seam between the writer (poller) and the reader (collector): neither
imports the other. Every write replaces whole immutable objects under a lock, and a
reader gets one consistent `StoreView`, so a scrape never sees half a poll and never
waits for the API.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType

from exporter.errors import POLL_ERROR_REASONS
from exporter.models import Product, UsageAttributes

OTHER_PRODUCT_ID = "__other__"
ENDPOINTS = ("/billing/usage", "/projects")


def _money(cents: float | None) -> float | None:
    """The API counts in cents of the team's currency; Prometheus users want main units."""
    return None if cents is None else cents / 100.0


def _timestamp(when: datetime | None) -> float | None:
    return None if when is None else when.timestamp()


def _add(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


@dataclass(frozen=True, slots=True)
class ServerInfo:
    server_id: str
    hostname: str
    plan: str


@dataclass(frozen=True, slots=True)
class DiscountInfo:
    description: str
    #: A percent discount as a ratio (5 % → 0.05); None for other kinds.
    ratio: float | None
    #: A fixed-amount discount in main currency units; None for percent discounts.
    amount: float | None


@dataclass(frozen=True, slots=True)
class ProductUsage:
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
    discounts: tuple[DiscountInfo, ...] = ()
    servers: tuple[ServerInfo, ...] = ()

    @property
    def identity(self) -> tuple[str, ...]:
        """The label values that make this product line's series unique."""
        return (self.product_id, self.name, self.resource, self.unit, self.usage_type,
                self.plan, self.hostname)


@dataclass(frozen=True, slots=True)
class UsageSnapshot:
    """One successful poll of one project, in main currency units."""

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


@dataclass(frozen=True, slots=True)
class ProjectStatus:
    project_id: str
    #: The last good usage; kept through failed polls so a blip never blanks a dashboard.
    usage: UsageSnapshot | None = None
    up: bool = False
    polled: bool = False
    last_success: float | None = None
    poll_duration: float | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class StoreView:
    """Everything one scrape renders, read in one go."""

    projects: tuple[ProjectStatus, ...]
    poll_errors: Mapping[tuple[str, str], int]
    discovery_errors: Mapping[str, int]
    api_requests: Mapping[tuple[str, str], int]
    effective_interval: float | None
    last_refresh_duration: float | None
    #: Changes when billing data changes (a successful poll, projects come or go).
    data_version: int
    #: Changes on every write, counters included.
    version: int

    @property
    def ready(self) -> bool:
        """Every known project polled at least once (and at least one project known)."""
        return bool(self.projects) and all(p.polled for p in self.projects)


@dataclass(slots=True)
class _State:
    projects: dict[str, ProjectStatus] = field(default_factory=dict)
    poll_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    discovery_errors: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(POLL_ERROR_REASONS, 0)
    )
    api_requests: dict[tuple[str, str], int] = field(
        default_factory=lambda: {(endpoint, "200"): 0 for endpoint in ENDPOINTS}
    )
    effective_interval: float | None = None
    last_refresh_duration: float | None = None


class SnapshotStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _State()
        self._data_version = 0
        self._version = 0
        self._view: StoreView | None = None

    def set_projects(self, project_ids: Iterable[str]) -> None:
        """Track exactly these projects: new ones appear unpolled, gone ones vanish."""
        wanted = list(dict.fromkeys(project_ids))
        with self._lock:
            state = self._state
            if list(state.projects) == wanted:
                return
            state.projects = {
                pid: state.projects.get(pid) or ProjectStatus(pid) for pid in wanted
            }
            keep = set(wanted)
            state.poll_errors = {k: v for k, v in state.poll_errors.items() if k[0] in keep}
            for pid in wanted:
                for reason in POLL_ERROR_REASONS:
                    state.poll_errors.setdefault((pid, reason), 0)
            self._changed(data=True)

    def record_success(
        self, usage: UsageSnapshot, *, duration: float, now: float
    ) -> None:
        with self._lock:
            if usage.project_id not in self._state.projects:
                return  # dropped from discovery while its poll ran
            self._state.projects[usage.project_id] = ProjectStatus(
                usage.project_id, usage=usage, up=True, polled=True,
                last_success=now, poll_duration=duration,
            )
            self._changed(data=True)

    def record_failure(self, project_id: str, reason: str, *, duration: float) -> None:
        with self._lock:
            previous = self._state.projects.get(project_id)
            if previous is None:
                return
            self._state.projects[project_id] = replace(
                previous, up=False, polled=True, poll_duration=duration, last_error=reason
            )
            key = (project_id, reason)
            self._state.poll_errors[key] = self._state.poll_errors.get(key, 0) + 1
            self._changed(data=False)

    def record_discovery_failure(self, reason: str) -> None:
        with self._lock:
            errors = self._state.discovery_errors
            errors[reason] = errors.get(reason, 0) + 1
            self._changed(data=False)

    def record_request(self, endpoint: str, code: str) -> None:
        with self._lock:
            key = (endpoint, code)
            self._state.api_requests[key] = self._state.api_requests.get(key, 0) + 1
            self._changed(data=False)

    def record_refresh(self, *, duration: float | None, effective_interval: float) -> None:
        with self._lock:
            if duration is not None:
                self._state.last_refresh_duration = duration
            self._state.effective_interval = effective_interval
            self._changed(data=False)

    def view(self) -> StoreView:
        with self._lock:
            if self._view is None:
                state = self._state
                self._view = StoreView(
                    projects=tuple(state.projects.values()),
                    poll_errors=MappingProxyType(dict(state.poll_errors)),
                    discovery_errors=MappingProxyType(dict(state.discovery_errors)),
                    api_requests=MappingProxyType(dict(state.api_requests)),
                    effective_interval=state.effective_interval,
                    last_refresh_duration=state.last_refresh_duration,
                    data_version=self._data_version,
                    version=self._version,
                )
            return self._view

    def _changed(self, *, data: bool) -> None:
        self._version += 1
        if data:
            self._data_version += 1
        self._view = None


def build_usage(
    project_id: str,
    attributes: UsageAttributes,
    *,
    currency: str,
    max_products: int,
    slug: str | None = None,
    name: str | None = None,
) -> UsageSnapshot:
    """Turn one parsed answer into a snapshot; the cardinality guard lives here."""
    ref = attributes.project
    start = _timestamp(attributes.period.start) if attributes.period else None
    end = _timestamp(attributes.period.end) if attributes.period else None
    if start is not None and end is not None and start > end:
        start = end = None  # an inverted period would make every projection nonsense
    merged = _merge_duplicates(_product_usage(p) for p in attributes.products)
    products, folded = _fold_cheapest(merged, max_products)
    return UsageSnapshot(
        project_id=project_id,
        project_slug=(ref.slug if ref and ref.slug else None) or slug or "",
        project_name=(ref.name if ref and ref.name else None) or name or "",
        currency=currency,
        price=_money(attributes.price),
        amount=_money(attributes.amount),
        available_credit_balance=_money(attributes.available_credit_balance),
        threshold=_money(attributes.threshold),
        period_start=start,
        period_end=end,
        products=products,
        products_folded=folded,
    )


def _product_usage(product: Product) -> ProductUsage:
    servers = product.metadata.all_servers() if product.metadata else []
    infos = tuple(dict.fromkeys(
        ServerInfo(s.id or "", s.hostname or "", s.plan or "") for s in servers
    ))
    plans = {info.plan for info in infos}
    discounts = []
    for discount in product.discounts:
        kind = (discount.type or "").lower()
        discounts.append(DiscountInfo(
            description=discount.description or "",
            ratio=discount.value / 100.0 if kind == "percent" and discount.value is not None
            else None,
            amount=_money(discount.value) if kind != "percent" else None,
        ))
    return ProductUsage(
        product_id=product.id or "",
        name=product.name or product.description or "",
        resource=product.resource or "",
        unit=product.unit or "",
        usage_type=product.usage_type or "",
        plan=plans.pop() if len(plans) == 1 else "",
        hostname=infos[0].hostname if len(infos) == 1 else "",
        price=_money(product.price),
        amount=_money(product.amount),
        price_without_discount=_money(product.amount_without_discount),
        unit_price=_money(product.unit_price),
        quantity=product.quantity,
        discounts=tuple(discounts),
        servers=infos,
    )


def _merge_duplicates(products: Iterable[ProductUsage]) -> list[ProductUsage]:
    """Two lines with the same labels would be a duplicate series: add them up."""
    merged: dict[tuple[str, ...], ProductUsage] = {}
    for product in products:
        seen = merged.get(product.identity)
        if seen is None:
            merged[product.identity] = product
            continue
        merged[product.identity] = replace(
            seen,
            price=_add(seen.price, product.price),
            amount=_add(seen.amount, product.amount),
            price_without_discount=_add(seen.price_without_discount,
                                        product.price_without_discount),
            quantity=_add(seen.quantity, product.quantity),
            discounts=seen.discounts + product.discounts,
            servers=tuple(dict.fromkeys(seen.servers + product.servers)),
        )
    return list(merged.values())


def _fold_cheapest(
    products: list[ProductUsage], limit: int
) -> tuple[tuple[ProductUsage, ...], int]:
    if len(products) <= limit:
        return tuple(products), 0
    ranked = sorted(products, key=lambda p: p.price or 0.0, reverse=True)
    kept, rest = ranked[:limit], ranked[limit:]
    other = ProductUsage(
        product_id=OTHER_PRODUCT_ID, name="other", resource="", unit="", usage_type="",
        plan="", hostname="",
        price=_sum(p.price for p in rest),
        amount=_sum(p.amount for p in rest),
        price_without_discount=_sum(p.price_without_discount for p in rest),
        unit_price=None,
        quantity=None,  # units differ across products: a sum would mean nothing
    )
    return (*kept, other), len(rest)


def _sum(values: Iterable[float | None]) -> float | None:
    total: float | None = None
    for value in values:
        total = _add(total, value)
    return total
