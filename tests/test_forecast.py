"""The forecast from what runs now: figures worked by hand, from answers as the API sends.

Each answer goes through the live path (bytes → models → `build_usage`), received at
`AT`, in a 30-day period (720 hours) of which 480 are gone and 240 left, unless a test
says otherwise.
"""

from __future__ import annotations

from typing import Any

import pytest

from exporter import statuspage
from exporter.store import SnapshotStore
from tests.conftest import usage_of

START = "2026-11-01T00:00:00Z"
END = "2026-12-01T00:00:00Z"
AT = 1_795_219_200.0  # 2026-11-21T00:00:00Z: 480 h gone, 240 h left
YESTERDAY = "2026-11-20T00:00:00Z"
TOMORROW = "2026-11-22T00:00:00Z"


def line(
    unit_price: float | None,
    *,
    unit: str = "hour",
    usage_type: str = "metered",
    end: str | None = None,
    price: float = 0,
    discounts: list[dict[str, Any]] | None = None,
    divisor: float | None = None,
) -> dict[str, Any]:
    """One product line, money in cents as the API counts it."""
    return {
        "id": f"pr_{unit}_{unit_price}_{end}",
        "resource": "bare_metal",
        "name": "a server",
        "unit": unit,
        "usage_type": usage_type,
        "unit_price": unit_price,
        "quantity": 1,
        "price": price,
        "start": START,
        "end": end,
        "discounts": discounts or [],
        "metadata": {"billing_unit_divisor": divisor} if divisor is not None else {},
    }


def answer(price: float, *lines: dict[str, Any], start: str = START, end: str = END) -> Any:
    return {
        "data": {
            "attributes": {
                "project": {"id": "p", "slug": "p", "name": "P"},
                "period": {"start": start, "end": end},
                "price": price,
                "threshold": 100_000,
                "products": list(lines),
            }
        }
    }


def forecast(payload: Any, at: float = AT) -> tuple[float | None, float | None]:
    usage = usage_of(payload, "p", at=at)
    return usage.run_rate, usage.projected_price


def test_the_worked_example_of_the_readme() -> None:
    """2.00/h running with 10 % off, a line that ended, a licensed line: 1.80/h; with
    280.00 spent and 480 hours left, 1,144.00."""
    payload = answer(
        28_000,
        line(200, discounts=[{"description": "Monthly", "type": "percent", "value": 10}]),
        line(500, end=YESTERDAY, price=10_000),
        line(9_900, usage_type="licensed", price=9_900),
        start="2026-11-01T00:00:00Z",
        end="2026-12-11T00:00:00Z",  # 480 h after AT
    )
    rate, projected = forecast(payload)
    assert rate == pytest.approx(1.80)
    assert projected == pytest.approx(1_144.00)


def test_a_server_added_yesterday_is_forecast_where_the_linear_projection_misses_it() -> None:
    """1.00/h since the start (480.00 so far) and 10.00/h since yesterday (240.00): the
    period ends at 720.00 + 11.00 x 240 = 3,360.00. The linear projection, 720.00 over
    two thirds of the period, says 1,080.00: short by 2,280.00, nearly the new server's
    remaining 2,400.00."""
    payload = answer(72_000, line(100, price=48_000), line(1_000, price=24_000))
    rate, projected = forecast(payload)
    assert rate == pytest.approx(11.00)
    assert projected == pytest.approx(3_360.00)
    usage = usage_of(payload, "p", at=AT)
    assert statuspage.linear(usage, AT) == pytest.approx(1_080.00)


def test_a_server_deleted_yesterday_adds_nothing_more() -> None:
    """10.00/h for 456 h, deleted yesterday (4,560.00), beside 1.00/h running (480.00):
    5,040.00 + 1.00 x 240 = 5,280.00, where the linear projection says 7,560.00."""
    payload = answer(504_000, line(1_000, end=YESTERDAY, price=456_000), line(100, price=48_000))
    rate, projected = forecast(payload)
    assert rate == pytest.approx(1.00)
    assert projected == pytest.approx(5_280.00)
    assert statuspage.linear(usage_of(payload, "p", at=AT), AT) == pytest.approx(7_560.00)


