"""The frozen rows of one project's usage and of the exporter's own status; the views.

A snapshot is everything one successful poll says about a project, already in the
shape the metrics need: money in main units, duplicate lines merged, every family's
rows unique, cardinality folded, spend allocated to servers and tags (built by
`usage.py`). The collector, the exposition and the status page only render these
rows; nothing downstream merges or deduplicates again. Every row is immutable, so a
reader holding a `StoreView` holds one consistent moment.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from exporter.curve import Curve
from exporter.errors import POLL_ERROR_REASONS
from exporter.models import ENDPOINTS

_Row = TypeVar("_Row")


OTHER = "__other__"
UNTAGGED = "__untagged__"
UNATTRIBUTED = "__unattributed__"
#: Label values are cut here: a hostname of megabytes would be repeated on every series.
MAX_LABEL_CHARS = 512


def label(value: str | None) -> str:
    """A label value: never None, bounded, and stored once however often it repeats."""
    if not value:
        return ""
    return sys.intern(value[:MAX_LABEL_CHARS])


#: The prefix of the exporter's own label values (`__other__`, `__untagged__`, ...).
MARKER = "__"


def api_label(value: str | None) -> str:
    """A label value from the API where the exporter's markers also go (product and
    server ids, tags). One that starts with `__` gets one more `_` in front, so that
    no value from the API can ever equal a marker: a real tag named `__untagged__`
    is exported as `___untagged__`, never merged with the untagged spend."""
    text = label(value)
    return sys.intern("_" + text) if text.startswith(MARKER) else text


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
    #: The API's `unit_amount` ("the unit amount of the product in cents").
    unit_amount: float | None = None

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
    """A tag's share of a project's spend (each server's share counted under each of
    its tags), and of its run rate: what the tagged servers' running lines cost an
    hour (None when no line of the project has a rate)."""

    tag: str
    price: float
    rate: float | None = None


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
    #: Discounts whose `type` is neither `percent` nor `amount`: not read as money.
    discounts_unknown: int = 0
    buckets: tuple[BucketInfo, ...] = ()
    divisors: tuple[UnitDivisor, ...] = ()
    servers: tuple[ServerSpend, ...] = ()
    servers_folded: int = 0
    tags_folded: int = 0
    tags: tuple[TagSpend, ...] = ()
    #: What the lines running when the answer came cost per hour (`forecast.py`); None
    #: when no line has a rate (then only a linear projection is possible).
    run_rate: float | None = None
    #: The price so far plus the run rate over the hours left in the period.
    projected_price: float | None = None

    # The two row kinds below are derived when read (once per poll, by the exposition)
    # rather than stored: at a large account they were a quarter of the store.

    @property
    def product_servers(self) -> tuple[ProductServer, ...]:
        """Each server behind each product line (`..._product_server_info`)."""
        return unique(
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
class ClosedPeriod:
    """A project's last closed billing period: the figures of the last answer seen in
    it, and when that answer was received (how close to the period's end it was).
    Only what its series need: the products stay with the answer in the state file.

    The server shares are kept column by column (`servers` makes the rows when the
    series are rendered, once per poll of the project): every project holds one for
    as long as the exporter runs, and as rows they were most of what closed periods
    cost. Measured with tracemalloc (Python 3.11, 1,000 projects of 50 servers):
    8.9 MB as `ServerSpend` rows, 3.4 MB as columns, the tags of equal servers shared;
    issue 32's target: RSS within 10 % of a warm start without closed periods
    (benchmark section 16)."""

    project_id: str
    project_slug: str
    currency: str
    price: float | None
    period_start: float | None
    period_end: float | None
    observed_at: float
    tags: tuple[TagSpend, ...] = ()
    server_ids: tuple[str, ...] = ()
    server_hostnames: tuple[str, ...] = ()
    server_plans: tuple[str, ...] = ()
    #: Each server's tags (equal tuples shared).
    server_tags: tuple[tuple[str, ...], ...] = ()
    #: Each server's price, little-endian float64s.
    server_prices: bytes = b""

    @property
    def servers(self) -> tuple[ServerSpend, ...]:
        """Each server's share of the period's price, as `UsageSnapshot.servers`."""
        prices = struct.unpack(f"<{len(self.server_ids)}d", self.server_prices)
        return tuple(
            map(
                ServerSpend,
                self.server_ids,
                self.server_hostnames,
                self.server_plans,
                prices,
                self.server_tags,
            )
        )

    @classmethod
    def of(cls, usage: UsageSnapshot, observed_at: float) -> ClosedPeriod:
        return cls.with_servers(
            project_id=usage.project_id,
            project_slug=usage.project_slug,
            currency=usage.currency,
            price=usage.price,
            period_start=usage.period_start,
            period_end=usage.period_end,
            observed_at=observed_at,
            tags=tuple(TagSpend(t.tag, t.price) for t in usage.tags),  # no rate: closed
            servers=usage.servers,
        )

    @classmethod
    def with_servers(
        cls,
        *,
        project_id: str,
        project_slug: str,
        currency: str,
        price: float | None,
        period_start: float | None,
        period_end: float | None,
        observed_at: float,
        tags: tuple[TagSpend, ...],
        servers: Iterable[ServerSpend],
    ) -> ClosedPeriod:
        """A closed period whose server shares are `servers`, stored as columns."""
        rows = tuple(servers)
        shared: dict[tuple[str, ...], tuple[str, ...]] = {}
        return cls(
            project_id,
            project_slug,
            currency,
            price,
            period_start,
            period_end,
            observed_at,
            tags,
            tuple(s.server_id for s in rows),
            tuple(s.hostname for s in rows),
            tuple(s.plan for s in rows),
            tuple(shared.setdefault(s.tags, s.tags) for s in rows),
            struct.pack(f"<{len(rows)}d", *(s.price for s in rows)),
        )

    def encode(self) -> bytes:
        """These figures as the state file keeps them beside the answer they came from:
        a warm start reads them back without parsing and allocating the answer again
        (1,000 closed periods of 50 products: 3 s of a warm start, benchmark section 16)."""
        return json.dumps(
            [
                self.project_id,
                self.project_slug,
                self.currency,
                self.price,
                self.period_start,
                self.period_end,
                self.observed_at,
                [[s.server_id, s.hostname, s.plan, s.price, list(s.tags)] for s in self.servers],
                [[t.tag, t.price] for t in self.tags],
            ],
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> ClosedPeriod | None:
        """`encode`'s figures back, or None when they do not read as such (then the
        stored answer itself is read again)."""
        try:
            pid, slug, currency, price, start, end, seen, servers, tags = json.loads(data)
            return cls.with_servers(
                project_id=label(pid),
                project_slug=label(slug),
                currency=label(currency),
                price=_number(price),
                period_start=_number(start),
                period_end=_number(end),
                observed_at=_finite(seen),
                tags=tuple(TagSpend(label(t), _finite(v)) for t, v in tags),
                servers=(
                    ServerSpend(label(i), label(h), label(p), _finite(v), tuple(map(label, t)))
                    for i, h, p, v, t in servers
                ),
            )
        except (ValueError, TypeError):
            return None


def _finite(value: object) -> float:
    """A number read back from a file: finite, or ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return float(value)


