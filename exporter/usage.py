"""One parsed answer of `GET /billing/usage` turned into a `UsageSnapshot`.

Money into main units, duplicate lines merged, the cheapest products, servers and tags
folded beyond the cardinality guards, discounts read, and each line's price allocated
to the servers it lists and to their tags. Pure: no I/O, no state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from exporter.forecast import line_rate, run_rate
from exporter.models import Product, UsageAttributes, epoch_seconds
from exporter.snapshot import (
    OTHER,
    UNATTRIBUTED,
    UNTAGGED,
    BucketInfo,
    DiscountInfo,
    ProductUsage,
    ServerInfo,
    ServerSpend,
    TagSpend,
    UnitDivisor,
    UsageSnapshot,
    api_label,
    label,
    unique,
)

#: The discount `type`s the spec defines (a closed enum); others are counted, not read.
DISCOUNT_TYPES = frozenset({"percent", "amount"})


def money(cents: float | None) -> float | None:
    """The API counts in cents of the team's currency; Prometheus users want main units.

    The spec says "in cents" of `price`, `amount`, `available_credit_balance`,
    `threshold`, `unit_price` and `unit_amount`. It states no unit for
    `amount_without_discount` or an `amount` discount's `value`: they are read as cents
    too (an assumption: they are compared with and subtracted from `price`), and the
    README and the metrics' HELP say so."""
    return None if cents is None else cents / 100.0


