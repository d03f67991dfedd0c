"""The metric table, and the prometheus_client Collectors that render it from the store.

Every metric is one `Family` row below: its name, help, labels, the rows of a project
(or of a team) it reads and how to get a value from a row. `collect()` loops over the
table; so does the exposition module, which formats each project's lines once when its
poll lands and is held byte-identical to these Collectors by the golden tests.

Families are built fresh from one `StoreView`, so a product that disappears from the
API disappears from /metrics by construction, with no purge code to get wrong.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.budgets import BudgetStatus, assess
from exporter.errors import POLL_ERROR_REASONS
from exporter.models import MAX_ID_CHARS
from exporter.snapshot import (
    BucketInfo,
    ClosedPeriod,
    DiscountInfo,
    ProductServer,
    ProductUsage,
    ProjectStatus,
    ReloadStatus,
    ServerSpend,
    ServerTag,
    StateStatus,
    StoreView,
    TagSpend,
    TeamStatus,
    UnitDivisor,
    UsageSnapshot,
)
from exporter.state import STATE_ERROR_REASONS

ViewSource = Callable[[], StoreView]
R = TypeVar("R")
In = TypeVar("In")

_FROM_POLL = "From the last successful poll of the Latitude.sh API, not from this scrape."
_MONEY = f"In main units of `currency` (the API's cents / 100). {_FROM_POLL}"
_CLOSED = "Kept in the state file across restarts. In main units of `currency` where money."
#: For the fields whose unit the spec does not state.
_ASSUMED = (
    "The spec states no unit for this field: read as cents like `price` (an assumption). " + _MONEY
)

PROJECT = ("project_id", "project_slug")
PROJECT_MONEY = (*PROJECT, "currency")
PRODUCT = (
    *PROJECT,
    "product_id",
    "product_name",
    "resource",
    "unit",
    "usage_type",
    "plan",
    "hostname",
)
PRODUCT_MONEY = (*PROJECT_MONEY, *PRODUCT[2:])


@dataclass(frozen=True, slots=True)
class Rows(Generic[In, R]):
    """Which rows of one input (a project's status, a team's) a family reads, and
    every label such a row can give; a family picks the labels it names."""

    of: Callable[[In], Sequence[R]]
    labels: Callable[[In, R], dict[str, str]]


@dataclass(frozen=True, slots=True)
class Family(Generic[In, R]):
    name: str
    help: str
    labels: tuple[str, ...]
    rows: Rows[In, R]
    value: Callable[[R], float | None]
    type: str = "gauge"

    @property
    def family_name(self) -> str:
        """The name prometheus_client's families take: counters without `_total`."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name


def _usage(status: ProjectStatus) -> Sequence[UsageSnapshot]:
    return (status.usage,) if status.usage is not None else ()


def _project_labels(usage: UsageSnapshot) -> dict[str, str]:
    return {
        "project_id": usage.project_id,
        "project_slug": usage.project_slug,
        "currency": usage.currency,
    }


def _of_usage(
    rows: Callable[[UsageSnapshot], Sequence[R]],
) -> Callable[[ProjectStatus], Sequence[R]]:
    return lambda status: rows(status.usage) if status.usage is not None else ()


def _with_project(
    labels: Callable[[R], dict[str, str]],
) -> Callable[[ProjectStatus, R], dict[str, str]]:
    def both(status: ProjectStatus, row: R) -> dict[str, str]:
        assert status.usage is not None
        return {**_project_labels(status.usage), **labels(row)}

    return both