def test_a_line_that_ends_later_still_runs_now() -> None:
    rate, _ = forecast(answer(0, line(100, end=TOMORROW)))
    assert rate == pytest.approx(1.00)


@pytest.mark.parametrize(
    ("product", "per_hour"),
    [
        (line(5, unit="minute"), 3.00),  # 0.05 a minute
        (line(300, divisor=100), 0.03),  # 3.00 for 100 hours
        (line(300, unit="MINUTE", divisor=600), 0.30),  # units are read case-blind
        (line(200, discounts=[{"type": "percent", "value": 5}] * 2), 1.80),  # 10 % in all
        (line(200, discounts=[{"type": "percent", "value": 150}]), 0.00),  # never negative
        (line(200, discounts=[{"type": "amount", "value": 50}]), 2.00),  # in the price so far
        (line(200, discounts=[{"type": "voucher", "value": 50}]), 2.00),  # unknown: not read
    ],
)
def test_units_divisors_and_discounts(product: dict[str, Any], per_hour: float) -> None:
    rate, _ = forecast(answer(0, product))
    assert rate == pytest.approx(per_hour)


@pytest.mark.parametrize(
    "product",
    [
        line(200, usage_type="licensed"),
        line(200, unit="quantity"),
        line(200, unit="GB"),
        line(None),
    ],
    ids=["licensed", "quantity", "GB", "no unit price"],
)
def test_a_project_without_a_rate_has_no_forecast_and_the_page_says_linear(
    product: dict[str, Any],
) -> None:
    payload = answer(10_000, product)
    assert forecast(payload) == (None, None)
    store = SnapshotStore()
    store.add_team("t")
    store.set_projects("t", [("p", "")])
    store.record_success("t", usage_of(payload, "p", at=AT), duration=0.1, now=AT)
    page = statuspage.render(store.view(), now=AT, telemetry_path="/metrics", version="1").decode()
    assert "projected at period end (linear: no line has a rate)" in page
    assert "150.00 USD" in page  # 100.00 over two thirds of the period
    assert "running now" not in page


def test_the_page_shows_the_forecast_and_what_runs_now() -> None:
    payload = answer(72_000, line(100, price=48_000), line(1_000, price=24_000))
    store = SnapshotStore()
    store.add_team("t")
    store.set_projects("t", [("p", "")])
    store.record_success("t", usage_of(payload, "p", at=AT), duration=0.1, now=AT)
    page = statuspage.render(store.view(), now=AT, telemetry_path="/metrics", version="1").decode()
    assert '<dd data-field="projected" class=warn-text>3,360.00 USD</dd>' in page  # over
    assert '<dd data-field="run-rate">11.00 USD / h</dd>' in page
    assert "linear" not in page


def test_all_stopped_heads_for_the_price_so_far() -> None:
    rate, projected = forecast(answer(50_000, line(1_000, end=YESTERDAY, price=50_000)))
    assert (rate, projected) == (0.0, 500.00)


def test_after_the_period_end_nothing_is_left_to_add() -> None:
    rate, projected = forecast(answer(50_000, line(100)), at=AT + 400 * 3600)
    assert rate == pytest.approx(1.00)
    assert projected == pytest.approx(500.00)


def test_a_stored_answer_is_forecast_as_of_when_it_was_received() -> None:
    """A warm start reads a stored answer at its own time: the server added an hour
    before it ran 240 h more from then, whenever the process reads it again."""
    payload = answer(72_000, line(100, price=48_000), line(1_000, price=24_000))
    assert forecast(payload, at=AT)[1] == pytest.approx(3_360.00)
    earlier = forecast(payload, at=AT - 24 * 3600)[1]
    assert earlier == pytest.approx(720.00 + 11.00 * 264)