def _add(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


@dataclass(frozen=True, slots=True)
class Limits:
    """Cardinality guards; what is beyond them folds into `__other__` and is counted."""

    products: int
    servers: int
    tags_per_server: int


def build_usage(
    project_id: str,
    attributes: UsageAttributes,
    *,
    currency: str,
    limits: Limits,
    at: float,
    slug: str | None = None,
    name: str | None = None,
) -> UsageSnapshot:
    """Turn one parsed answer, received at `at` (epoch seconds), into a snapshot;
    merging, folding, allocation and the forecast live here."""
    ref = attributes.project
    start = epoch_seconds(attributes.period.start) if attributes.period else None
    end = epoch_seconds(attributes.period.end) if attributes.period else None
    if start is not None and end is not None and start > end:
        start = end = None  # an inverted period would make every projection nonsense
    lines = [_ProductLine.read(p, at) for p in attributes.products]
    merged = _merge_duplicates(lines)
    products, folded = _fold_cheapest(merged, limits.products)
    # Rows of folded products would name product ids no product series carries.
    kept = {p.product_id for p in products}
    allocation = _allocate(lines, limits)
    price = money(attributes.price)
    rate = money(run_rate(attributes.products, at))
    return UsageSnapshot(
        project_id=label(project_id),
        project_slug=label((ref.slug if ref else None) or slug),
        project_name=label((ref.name if ref else None) or name),
        currency=label(currency),
        price=price,
        amount=money(attributes.amount),
        available_credit_balance=money(attributes.available_credit_balance),
        threshold=money(attributes.threshold),
        period_start=start,
        period_end=end,
        products=products,
        products_folded=folded,
        discounts=_discounts(merged, kept),
        discounts_unknown=sum(
            1 for line in lines for _, kind, _ in line.discounts if kind not in DISCOUNT_TYPES
        ),
        buckets=unique(
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
        run_rate=rate,
        projected_price=_projected(price, rate, start, end, at),
    )


def _projected(
    price: float | None, rate: float | None, start: float | None, end: float | None, at: float
) -> float | None:
    """The spend so far plus the run rate over the hours left in the period, as of the
    answer: constant while nothing changes (spend grows as the hours left shrink)."""
    if price is None or rate is None or end is None:
        return None
    left = max(0.0, end - max(at, start if start is not None else at))
    return price + rate * left / 3600.0


@dataclass(frozen=True, slots=True)
class _ProductLine:
    """A product line as read, with what only the snapshot needs besides its usage."""

    usage: ProductUsage
    discounts: tuple[tuple[str, str, float | None], ...]
    bucket: tuple[str, str, str] | None
    divisor: float | None
    #: What the line costs an hour at the answer's time (`forecast.line_rate`, main
    #: units); None when it has no rate.
    rate: float | None = None

    @classmethod
    def read(cls, product: Product, at: float) -> _ProductLine:
        metadata = product.metadata
        servers = metadata.all_servers(product.resource) if metadata else []
        infos = tuple(
            dict.fromkeys(
                ServerInfo(
                    api_label(s.id),
                    label(s.hostname),
                    label(s.plan),
                    tuple(dict.fromkeys(api_label(t) for t in s.tags if t)),
                )
                for s in servers
            )
        )
        plans = {info.plan for info in infos}
        bucket = metadata.storage_bucket(product.resource) if metadata else None
        divisor = metadata.billing_unit_divisor if metadata else None
        return cls(
            usage=ProductUsage(
                product_id=api_label(product.id),
                name=label(product.name or product.description),
                resource=label(product.resource),
                unit=label(product.unit),
                usage_type=label(product.usage_type),
                plan=plans.pop() if len(plans) == 1 else "",
                hostname=infos[0].hostname if len(infos) == 1 else "",
                price=money(product.price),
                amount=money(product.amount),
                price_without_discount=money(product.amount_without_discount),
                unit_price=money(product.unit_price),
                unit_amount=money(product.unit_amount),
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
            rate=money(line_rate(product, at)),
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
            if kind not in DISCOUNT_TYPES:
                continue  # a new API value must be visible (counted), never mis-priced
            percent = kind == "percent"
            ratio = value / 100.0 if percent and value is not None else None
            amount = money(value) if not percent else None
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
    rate: float = 0.0


def _allocate(lines: list[_ProductLine], limits: Limits) -> _Allocation:
    """Each line's price (and run rate) split evenly over the servers it lists; the rest
    unattributed.

    Additive by construction: Σ server prices + the unattributed spend = Σ line prices.
    A listed server with neither id nor hostname cannot be named: its share is
    unattributed. Allocation reads the lines as the API gave them, before products
    fold, so folding never moves money between servers.
    """
    ranked, unattributed, unattributed_rate = _shares(lines)
    rated = any(line.rate is not None for line in lines)
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
    rates = [share.rate for share in ranked]
    if folded:
        rates.append(sum(s.rate for s in folded))
    by_tag: dict[str, list[float]] = {
        UNATTRIBUTED: [unattributed, unattributed_rate],
        UNTAGGED: [0.0, 0.0],
    }
    for server, rate in zip(servers, rates, strict=True):
        for tag in server.tags or (UNTAGGED,):
            sums = by_tag.setdefault(tag, [0.0, 0.0])
            sums[0] += server.price
            sums[1] += rate
    return _Allocation(
        servers=tuple(servers),
        servers_folded=len(folded),
        tags_folded=tags_folded,
        tags=tuple(
            TagSpend(tag, _round(price), _round(rate) if rated else None)
            for tag, (price, rate) in sorted(by_tag.items())
        ),
    )


def _shares(lines: list[_ProductLine]) -> tuple[list[_Share], float, float]:
    """Each named server's summed share, in order of appearance, and the price and
    run rate no server can be given."""
    shares: dict[str, _Share] = {}
    unattributed = unattributed_rate = 0.0
    for line in lines:
        price = line.usage.price
        rate = line.rate or 0.0
        servers = line.usage.servers
        if price is None:  # nothing to split (and no server share made for its rate)
            continue
        if not servers:
            unattributed += price
            unattributed_rate += rate
            continue
        each, each_rate = price / len(servers), rate / len(servers)
        for server in servers:
            if not (server.server_id or server.hostname):
                unattributed += each
                unattributed_rate += each_rate
                continue
            key = server.server_id or f"\0{server.hostname}"
            share = shares.get(key)
            if share is None:
                shares[key] = _Share(server, each, dict.fromkeys(server.tags), each_rate)
            else:
                share.price += each
                share.rate += each_rate
                share.tags.update(dict.fromkeys(server.tags))
    return list(shares.values()), unattributed, unattributed_rate


def _round(money: float) -> float:
    """Shares of a split price: a millionth of a unit is far below a cent, and without
    it 34.56 / 3 reads 11.520000000000001."""
    return round(money, 6)


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
