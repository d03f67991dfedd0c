"""prometheus_client Collectors that render the store's view as metric families; pure.

Every metric is a row in one of the spec tables below; `collect()` loops over them.
Families are built fresh from one `StoreView` per scrape, so a product that disappears
from the API disappears from /metrics by construction, with no purge code to get wrong.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.snapshot import (
    DiscountInfo,
    ProductUsage,
    ProjectStatus,
    ServerInfo,
    StoreView,
    UsageSnapshot,
)

ViewSource = Callable[[], StoreView]

_FROM_POLL = "From the last successful poll of the Latitude.sh API, not from this scrape."
_MONEY = f"In main units of `currency` (the API's cents / 100). {_FROM_POLL}"

PROJECT = ("project_id", "project_slug")
PROJECT_MONEY = (*PROJECT, "currency")
PRODUCT = (*PROJECT, "product_id", "product_name", "resource", "unit", "usage_type",
           "plan", "hostname")
PRODUCT_MONEY = (*PROJECT_MONEY, *PRODUCT[2:])


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    help: str
    labels: tuple[str, ...]
    type: str = "gauge"


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Spec(MetricSpec, Generic[T]):
    value: Callable[[T], float | None] = lambda _: None


# One row per metric. Rows read a usage snapshot (project level), a product, a
# discount, a server or a project's poll status; `labels` picks from the row's labels.
USAGE_METRICS: tuple[_Spec[UsageSnapshot], ...] = (
    _Spec("latitudesh_billing_price",
          f"Usage price so far in the current billing period. {_MONEY}",
          PROJECT_MONEY, value=lambda u: u.price),
    _Spec("latitudesh_billing_amount",
          f"Usage amount so far in the current billing period (the API's `amount`). {_MONEY}",
          PROJECT_MONEY, value=lambda u: u.amount),
    _Spec("latitudesh_billing_available_credit_balance",
          f"Credit balance left; negative when overdrawn. {_MONEY}",
          PROJECT_MONEY, value=lambda u: u.available_credit_balance),
    _Spec("latitudesh_billing_threshold",
          f"Charging threshold of the project; absent when it has none. {_MONEY}",
          PROJECT_MONEY, value=lambda u: u.threshold),
    _Spec("latitudesh_billing_period_start_timestamp_seconds",
          f"Start of the current billing period, Unix time. {_FROM_POLL}",
          PROJECT, value=lambda u: u.period_start),
    _Spec("latitudesh_billing_period_end_timestamp_seconds",
          f"End of the current billing period, Unix time. {_FROM_POLL}",
          PROJECT, value=lambda u: u.period_end),
    _Spec("latitudesh_billing_products_folded",
          "Products folded into product_id=\"__other__\" by max_products_per_project.",
          ("project_id",), value=lambda u: float(u.products_folded)),
    _Spec("latitudesh_project_info",
          "Project names and currency, for joining onto project_id. Always 1.",
          (*PROJECT, "project_name", "currency"), value=lambda u: 1.0),
)

PRODUCT_METRICS: tuple[_Spec[ProductUsage], ...] = (
    _Spec("latitudesh_billing_product_price",
          f"A product's price so far in the current period. {_MONEY}",
          PRODUCT_MONEY, value=lambda p: p.price),
    _Spec("latitudesh_billing_product_amount",
          f"A product's amount so far in the current period (the API's `amount`). {_MONEY}",
          PRODUCT_MONEY, value=lambda p: p.amount),
    _Spec("latitudesh_billing_product_price_without_discount",
          f"A product's price before discounts (the API's `amount_without_discount`). {_MONEY}",
          PRODUCT_MONEY, value=lambda p: p.price_without_discount),
    _Spec("latitudesh_billing_product_unit_price",
          f"Price of one `unit` of a product. {_MONEY}",
          PRODUCT_MONEY, value=lambda p: p.unit_price),
    _Spec("latitudesh_billing_product_quantity",
          f"Units of a product used so far, in `unit` (hour, minute, quantity, GB). {_FROM_POLL}",
          PRODUCT, value=lambda p: p.quantity),
)

DISCOUNT_METRICS: tuple[_Spec[DiscountInfo], ...] = (
    _Spec("latitudesh_billing_product_discount_ratio",
          f"A percent discount on a product as a ratio (5 % is 0.05). {_FROM_POLL}",
          (*PROJECT, "product_id", "description"), value=lambda d: d.ratio),
    _Spec("latitudesh_billing_product_discount_amount",
          f"A fixed-amount discount on a product. {_MONEY}",
          (*PROJECT_MONEY, "product_id", "description"), value=lambda d: d.amount),
)

SERVER_METRICS: tuple[_Spec[ServerInfo], ...] = (
    _Spec("latitudesh_billing_product_server_info",
          "Servers behind a product line. Always 1.",
          (*PROJECT, "product_id", "server_id", "hostname", "plan"), value=lambda s: 1.0),
)

STATUS_METRICS: tuple[_Spec[ProjectStatus], ...] = (
    _Spec("latitudesh_up",
          "1 if the last poll of the project succeeded, 0 if it failed.",
          ("project_id",), value=lambda s: 1.0 if s.up else 0.0),
    _Spec("latitudesh_last_success_timestamp_seconds",
          "Unix time of the project's last successful poll: how fresh its data is.",
          ("project_id",), value=lambda s: s.last_success),
    _Spec("latitudesh_poll_duration_seconds",
          "Wall time of the project's last poll, retries and budget waits included.",
          ("project_id",), value=lambda s: s.poll_duration),
)

EXPORTER_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("latitudesh_poll_errors_total",
               "Failed polls of a project, by reason.", ("project_id", "reason"), "counter"),
    MetricSpec("latitudesh_discovery_errors_total",
               "Failed project discoveries (GET /projects), by reason.", ("reason",), "counter"),
    MetricSpec("latitudesh_api_requests_total",
               "HTTP requests sent to the Latitude.sh API, by endpoint and status code "
               "(`timeout` or `network` when no answer came).", ("endpoint", "code"), "counter"),
    MetricSpec("latitudesh_poll_effective_interval_seconds",
               "Seconds between two polls of each project: poll.interval_seconds, or longer "
               "when the API request budget cannot fit every project into it.", ()),
    MetricSpec("latitudesh_refresh_duration_seconds",
               "Wall time of the last full refresh of every project.", ()),
    MetricSpec("latitudesh_exporter_build_info",
               "Version of the exporter and of Python. Always 1.",
               ("version", "python_version")),
)

ALL_METRICS: tuple[MetricSpec, ...] = (
    *USAGE_METRICS, *PRODUCT_METRICS, *DISCOUNT_METRICS, *SERVER_METRICS,
    *STATUS_METRICS, *EXPORTER_METRICS,
)


def _gauges(specs: tuple[_Spec[object], ...] | tuple[MetricSpec, ...]) -> list[GaugeMetricFamily]:
    return [GaugeMetricFamily(s.name, s.help, labels=s.labels) for s in specs]


class BillingCollector(Collector):
    """The money: one family per spec, rendered from the store's view.

    Exposition it produces (abridged)::

        # HELP latitudesh_billing_price Usage price so far in the current billing period. ...
        # TYPE latitudesh_billing_price gauge
        latitudesh_billing_price{currency="USD",project_id="proj_1",project_slug="web"} 123.45
        latitudesh_billing_product_price{...,product_id="si_1",unit="hour",...} 40.2

    Its output changes only when a poll brings new data, which is what lets the server
    render it once per `data_version` instead of once per scrape.
    """

    def __init__(self, view: ViewSource) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        usages = [s.usage for s in self._view().projects if s.usage is not None]
        yield from self._usage(usages)
        yield from self._products(usages)
        yield from self._discounts(usages)
        yield from self._servers(usages)

    @staticmethod
    def _usage(usages: list[UsageSnapshot]) -> Iterator[Metric]:
        for spec, family in zip(USAGE_METRICS, _gauges(USAGE_METRICS), strict=True):
            for usage in usages:
                value = spec.value(usage)
                if value is not None:
                    row = {"project_id": usage.project_id, "project_slug": usage.project_slug,
                           "currency": usage.currency, "project_name": usage.project_name}
                    family.add_metric([row[name] for name in spec.labels], value)
            yield family

    @staticmethod
    def _products(usages: list[UsageSnapshot]) -> Iterator[Metric]:
        families = _gauges(PRODUCT_METRICS)
        priced = [("currency" in spec.labels) for spec in PRODUCT_METRICS]
        for usage in usages:
            project = (usage.project_id, usage.project_slug)
            money = (*project, usage.currency)
            for product in usage.products:
                rest = product.identity
                for spec, family, money_labels in zip(PRODUCT_METRICS, families, priced,
                                                      strict=True):
                    value = spec.value(product)
                    if value is not None:
                        family.add_metric((*money, *rest) if money_labels else (*project, *rest),
                                          value)
        yield from families

    @staticmethod
    def _discounts(usages: list[UsageSnapshot]) -> Iterator[Metric]:
        families = _gauges(DISCOUNT_METRICS)
        for usage in usages:
            for product in usage.products:
                for discount in product.discounts:
                    row = {"project_id": usage.project_id, "project_slug": usage.project_slug,
                           "currency": usage.currency, "product_id": product.product_id,
                           "description": discount.description}
                    for spec, family in zip(DISCOUNT_METRICS, families, strict=True):
                        value = spec.value(discount)
                        if value is not None:
                            family.add_metric([row[name] for name in spec.labels], value)
        yield from _unique_samples(families)

    @staticmethod
    def _servers(usages: list[UsageSnapshot]) -> Iterator[Metric]:
        (spec,) = SERVER_METRICS
        family = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
        seen: set[tuple[str, ...]] = set()
        for usage in usages:
            for product in usage.products:
                for server in product.servers:
                    labels = (usage.project_id, usage.project_slug, product.product_id,
                              server.server_id, server.hostname, server.plan)
                    if labels not in seen:
                        seen.add(labels)
                        family.add_metric(labels, 1.0)
        yield family


def _unique_samples(families: list[GaugeMetricFamily]) -> Iterator[Metric]:
    """Two discounts with one description on one product would clash: add them up."""
    for family in families:
        merged: dict[tuple[str, ...], float] = {}
        order: list[tuple[str, ...]] = []
        for sample in family.samples:
            key = tuple(sample.labels.values())
            if key not in merged:
                order.append(key)
                merged[key] = 0.0
            merged[key] += sample.value
        if len(order) != len(family.samples):
            family.samples = []
            for key in order:
                family.add_metric(list(key), merged[key])
        yield family


class ExporterCollector(Collector):
    """The exporter's own health: small, and rendered fresh on every scrape."""

    def __init__(self, view: ViewSource) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        for spec, family in zip(STATUS_METRICS, _gauges(STATUS_METRICS), strict=True):
            for status in view.projects:
                value = spec.value(status)
                if value is not None:
                    family.add_metric([status.project_id], value)
            yield family
        errors, discovery, requests, interval_spec, refresh_spec, build = EXPORTER_METRICS
        yield _counter(errors, view.poll_errors.items())
        yield _counter(discovery, (((reason,), n) for reason, n in view.discovery_errors.items()))
        yield _counter(requests, view.api_requests.items())
        for gauge, value in ((interval_spec, view.effective_interval),
                             (refresh_spec, view.last_refresh_duration)):
            family = GaugeMetricFamily(gauge.name, gauge.help, labels=())
            if value is not None:
                family.add_metric([], value)
            yield family
        info = GaugeMetricFamily(build.name, build.help, labels=build.labels)
        info.add_metric([__version__, platform.python_version()], 1.0)
        yield info


def _counter(
    spec: MetricSpec, items: Iterable[tuple[tuple[str, ...], int]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(spec.name.removesuffix("_total"), spec.help, labels=spec.labels)
    for labels, value in sorted(items):
        family.add_metric(list(labels), value)
    return family