def _number(value: object) -> float | None:
    return None if value is None else _finite(value)


def closes(old: UsageSnapshot | None, new: UsageSnapshot) -> bool:
    """Whether `new` is an answer of a later period than `old` (its start moved on)."""
    return (
        old is not None
        and old.period_start is not None
        and new.period_start is not None
        and new.period_start > old.period_start
    )


@dataclass(frozen=True, slots=True)
class ProjectStatus:
    project_id: str
    team: str
    #: The last good usage; kept through failed polls so a blip never blanks a dashboard.
    usage: UsageSnapshot | None = None
    #: The last period that closed while the exporter (or its state file) watched.
    previous_period: ClosedPeriod | None = None
    #: The current period's spend as polls saw it (`curve.py`): a new curve with each
    #: point added, never one changed in place.
    curve: Curve | None = None
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
class TeamProblem:
    """What is wrong with a team now, for people: the status page says it in words."""

    #: The latest failure's reason (one of `errors.POLL_ERROR_REASONS`).
    reason: str
    #: Unix time of the first failure with this reason since the team was last healthy.
    since: float
    #: Unix time of the latest.
    last: float


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
    #: Projects were served from the state at start (a warm start): already something
    #: true to serve, before any refresh.
    restored: bool = False
    currency: str = ""
    #: Unix time of the last /projects discovery that succeeded.
    discovery_success: float | None = None
    #: The watchdog found the team's refresh late; cleared when the next one starts.
    stalled: bool = False
    #: Times the watchdog restarted the team's schedule.
    restarts: int = 0
    #: Project ids the last discovery refused (longer than `MAX_ID_CHARS`).
    refused_ids: int = 0
    #: Where the team's key comes from, in words (`TokenSource.origin`), for hints.
    key_origin: str = ""
    #: Set by a failed poll, discovery or stall; cleared by a refresh where discovery
    #: (if needed) and every poll succeeded.
    problem: TeamProblem | None = None
    #: The team's key, for good: its configured name, or `default` (`name` may become
    #: its slug from /projects). What a budget names.
    key: str = ""


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    """The last load of the files SIGHUP reloads (the web config), as Prometheus and
    Alertmanager export theirs: a refused reload keeps the previous settings, and must
    show."""

    successful: bool = True
    #: Unix time of the last successful load; the start counts as one.
    last_success: float | None = None


