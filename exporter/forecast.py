"""What a project spends per hour now, read from the lines that run: the run rate.

The bill a period is heading for is what has been spent plus what runs now times the
hours left. A linear projection (the spend so far over the share of the period gone)
is wrong by nearly the whole remaining cost of a server added yesterday, and by the
opposite for one deleted; the answer already says what runs now. A line adds to the
rate when it is metered by time (`unit` hour or minute), not ended (`end` null or
later than the answer), and has a unit price; its rate is the unit price over
`billing_unit_divisor` (the unit price is the price of that many units) per unit,
sixty units an hour for minutes, less its percent discounts. What adds nothing, and
why (each documented in the README's "Forecast"):

- a line that ended (a server deleted or stopped): it costs nothing more;
- a licensed line: paid for the period up front, nothing accrues by the hour;
- a line metered by `quantity` (transfer, storage): no clock in its unit to project;
- an `amount` discount: a fixed sum off the line's bill, already in the price so far,
  not a share of each hour; a discount of an unknown type is counted, never read.

In the API's units (cents per hour); `usage.py` turns it into main units.
"""

from __future__ import annotations

from collections.abc import Iterable

from exporter.models import Product, epoch_seconds

#: Units of a metered line that run with the clock, as units per hour.
UNITS_PER_HOUR = {"hour": 1.0, "minute": 60.0}


def line_rate(product: Product, at: float) -> float | None:
    """The line's cost per hour, in cents, at `at` (epoch seconds): 0 once it ended;
    None when it has no rate (not metered by time, licensed, or no unit price)."""
    per_hour = UNITS_PER_HOUR.get((product.unit or "").lower())
    if per_hour is None or (product.usage_type or "").lower() == "licensed":
        return None
    if product.unit_price is None or product.unit_price < 0:
        return None
    end = epoch_seconds(product.end)
    if end is not None and end <= at:
        return 0.0
    metadata = product.metadata
    divisor = metadata.billing_unit_divisor if metadata else None
    per_unit = product.unit_price / (divisor if divisor and divisor > 0 else 1.0)
    off = sum(
        d.value
        for d in product.discounts
        if (d.type or "").lower() == "percent" and d.value is not None and d.value > 0
    )
    return per_unit * per_hour * max(0.0, 1.0 - off / 100.0)


def run_rate(products: Iterable[Product], at: float) -> float | None:
    """The project's cost per hour, in cents, of the lines running at `at`; None when
    no line has a rate at all (then only a linear projection is possible)."""
    rates = [rate for rate in (line_rate(p, at) for p in products) if rate is not None]
    return sum(rates) if rates else None