USAGE: Rows[ProjectStatus, UsageSnapshot] = Rows(
    of=_usage,
    labels=lambda status, usage: {
        **_project_labels(usage),
        "project_name": usage.project_name,
        "team": status.team,
    },
)
PRODUCTS: Rows[ProjectStatus, ProductUsage] = Rows(
    of=_of_usage(lambda usage: usage.products),
    labels=_with_project(
        lambda p: {
            "product_id": p.product_id,
            "product_name": p.name,
            "resource": p.resource,
            "unit": p.unit,
            "usage_type": p.usage_type,
            "plan": p.plan,
            "hostname": p.hostname,
        }
    ),
)
DISCOUNTS: Rows[ProjectStatus, DiscountInfo] = Rows(
    of=_of_usage(lambda usage: usage.discounts),
    labels=_with_project(lambda d: {"product_id": d.product_id, "description": d.description}),
)
PRODUCT_SERVERS: Rows[ProjectStatus, ProductServer] = Rows(
    of=_of_usage(lambda usage: usage.product_servers),
    labels=_with_project(
        lambda s: {
            "product_id": s.product_id,
            "server_id": s.server_id,
            "hostname": s.hostname,
            "plan": s.plan,
        }
    ),
)
BUCKETS: Rows[ProjectStatus, BucketInfo] = Rows(
    of=_of_usage(lambda usage: usage.buckets),
    labels=_with_project(
        lambda b: {
            "product_id": b.product_id,
            "bucket_id": b.bucket_id,
            "bucket_name": b.name,
            "location": b.location,
        }
    ),
)
DIVISORS: Rows[ProjectStatus, UnitDivisor] = Rows(
    of=_of_usage(lambda usage: usage.divisors),
    labels=_with_project(lambda d: {"product_id": d.product_id}),
)


def _server(spend: ServerSpend) -> dict[str, str]:
    return {"server_id": spend.server_id, "hostname": spend.hostname, "plan": spend.plan}


def _tag(spend: TagSpend) -> dict[str, str]:
    return {"tag": spend.tag}


SERVERS: Rows[ProjectStatus, ServerSpend] = Rows(
    of=_of_usage(lambda usage: usage.servers),
    labels=_with_project(_server),
)
SERVER_TAGS: Rows[ProjectStatus, ServerTag] = Rows(
    of=_of_usage(lambda usage: usage.server_tags),
    labels=_with_project(
        lambda t: {"server_id": t.server_id, "hostname": t.hostname, "tag": t.tag}
    ),
)
TAGS: Rows[ProjectStatus, TagSpend] = Rows(
    of=_of_usage(lambda usage: usage.tags),
    labels=_with_project(_tag),
)


def _of_previous(
    rows: Callable[[ClosedPeriod], Sequence[R]],
) -> Callable[[ProjectStatus], Sequence[R]]:
    return lambda status: rows(status.previous_period) if status.previous_period else ()


def _with_previous(
    labels: Callable[[R], dict[str, str]],
) -> Callable[[ProjectStatus, R], dict[str, str]]:
    def both(status: ProjectStatus, row: R) -> dict[str, str]:
        closed = status.previous_period
        assert closed is not None
        return {
            "project_id": closed.project_id,
            "project_slug": closed.project_slug,
            "currency": closed.currency,
            **labels(row),
        }

    return both


PREVIOUS: Rows[ProjectStatus, ClosedPeriod] = Rows(
    of=_of_previous(lambda closed: (closed,)),
    labels=_with_previous(lambda _: {}),
)
PREVIOUS_SERVERS: Rows[ProjectStatus, ServerSpend] = Rows(
    of=_of_previous(lambda closed: closed.servers),
    labels=_with_previous(_server),
)
PREVIOUS_TAGS: Rows[ProjectStatus, TagSpend] = Rows(
    of=_of_previous(lambda closed: closed.tags),
    labels=_with_previous(_tag),
)
STATUS: Rows[ProjectStatus, ProjectStatus] = Rows(
    of=lambda status: (status,),
    labels=lambda status, _: {"project_id": status.project_id},
)
POLL_ERRORS: Rows[ProjectStatus, tuple[str, int]] = Rows(
    of=lambda status: tuple(zip(POLL_ERROR_REASONS, status.errors, strict=True)),
    labels=lambda status, row: {"project_id": status.project_id, "reason": row[0]},
)
TEAM: Rows[TeamStatus, TeamStatus] = Rows(
    of=lambda team: (team,),
    labels=lambda team, _: {"team": team.name},
)
DISCOVERY_ERRORS: Rows[TeamStatus, tuple[str, int]] = Rows(
    of=lambda team: tuple(zip(POLL_ERROR_REASONS, team.discovery_errors, strict=True)),
    labels=lambda team, row: {"team": team.name, "reason": row[0]},
)
API_REQUESTS: Rows[TeamStatus, tuple[tuple[str, str], int]] = Rows(
    of=lambda team: tuple(sorted(team.api_requests)),
    labels=lambda team, row: {"team": team.name, "endpoint": row[0][0], "code": row[0][1]},
)