@dataclass(frozen=True, slots=True)
class StateStatus:
    """The state backend (`exporter.state`): off, or in use, or refused and in memory."""

    enabled: bool = False
    #: Writing to its file (False: memory only, after a failure to read or write it).
    up: bool = False
    #: Failures by reason, in the order of `state.STATE_ERROR_REASONS`.
    errors: tuple[int, ...] = ()
    #: Kept answers that no longer read, left out of the finance files (one a download).
    skipped_in_downloads: int = 0


@dataclass(frozen=True, slots=True)
class Budget:
    """What a team, one of its projects or one of its tags may spend per billing period
    (`budgets` in the config), in the team's currency, and the shares of it (percent)
    at which to warn. `budgets.assess` sets it against the spend."""

    #: The team's key (`TeamStatus.key`).
    team: str
    amount: float
    levels: tuple[float, ...]
    #: "team", "project" or "tag".
    scope: str = "team"
    #: The project's id or slug, or the tag; "" for a team's budget.
    target: str = ""


@dataclass(frozen=True, slots=True)
class StoreView:
    """Everything one scrape renders, read in one go."""

    projects: tuple[ProjectStatus, ...]
    teams: tuple[TeamStatus, ...]
    #: Changes on every write.
    version: int
    reload: ReloadStatus = ReloadStatus()
    state: StateStatus = StateStatus()
    budgets: tuple[Budget, ...] = ()

    @property
    def ready(self) -> bool:
        """Serving, every team's first refresh attempted (failed or not: a failing API
        must not hide the exporter and its error metrics from Prometheus) or its
        projects served from the state (a warm start: a hanging API must not hide what
        the exporter already knows), and no team's schedule stalled."""
        return self.not_ready is None

    @property
    def not_ready(self) -> str | None:
        """Why the exporter is not ready, in words for `/readyz`; None when it is."""
        if not self.teams:
            return "no team is configured yet"
        waiting = [team.name for team in self.teams if not (team.refreshed or team.restored)]
        if waiting:
            return f"the first refresh has not been attempted yet (teams: {', '.join(waiting)})"
        stalled = [team.name for team in self.teams if team.stalled]
        if stalled:
            return f"polling stalled and is being restarted (teams: {', '.join(stalled)})"
        return None


def unique(rows: Iterable[_Row]) -> tuple[_Row, ...]:
    """The rows in their first order, each once."""
    return tuple(dict.fromkeys(rows))
