"""A kept answer read back as the lines a finance file shows: every product line of the
answer as the API gave it (no merging, no folding: the metrics fold to a series
budget, a file has none), in main currency units, with the project's price beside them
so that every file's rows add up to it.

Read with the live path's models (`models.read_usage`), so a kept answer is never
trusted more than a live one; an answer that no longer reads is skipped and counted by
the caller. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from exporter.forecast import line_rate
from exporter.models import PayloadError, Product, epoch_seconds, read_usage
from exporter.state import StoredAnswer
from exporter.usage import money

#: Below this difference (main units) a project's lines add up to its price.
RECONCILE_EPSILON = 0.005


@dataclass(frozen=True, slots=True)
class Resource:
    """What a line names: one server, or a storage bucket."""

    kind: str  # "server" or "bucket"
    id: str
    name: str  # hostname, or the bucket's name
    plan: str = ""  # a server's plan
    location: str = ""  # a bucket's location
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Line:
    """One product line of an answer, money in main units (cents / 100)."""

    product_id: str
    name: str
    description: str
    resource: str
    usage_type: str
    unit: str
    quantity: float | None
    #: The API's `unit_price`: per billed unit, which is `billing_unit_divisor` units
    #: where the line has one ("0.01 per 1,000 API calls").
    unit_price: float | None
    #: Quantity in billed units (`quantity` / `billing_unit_divisor`).
    billed_quantity: float | None
    divisor: float | None
    price_without_discount: float | None
    #: What the line bills: its `price` (its `amount` where it has no price).
    price: float
    discounts: tuple[str, ...]
    start: float | None
    end: float | None
    #: The servers or the bucket the line names.
    resources: tuple[Resource, ...]
    #: What the line costs an hour when the answer came (`forecast.line_rate`, main
    #: units): None when it has no rate (licensed, not metered by time).
    rate_per_hour: float | None = None


@dataclass(frozen=True, slots=True)
class ProjectLines:
    """A project's answer as a file shows it."""

    team: str
    team_name: str
    project_id: str
    project_slug: str
    project_name: str
    currency: str
    #: The project's price in the answer (the lines' sum where it has none).
    price: float
    period_start: float | None
    period_end: float | None
    observed_at: float
    lines: tuple[Line, ...]

    @property
    def unreconciled(self) -> float:
        """What the project's price has beyond its lines (0 when they add up)."""
        difference = self.price - sum(line.price for line in self.lines)
        return 0.0 if abs(difference) < RECONCILE_EPSILON else round(difference, 6)


def read(answer: StoredAnswer) -> ProjectLines:
    """`answer` as its lines. Raises `PayloadError` when it does not read."""
    usage = read_usage(answer.project_id, answer.body)
    ref = usage.project
    lines = tuple(_line(product, answer.received_at) for product in usage.products)
    price = money(usage.price)
    if price is None:
        price = money(usage.amount)
    period = usage.period
    return ProjectLines(
        team=answer.team,
        team_name=answer.team_name or answer.team,
        project_id=answer.project_id,
        project_slug=(ref.slug if ref else None) or answer.slug or "",
        project_name=(ref.name if ref else None) or answer.name or "",
        currency=answer.currency,
        price=sum(line.price for line in lines) if price is None else price,
        period_start=epoch_seconds(period.start) if period else None,
        period_end=epoch_seconds(period.end) if period else None,
        observed_at=answer.received_at,
        lines=lines,
    )


def readable(answers: Iterator[StoredAnswer], skipped: list[str]) -> Iterator[ProjectLines]:
    """Each answer that reads, as its lines; the ids of those that do not, in
    `skipped`."""
    for answer in answers:
        try:
            yield read(answer)
        except PayloadError:
            skipped.append(answer.project_id)


def _line(product: Product, at: float) -> Line:
    metadata = product.metadata
    servers = metadata.all_servers(product.resource) if metadata else []
    bucket = metadata.storage_bucket(product.resource) if metadata else None
    resources = tuple(
        Resource(
            "server",
            s.id or "",
            s.hostname or "",
            plan=s.plan or "",
            tags=tuple(dict.fromkeys(t for t in s.tags if t)),
        )
        for s in servers
    )
    if not resources and bucket is not None and (bucket.id or bucket.name):
        resources = (
            Resource("bucket", bucket.id or "", bucket.name or "", location=bucket.location or ""),
        )
    divisor = metadata.billing_unit_divisor if metadata else None
    divisor = divisor if divisor is not None and divisor > 0 else None
    unit_price = money(product.unit_price)
    price = money(product.price)
    if price is None:
        price = money(product.amount)
    return Line(
        product_id=product.id or "",
        name=product.name or product.description or "",
        description=product.description or product.name or "",
        resource=product.resource or "",
        usage_type=product.usage_type or "",
        unit=product.unit or "",
        quantity=product.quantity,
        unit_price=unit_price,
        billed_quantity=None if product.quantity is None else product.quantity / (divisor or 1),
        divisor=divisor,
        price_without_discount=money(product.amount_without_discount),
        price=0.0 if price is None else price,
        discounts=tuple(
            f"{d.description or ''}: {d.value:g}{' %' if (d.type or '') == 'percent' else ''}"
            for d in product.discounts
            if d.value is not None
        ),
        start=epoch_seconds(product.start),
        end=epoch_seconds(product.end),
        resources=resources,
        rate_per_hour=money(line_rate(product, at)),
    )