def _count(row: tuple[Any, int]) -> float:
    return float(row[1])


def _one(_: object) -> float:
    return 1.0


#: Every series of a project, in exposition order. The exposition renders these per
#: project when its poll lands; `ProjectCollector` renders them for all at once.
PROJECT_FAMILIES: tuple[Family[ProjectStatus, Any], ...] = (
    Family(
        "latitudesh_billing_price",
        f"Usage price so far in the current billing period. {_MONEY}",
        PROJECT_MONEY,
        USAGE,
        lambda u: u.price,
    ),
    Family(
        "latitudesh_billing_amount",
        f"Usage amount so far in the current billing period (the API's `amount`). {_MONEY}",
        PROJECT_MONEY,
        USAGE,
        lambda u: u.amount,
    ),
    Family(
        "latitudesh_billing_available_credit_balance",
        f"Credit balance left; negative when overdrawn. {_MONEY}",
        PROJECT_MONEY,
        USAGE,
        lambda u: u.available_credit_balance,
    ),
    Family(
        "latitudesh_billing_threshold",
        f"Charging threshold of the project; absent when it has none. {_MONEY}",
        PROJECT_MONEY,
        USAGE,
        lambda u: u.threshold,
    ),
    Family(
        "latitudesh_billing_run_rate_per_hour",
        "What the lines running at the last answer cost per hour: metered hour and "
        "minute lines not ended, at their unit price (per billing_unit_divisor units), "
        "less percent discounts; absent when no line has a rate. "
        f"{_MONEY}",
        PROJECT_MONEY,
        USAGE,
        lambda u: u.run_rate,
    ),
    Family(
        "latitudesh_billing_projected_price",
        "Price the period is heading for: the price so far plus the run rate over the "
        "hours left until the period's end, as of the last answer; absent when no line "
        f"has a rate. {_MONEY}",
        PROJECT_MONEY,
        USAGE,
        lambda u: u.projected_price,
    ),
    Family(
        "latitudesh_billing_period_start_timestamp_seconds",
        f"Start of the current billing period, Unix time. {_FROM_POLL}",
        PROJECT,
        USAGE,
        lambda u: u.period_start,
    ),
    Family(
        "latitudesh_billing_period_end_timestamp_seconds",
        f"End of the current billing period, Unix time. {_FROM_POLL}",
        PROJECT,
        USAGE,
        lambda u: u.period_end,
    ),
    Family(
        "latitudesh_billing_products_folded",
        'Products folded into product_id="__other__" by max_products_per_project.',
        ("project_id",),
        USAGE,
        lambda u: float(u.products_folded),
    ),
    Family(
        "latitudesh_billing_discounts_unknown_type",
        "Discounts in the last answer whose type is neither percent nor amount (the "
        "spec's closed enum): not exported as money, so a new API value shows here.",
        ("project_id",),
        USAGE,
        lambda u: float(u.discounts_unknown),
    ),
    Family(
        "latitudesh_billing_servers_folded",
        'Servers folded into server_id="__other__" by max_servers_per_project.',
        ("project_id",),
        USAGE,
        lambda u: float(u.servers_folded),
    ),
    Family(
        "latitudesh_billing_tags_folded",
        'Server tags folded into tag="__other__" by max_tags_per_server.',
        ("project_id",),
        USAGE,
        lambda u: float(u.tags_folded),
    ),
    Family(
        "latitudesh_project_info",
        "Project names, currency and team, for joining onto project_id. Always 1.",
        (*PROJECT, "project_name", "currency", "team"),
        USAGE,
        _one,
    ),
    Family(
        "latitudesh_billing_product_price",
        f"A product's price so far in the current period. {_MONEY}",
        PRODUCT_MONEY,
        PRODUCTS,
        lambda p: p.price,
    ),
    Family(
        "latitudesh_billing_product_amount",
        f"A product's amount so far in the current period (the API's `amount`). {_MONEY}",
        PRODUCT_MONEY,
        PRODUCTS,
        lambda p: p.amount,
    ),
    Family(
        "latitudesh_billing_product_price_without_discount",
        f"A product's price before discounts (the API's `amount_without_discount`). {_ASSUMED}",
        PRODUCT_MONEY,
        PRODUCTS,
        lambda p: p.price_without_discount,
    ),
    Family(
        "latitudesh_billing_product_unit_price",
        "Price of one `unit` of a product, or of `divisor` units where "
        f"latitudesh_billing_product_unit_divisor gives one. {_MONEY}",
        PRODUCT_MONEY,
        PRODUCTS,
        lambda p: p.unit_price,
    ),
    Family(
        "latitudesh_billing_product_unit_amount",
        f'A product\'s `unit_amount` (the spec: "the unit amount of the product"). {_MONEY}',
        PRODUCT_MONEY,
        PRODUCTS,
        lambda p: p.unit_amount,
    ),
    Family(
        "latitudesh_billing_product_quantity",
        f"Units of a product used so far, in `unit` (hour, minute, quantity, GB). {_FROM_POLL}",
        PRODUCT,
        PRODUCTS,
        lambda p: p.quantity,
    ),
    Family(
        "latitudesh_billing_product_discount_ratio",
        f"A percent discount on a product as a ratio (5 % is 0.05). {_FROM_POLL}",
        (*PROJECT, "product_id", "description"),
        DISCOUNTS,
        lambda d: d.ratio,
    ),
    Family(
        "latitudesh_billing_product_discount_amount",
        f"A fixed-amount discount on a product (`type` amount). {_ASSUMED}",
        (*PROJECT_MONEY, "product_id", "description"),
        DISCOUNTS,
        lambda d: d.amount,
    ),
    Family(
        "latitudesh_billing_product_server_info",
        "Servers behind a product line. Always 1.",
        (*PROJECT, "product_id", "server_id", "hostname", "plan"),
        PRODUCT_SERVERS,
        _one,
    ),
    Family(
        "latitudesh_billing_product_bucket_info",
        "The storage bucket a product line bills for. Always 1.",
        (*PROJECT, "product_id", "bucket_id", "bucket_name", "location"),
        BUCKETS,
        _one,
    ),
    Family(
        "latitudesh_billing_product_unit_divisor",
        "The API's billing_unit_divisor: the product's unit_price is the price of this "
        f"many units. {_FROM_POLL}",
        (*PROJECT, "product_id"),
        DIVISORS,
        lambda d: d.divisor,
    ),
    Family(
        "latitudesh_billing_server_price",
        "A server's share of the spend so far: each product line's price split evenly "
        f"over the servers it lists. {_MONEY}",
        (*PROJECT_MONEY, "server_id", "hostname", "plan"),
        SERVERS,
        lambda s: s.price,
    ),
    Family(
        "latitudesh_billing_server_tag_info",
        "One series per tag of a server, for joins onto server_id. Always 1.",
        (*PROJECT, "server_id", "hostname", "tag"),
        SERVER_TAGS,
        _one,
    ),
    Family(
        "latitudesh_billing_tag_price",
        "Spend so far of the servers carrying a tag; a server counts under each of its "
        'tags, so tags overlap and do not add up to the project. tag="__untagged__": '
        'servers without tags; tag="__unattributed__": lines without servers. '
        f"{_MONEY}",
        (*PROJECT_MONEY, "tag"),
        TAGS,
        lambda t: t.price,
    ),
    Family(
        "latitudesh_billing_tag_run_rate_per_hour",
        "What the running lines of the servers carrying a tag cost per hour, split over "
        "servers as the spend is (latitudesh_billing_run_rate_per_hour's share); absent "
        f"when no line of the project has a rate. {_MONEY}",
        (*PROJECT_MONEY, "tag"),
        TAGS,
        lambda t: t.rate,
    ),
    Family(
        "latitudesh_billing_previous_period_price",
        "Price of the last closed billing period: its last answer's price (see "
        "latitudesh_billing_previous_period_observed_timestamp_seconds for when it was "
        f"seen). {_CLOSED}",
        PROJECT_MONEY,
        PREVIOUS,
        lambda c: c.price,
    ),
    Family(
        "latitudesh_billing_previous_period_start_timestamp_seconds",
        f"Start of the last closed billing period, Unix time. {_CLOSED}",
        PROJECT,
        PREVIOUS,
        lambda c: c.period_start,
    ),
    Family(
        "latitudesh_billing_previous_period_end_timestamp_seconds",
        f"End of the last closed billing period, Unix time. {_CLOSED}",
        PROJECT,
        PREVIOUS,
        lambda c: c.period_end,
    ),
    Family(
        "latitudesh_billing_previous_period_observed_timestamp_seconds",
        "When the last answer of the last closed period was received, Unix time: how "
        f"close to the period's end its figures are. {_CLOSED}",
        PROJECT,
        PREVIOUS,
        lambda c: c.observed_at,
    ),
    Family(
        "latitudesh_billing_previous_period_server_price",
        f"A server's share of the last closed period's spend. {_CLOSED}",
        (*PROJECT_MONEY, "server_id", "hostname", "plan"),
        PREVIOUS_SERVERS,
        lambda s: s.price,
    ),
    Family(
        "latitudesh_billing_previous_period_tag_price",
        "Spend of the servers carrying a tag in the last closed period (tags overlap, "
        f"as in latitudesh_billing_tag_price). {_CLOSED}",
        (*PROJECT_MONEY, "tag"),
        PREVIOUS_TAGS,
        lambda t: t.price,
    ),
    Family(
        "latitudesh_up",
        "1 if the last poll of the project succeeded, 0 if it failed or stalled; absent "
        "until its first poll has an outcome.",
        ("project_id",),
        STATUS,
        lambda s: (1.0 if s.up else 0.0) if s.polled else None,
    ),
    Family(
        "latitudesh_last_success_timestamp_seconds",
        "Unix time of the project's last successful poll: how fresh its data is.",
        ("project_id",),
        STATUS,
        lambda s: s.last_success,
    ),
    Family(
        "latitudesh_poll_duration_seconds",
        "Wall time of the project's last poll, retries and budget waits included.",
        ("project_id",),
        STATUS,
        lambda s: s.poll_duration,
    ),
    Family(
        "latitudesh_poll_errors_total",
        "Failed polls of a project, by reason.",
        ("project_id", "reason"),
        POLL_ERRORS,
        _count,
        type="counter",
    ),
)

