"""The spend curve drawn as inline SVG, for the status page: numbers in, markup out.

Server-side, so that the page stays one document with no script and no external
request under its strict Content-Security-Policy (`default-src 'none'`): an inline
`<svg>` with presentation attributes needs nothing the policy forbids. Only numbers
go into the markup, formatted here; the one text, the chart's accessible label, is
escaped. Each drawn element says what it shows in `data-series` (`curve`,
`projection`, `threshold`, `credit`, `now`), and the `<svg>` carries the plot's box
and the values at its edges, so that a test (or a person) maps any coordinate back to
its (time, price): `tests/test_curve.py` reads the points back within rounding.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from exporter.curve import Point

#: A project's chart, in SVG user units (drawn at the card's width).
CARD = (320, 90)
#: A team's chart.
TEAM = (640, 110)
#: Room around the plot, so that a line at its edge is drawn whole.
PAD = 4.0

COLOURS = {
    "axis": "#d0d7de",
    "curve": "#0969da",
    "projection": "#0969da",
    "threshold": "#cf222e",
    "credit": "#1a7f37",
}


@dataclass(frozen=True, slots=True)
class Level:
    """A horizontal line across the period: a threshold, or where the credit runs out."""

    series: str
    value: float


def svg(
    *,
    start: float,
    end: float,
    points: Sequence[Point],
    projection: float | None,
    levels: Sequence[Level] = (),
    label: str,
    size: tuple[int, int] = CARD,
) -> str:
    """The chart of `points` (oldest first) over the period [`start`, `end`], time to
    the right and price upwards from 0 (or the lowest value, if below): the curve, the
    last point marked, a dashed line from it to `projection` at the period's end, and
    each level across."""
    width, height = size
    x0, y0, x1, y1 = PAD, PAD, width - PAD, height - PAD
    values = [price for _, price in points] + [level.value for level in levels]
    if projection is not None:
        values.append(projection)
    bottom = min([0.0, *values])
    top = max([0.0, *values])
    if top <= bottom:
        top = bottom + 1.0

    def x(at: float) -> float:
        return x0 + (min(max(at, start), end) - start) / (end - start) * (x1 - x0)

    def y(price: float) -> float:
        return y1 - (min(max(price, bottom), top) - bottom) / (top - bottom) * (y1 - y0)

    text = html.escape(label, quote=True)
    parts = [
        f'<svg class="curve" viewBox="0 0 {width} {height}" role="img" aria-label="{text}" '
        f'data-start="{start!r}" data-end="{end!r}" data-bottom="{bottom!r}" '
        f'data-top="{top!r}" data-plot="{x0:g} {y0:g} {x1:g} {y1:g}">'
        f"<title>{text}</title>",
        _line("axis", x0, y(0.0), x1, y(0.0), width=1.0),
    ]
    for level in levels:
        parts.append(_line(level.series, x0, y(level.value), x1, y(level.value), width=1.0))
    if points:
        # The one loop over every point of every card: its arithmetic inline (a
        # thousand cards of 241 points in about 0.1 s). Points are in time order and
        # every price is within [bottom, top]: only the times may need clamping.
        if points[0][0] < start or points[-1][0] > end:
            points = [(min(max(at, start), end), price) for at, price in points]
        sx, sy = (x1 - x0) / (end - start), (y1 - y0) / (top - bottom)
        coordinates = " ".join(
            [
                f"{x0 + (at - start) * sx:.1f},{y1 - (price - bottom) * sy:.1f}"
                for at, price in points
            ]
        )
        parts.append(
            f'<polyline data-series="curve" points="{coordinates}" fill="none" '
            f'stroke="{COLOURS["curve"]}" stroke-width="1.5" stroke-linejoin="round"/>'
        )
        last_at, last_price = points[-1]
        if projection is not None and last_at < end:
            parts.append(
                _line(
                    "projection",
                    x(last_at),
                    y(last_price),
                    x(end),
                    y(projection),
                    width=1.5,
                    dashes="4 3",
                )
            )
        parts.append(
            f'<circle data-series="now" cx="{x(last_at):.1f}" cy="{y(last_price):.1f}" '
            f'r="2.5" fill="{COLOURS["curve"]}"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def legend(levels: Sequence[Level]) -> str:
    """What each line means, in words beside a piece of it (fixed text only)."""
    words = {"threshold": "threshold", "credit": "credit&nbsp;runs&nbsp;out"}
    items = [("curve", "spend"), ("projection", "projected")] + [
        (level.series, words.get(level.series, level.series)) for level in levels
    ]
    keys = [
        f'<svg class="key" viewBox="0 0 16 2" aria-hidden="true">'
        f"{_line(series, 0, 1, 16, 1, width=2, dashes='4 3' if series == 'projection' else '')}"
        f"</svg>{word} "
        for series, word in items
    ]
    return f'<div class="legend">{"".join(keys)}</div>'


def _line(
    series: str, xa: float, ya: float, xb: float, yb: float, *, width: float, dashes: str = ""
) -> str:
    dash = f' stroke-dasharray="{dashes}"' if dashes else ""
    return (
        f'<line data-series="{series}" x1="{xa:.1f}" y1="{ya:.1f}" x2="{xb:.1f}" '
        f'y2="{yb:.1f}" stroke="{COLOURS[series]}" stroke-width="{width:g}"{dash}/>'
    )