#: The exporter's own series of each API key, rendered at every scrape (they are few).
TEAM_FAMILIES: tuple[Family[TeamStatus, Any], ...] = (
    Family(
        "latitudesh_discovery_errors_total",
        "Failed project discoveries (GET /projects), by reason.",
        ("team", "reason"),
        DISCOVERY_ERRORS,
        _count,
        type="counter",
    ),
    Family(
        "latitudesh_api_requests_total",
        "HTTP requests sent to the Latitude.sh API, by endpoint and status code "
        "(`timeout` or `network` when no complete answer came).",
        ("team", "endpoint", "code"),
        API_REQUESTS,
        _count,
        type="counter",
    ),
    Family(
        "latitudesh_discovery_last_success_timestamp_seconds",
        "Unix time of the last successful project discovery (GET /projects).",
        ("team",),
        TEAM,
        lambda t: t.discovery_success,
    ),
    Family(
        "latitudesh_poll_effective_interval_seconds",
        "Seconds between two polls of each project: poll.interval_seconds, or longer "
        "when the API request budget cannot fit every project into it.",
        ("team",),
        TEAM,
        lambda t: t.effective_interval,
    ),
    Family(
        "latitudesh_refresh_duration_seconds",
        "Wall time of the last full refresh of every project.",
        ("team",),
        TEAM,
        lambda t: t.refresh_duration,
    ),
    Family(
        "latitudesh_schedule_restarts_total",
        "Times the watchdog restarted the team's refresh schedule: no refresh had started "
        "within the effective interval plus the stall margin.",
        ("team",),
        TEAM,
        lambda t: float(t.restarts),
        type="counter",
    ),
    Family(
        "latitudesh_discovery_refused_projects",
        f"Project ids the last discovery refused: longer than {MAX_ID_CHARS} characters.",
        ("team",),
        TEAM,
        lambda t: float(t.refused_ids),
    ),
)

RELOAD: Rows[ReloadStatus, ReloadStatus] = Rows(of=lambda r: (r,), labels=lambda r, _: {})
RELOAD_FAMILIES: tuple[Family[ReloadStatus, ReloadStatus], ...] = (
    Family(
        "latitudesh_config_last_reload_successful",
        "Whether the last load of the web config (at start, or on SIGHUP) succeeded; 0: "
        "the file was refused and the previous settings are still in use.",
        (),
        RELOAD,
        lambda r: float(r.successful),
    ),
    Family(
        "latitudesh_config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful load of the web config (the start counts).",
        (),
        RELOAD,
        lambda r: r.last_success,
    ),
)

STATE: Rows[StateStatus, StateStatus] = Rows(
    of=lambda s: (s,) if s.enabled else (), labels=lambda s, _: {}
)
STATE_ERRORS: Rows[StateStatus, tuple[str, int]] = Rows(
    of=lambda s: tuple(zip(STATE_ERROR_REASONS, s.errors, strict=True)) if s.enabled else (),
    labels=lambda s, row: {"reason": row[0]},
)
STATE_FAMILIES: tuple[Family[StateStatus, Any], ...] = (
    Family(
        "latitudesh_state_up",
        "1 while the state file is in use; 0 when it could not be read or written and the "
        "state lives in memory only. Absent with state.enabled false.",
        (),
        STATE,
        lambda s: float(s.up),
    ),
    Family(
        "latitudesh_state_errors_total",
        "Failures to use the state file, by reason (unreadable: moved aside; "
        "newer_version, locked, read_only, disk_full, io; invalid_answer: a stored answer "
        "that no longer reads).",
        ("reason",),
        STATE_ERRORS,
        _count,
        type="counter",
    ),
    Family(
        "latitudesh_download_skipped_answers_total",
        "Kept answers that no longer read (a schema the models refuse now), left out of "
        "the finance files served (/showback.*, /focus.csv, /opencost/pricing.csv), "
        "counted once a download.",
        (),
        STATE,
        lambda s: float(s.skipped_in_downloads),
        type="counter",
    ),
)

BUDGET_LABELS = ("team", "scope", "project_id", "tag", "currency")
BUDGET: Rows[BudgetStatus, BudgetStatus] = Rows(
    of=lambda b: (b,),
    labels=lambda b, _: {
        "team": b.team,
        "scope": b.budget.scope,
        "project_id": b.project_id,
        "tag": b.tag,
        "currency": b.currency,
    },
)
BUDGET_LEVELS: Rows[BudgetStatus, tuple[str, float]] = Rows(
    of=lambda b: b.levels,
    labels=lambda b, row: {**BUDGET.labels(b, b), "level": row[0]},
)
_BUDGET = (
    "A budget of the config: scope team (every project of the team), project, or tag "
    "(the team's servers carrying it, across projects); in the team's currency."
)
#: Each budget's figures, rendered at every scrape (one series each, a few a level).
BUDGET_FAMILIES: tuple[Family[BudgetStatus, Any], ...] = (
    Family(
        "latitudesh_budget_amount",
        f"What the scope may spend per billing period. {_BUDGET}",
        BUDGET_LABELS,
        BUDGET,
        lambda b: b.budget.amount,
    ),
    Family(
        "latitudesh_budget_found",
        "1 when the budget's scope names something the team has (a project by id or "
        "slug, a tag one of its servers carries); 0: nothing to measure (yet).",
        BUDGET_LABELS,
        BUDGET,
        lambda b: float(b.found),
    ),
    Family(
        "latitudesh_budget_spent_ratio",
        f"The scope's spend this period over the budget's amount (1 = all spent). {_FROM_POLL}",
        BUDGET_LABELS,
        BUDGET,
        lambda b: b.spent_ratio,
    ),
    Family(
        "latitudesh_budget_projected_ratio",
        "The scope's spend at the period's end, if what runs now keeps running, over the "
        f"budget's amount. {_FROM_POLL}",
        BUDGET_LABELS,
        BUDGET,
        lambda b: b.projected_ratio,
    ),
    Family(
        "latitudesh_budget_period_end_timestamp_seconds",
        "Unix time the scope's billing period ends (the latest of its projects').",
        BUDGET_LABELS,
        BUDGET,
        lambda b: b.period_end,
    ),
    Family(
        "latitudesh_budget_run_out_timestamp_seconds",
        "Unix time at which the scope's run rate spends the rest of the budget; absent when "
        "nothing runs or the budget is spent.",
        BUDGET_LABELS,
        BUDGET,
        lambda b: b.run_out,
    ),
    Family(
        "latitudesh_budget_level_ratio",
        'Each level at which the budget warns, as a share of its amount (level="75": '
        "0.75): what the budget alerts join latitudesh_budget_spent_ratio on.",
        (*BUDGET_LABELS, "level"),
        BUDGET_LEVELS,
        lambda row: row[1],
    ),
)

BUILD_INFO = ("latitudesh_exporter_build_info", "Version of the exporter and of Python. Always 1.")
BUILD_LABELS = ("version", "python_version")


@dataclass(frozen=True, slots=True)
class MetricDoc:
    """What the README's metric table documents of each metric."""

    name: str
    type: str
    labels: tuple[str, ...]


_FAMILIES: tuple[Family[Any, Any], ...] = (
    *PROJECT_FAMILIES,
    *TEAM_FAMILIES,
    *RELOAD_FAMILIES,
    *STATE_FAMILIES,
    *BUDGET_FAMILIES,
)
ALL_METRICS: tuple[MetricDoc, ...] = (
    *(MetricDoc(f.name, f.type, f.labels) for f in _FAMILIES),
    MetricDoc(BUILD_INFO[0], "gauge", BUILD_LABELS),
)


def family_of(spec: Family[Any, Any]) -> GaugeMetricFamily | CounterMetricFamily:
    kind = CounterMetricFamily if spec.type == "counter" else GaugeMetricFamily
    return kind(spec.family_name, spec.help, labels=spec.labels)


def _render(specs: Sequence[Family[In, Any]], inputs: Sequence[In]) -> Iterator[Metric]:
    for spec in specs:
        family = family_of(spec)
        for item in inputs:
            for row in spec.rows.of(item):
                value = spec.value(row)
                if value is not None:
                    labels = spec.rows.labels(item, row)
                    family.add_metric([labels[name] for name in spec.labels], value)
        yield family


class ProjectCollector(Collector):
    """Every project's series, rendered from the store's view by prometheus_client.

    Exposition it produces (abridged)::

        # HELP latitudesh_billing_price Usage price so far in the current billing period. ...
        # TYPE latitudesh_billing_price gauge
        latitudesh_billing_price{currency="USD",project_id="proj_1",project_slug="web"} 123.45
        latitudesh_billing_product_price{...,product_id="si_1",unit="hour",...} 40.2
        latitudesh_up{project_id="proj_1"} 1.0

    The exposition module renders the same bytes a project at a time; this is the
    reference it is held to, and what a library user would register.
    """

    def __init__(self, view: ViewSource) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        yield from _render(PROJECT_FAMILIES, self._view().projects)


class TeamCollector(Collector):
    """Each API key's own figures and the build info: few series, fresh every scrape."""

    def __init__(self, view: ViewSource) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        yield from _render(TEAM_FAMILIES, view.teams)
        yield from _render(RELOAD_FAMILIES, (view.reload,))
        yield from _render(STATE_FAMILIES, (view.state,))
        budgets = assess(view)
        if budgets:  # no empty families where no budget is configured
            yield from _render(BUDGET_FAMILIES, budgets)
        info = GaugeMetricFamily(*BUILD_INFO, labels=BUILD_LABELS)
        info.add_metric([__version__, platform.python_version()], 1.0)
        yield info
