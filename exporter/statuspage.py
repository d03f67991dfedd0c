"""The status page at `/`: what every project costs, at a glance, without Grafana.

Per team and project: spend so far, the threshold as a bar with the share used, credit
left, how far the billing period has gone, the spend projected to its end, the
period's spend curve with the projection, the threshold and where the credit runs out
(inline SVG, `chart.py`; per team, its projects' curves summed), the top products,
poll health with the last error, what is wrong with a team in words (a rejected
key, a timeout), since when and what to do, and each budget of the team as a bar. One
self-contained HTML document (no script, no external asset: it must work on an
air-gapped host and under a strict Content-Security-Policy) that reloads itself. Every
string from the API is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import quote

from exporter import chart, errors
from exporter.budgets import BudgetStatus, assess
from exporter.curve import Point, summed
from exporter.snapshot import ProjectStatus, StoreView, TeamStatus, UsageSnapshot

#: Seconds between reloads of the page: polls land every few minutes at most.
REFRESH_SECONDS = 30
TOP_PRODUCTS = 5
#: Below this share of the period gone, a projection would mostly be noise.
MIN_ELAPSED = 0.05

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1f2328;background:#fff}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.5em 0 .5em}
.meta,.muted{color:#656d76}.grid{display:flex;flex-wrap:wrap;gap:1em}
.card{border:1px solid #d0d7de;border-radius:8px;padding:1em;width:22em}
.card h3{margin:0;font-size:1.05em}.slug{color:#656d76;font-size:.9em}
.money{font-size:1.6em;font-weight:600;margin:.3em 0}
dl{display:grid;grid-template-columns:auto 1fr;gap:.1em .8em;margin:.5em 0}
dt{color:#656d76}dd{margin:0;text-align:right}
.bar{background:#eaeef2;border-radius:4px;height:.7em;overflow:hidden;margin:.2em 0}
.bar span{display:block;height:100%}.ok{background:#1a7f37}.warn{background:#bf8700}
.budgets td{padding:.15em .6em .15em 0}.budgetbar{width:12em}
.over{background:#cf222e}.period{background:#8250df}
table{width:100%;border-collapse:collapse;font-size:.9em}
td{padding:.1em 0;border-top:1px solid #eaeef2}td.n{text-align:right}
.up{color:#1a7f37}.down{color:#cf222e}.pending{color:#9a6700}
.warn-text{color:#cf222e;font-weight:600}
.problem{border-left:4px solid #cf222e;background:#fff5f5;padding:.5em .8em;margin:.3em 0 1em}
.curve{display:block;width:100%;height:auto;margin:.5em 0 .1em}
.team-chart{max-width:46em;margin:0 0 1em}.legend{font-size:.8em;color:#656d76}
.key{width:1.1em;height:2px;vertical-align:middle;margin:0 .2em 0 .4em}
.key:first-child{margin-left:0}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def money(value: float | None, currency: str) -> str:
    if value is None:
        return "n/a"
    sign = "-" if value < 0 else ""
    return f"{sign}{abs(value):,.2f} {currency}".strip()


def _share_class(share: float) -> str:
    return "ok" if share < 0.8 else "warn" if share < 1.0 else "over"


def _bar(share: float, kind: str, label: str) -> str:
    width = max(0.0, min(share, 1.0)) * 100
    return (
        f'<div class="bar" role="img" aria-label="{_e(label)}">'
        f'<span class="{kind}" style="width:{width:.1f}%"></span></div>'
    )


def projected(usage: UsageSnapshot, now: float) -> float | None:
    """Spend at the end of the period as the recording rule says it: the forecast from
    what runs now, or (where no line has a rate) at the pace so far."""
    if usage.projected_price is not None:
        return usage.projected_price
    return linear(usage, now)


def linear(usage: UsageSnapshot, now: float) -> float | None:
    """Spend at the end of the period at the pace so far."""
    start, end, price = usage.period_start, usage.period_end, usage.price
    if start is None or end is None or price is None or end <= start:
        return None
    elapsed = min(max((now - start) / (end - start), MIN_ELAPSED), 1.0)
    return price / elapsed


def _period(usage: UsageSnapshot) -> tuple[float, float] | None:
    start, end = usage.period_start, usage.period_end
    return (start, end) if start is not None and end is not None and end > start else None


def _series(status: ProjectStatus) -> list[Point]:
    """The project's kept points of its usage's period, then the live one (the last
    poll's price, when it was received) when it is newer than the last kept (by a
    second at least: kept times are to the second)."""
    usage = status.usage
    if usage is None:
        return []
    kept = status.curve
    points = kept.points() if kept is not None and kept.period_start == usage.period_start else []
    seen, price = status.last_success, usage.price
    if seen is not None and price is not None and (not points or seen >= points[-1][0] + 1):
        points.append((seen, price))
    return points


def _day(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")


def _project_chart(status: ProjectStatus, usage: UsageSnapshot, now: float) -> str:
    """The project's spend through its period: the curve, the projection to its end,
    the threshold and where the credit left runs out (the price now plus the credit:
    what `LatitudeshProjectedOverCredit` compares the projection with)."""
    period = _period(usage)
    points = _series(status)
    if period is None or not points:
        return ""
    currency = usage.currency
    projection = projected(usage, now)
    levels = []
    words = [f"{money(points[-1][1], currency)} now"]
    if projection is not None:
        words.append(f"{money(projection, currency)} projected at its end")
    if usage.threshold:
        levels.append(chart.Level("threshold", usage.threshold))
        words.append(f"threshold {money(usage.threshold, currency)}")
    credit = usage.available_credit_balance
    if credit is not None and credit > 0 and usage.price is not None:
        levels.append(chart.Level("credit", usage.price + credit))
        words.append(f"credit runs out at {money(usage.price + credit, currency)}")
    label = f"Spend through the period to {_day(period[1])}: {', '.join(words)}"
    return chart.svg(
        start=period[0],
        end=period[1],
        points=points,
        projection=projection,
        levels=levels,
        label=label,
    ) + chart.legend(levels)


def _team_charts(projects: Iterable[ProjectStatus], now: float) -> str:
    """Per currency, the team's projects in its newest period summed: their curves
    step-interpolated at the period's grid (`curve.summed`), and their projections."""
    groups: dict[str, dict[tuple[float, float], list[tuple[UsageSnapshot, list[Point]]]]] = {}
    for p in projects:
        usage = p.usage
        period = _period(usage) if usage is not None else None
        series = _series(p)
        if usage is not None and period is not None and series:
            groups.setdefault(usage.currency, {}).setdefault(period, []).append((usage, series))
    parts = []
    for currency, periods in sorted(groups.items()):
        (start, end), members = max(periods.items(), key=lambda item: item[0])
        points = summed([series for _, series in members], start=start, end=end)
        projection = 0.0
        for usage, series in members:
            ahead = projected(usage, now)
            projection += ahead if ahead is not None else series[-1][1]
        count = f"{len(members)} project{'' if len(members) == 1 else 's'}"
        label = (
            f"Team spend through the period to {_day(end)} ({count}): "
            f"{money(points[-1][1], currency)} now, "
            f"{money(projection, currency)} projected at its end"
        )
        parts.append(
            f'<div class="team-chart" data-field="team-curve" data-currency="{_e(currency)}">'
            + chart.svg(
                start=start,
                end=end,
                points=points,
                projection=projection,
                label=label,
                size=chart.TEAM,
            )
            + chart.legend(())
            + "</div>"
        )
    return "".join(parts)


def _project(status: ProjectStatus, now: float) -> str:
    usage = status.usage
    health = "up" if status.up else ("down" if status.polled else "pending")
    seen = (
        datetime.fromtimestamp(status.last_success, UTC).strftime("%Y-%m-%d %H:%M UTC")
        if status.last_success is not None
        else "never"
    )
    name = (
        usage.project_name
        if usage and usage.project_name
        else status.project_slug or status.project_id
    )
    parts = [
        f'<div class="card" data-project="{_e(status.project_id)}">',
        f'<h3>{_e(name)}</h3><div class="slug">{_e(status.project_id)}</div>',
    ]
    if usage is None:
        parts.append('<p class="muted">no billing data yet</p>')
    else:
        currency = usage.currency
        parts.append(
            f'<div class="money" data-field="spend">{_e(money(usage.price, currency))}</div>'
        )
        if usage.threshold:
            share = (usage.price or 0.0) / usage.threshold
            parts.append(_bar(share, _share_class(share), f"{share:.0%} of the threshold"))
            parts.append(
                f'<div class="muted" data-field="threshold">{share:.0%} of the '
                f"{_e(money(usage.threshold, currency))} threshold</div>"
            )
        rows = [("credit left", money(usage.available_credit_balance, currency), "credit")]
        projection = projected(usage, now)
        over = ""
        if projection is not None:
            how = "" if usage.projected_price is not None else " (linear: no line has a rate)"
            rows.append((f"projected at period end{how}", money(projection, currency), "projected"))
            if usage.run_rate is not None:
                rows.append(("running now", f"{money(usage.run_rate, currency)} / h", "run-rate"))
            if usage.threshold and projection > usage.threshold:
                over = "projected"  # on course to pass the threshold: say so in red
        closed = status.previous_period
        if closed is not None:
            ended = f" (to {_day(closed.period_end)})" if closed.period_end is not None else ""
            rows.append((f"last period{ended}", money(closed.price, closed.currency), "previous"))
        parts.append(
            "<dl>"
            + "".join(
                f'<dt>{_e(label)}</dt><dd data-field="{field}"'
                f"{' class=warn-text' if field == over else ''}>{_e(value)}</dd>"
                for label, value, field in rows
            )
            + "</dl>"
        )
        if (
            usage.period_start is not None
            and usage.period_end is not None
            and (usage.period_end > usage.period_start)
        ):
            gone = (now - usage.period_start) / (usage.period_end - usage.period_start)
            end = _day(usage.period_end)
            parts.append(_bar(gone, "period", f"{gone:.0%} of the period gone"))
            parts.append(
                f'<div class="muted" data-field="period">{min(max(gone, 0), 1):.0%}'
                f" of the period gone, ends {end}</div>"
            )
        parts.append(_project_chart(status, usage, now))
        top = sorted((p for p in usage.products if p.price), key=lambda p: -(p.price or 0))
        if top:
            parts.append(
                "<table>"
                + "".join(
                    f"<tr><td>{_e(p.name or p.product_id)}"
                    f"{' · ' + _e(p.hostname) if p.hostname else ''}</td>"
                    f'<td class="n">{_e(money(p.price, currency))}</td></tr>'
                    for p in top[:TOP_PRODUCTS]
                )
                + "</table>"
            )
    error = f" · last error: {_e(status.last_error)}" if status.last_error else ""
    parts.append(
        f'<p class="muted" data-field="health"><span class="{health}">{health}'
        f"</span> · last success {seen}{error}</p></div>"
    )
    return "".join(parts)


def _problem(team: TeamStatus, now: float) -> str:
    """What is wrong with the team, in words, since when, and what to do: the likeliest
    first-run failures (a mistyped key, a timeout) show here before any project does."""
    problem = team.problem
    if problem is None:
        return ""
    since = datetime.fromtimestamp(problem.since, UTC).strftime("%Y-%m-%d %H:%M UTC")
    origin = team.key_origin or "the configured key"
    return (
        f'<p class="problem" data-field="problem" data-reason="{_e(problem.reason)}">'
        f'<span class="down">{_e(errors.REASON_WORDS.get(problem.reason, problem.reason))}'
        f"</span> since {since} ({_e(_ago(now - problem.since))} ago) · "
        f"{_e(errors.hint(problem.reason, origin))}</p>"
    )


def _ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _downloads(team: str, projects: Iterable[ProjectStatus]) -> str:
    """The team's finance files (`downloads/`): this period's, and the last closed
    one's where a project has one."""
    query = f"team={quote(team, safe='')}"

    def links(period: str) -> str:
        q = _e(query + period)
        return (
            f'<a href="/showback.csv?{q}">CSV</a> · <a href="/showback.json?{q}">JSON</a> · '
            f'<a href="/focus.csv?{q}">FOCUS</a>'
        )

    closed = any(p.previous_period is not None for p in projects)
    last = f"; last period: {links('&period=previous')}" if closed else ""
    return f'<p class="meta" data-field="downloads">Download this period: {links("")}{last}</p>'


def _budgets(statuses: Iterable[BudgetStatus]) -> str:
    """Each budget of the team as a bar: the share spent, what the run rate takes it to
    by the period's end, and the date it runs out where that is before the end."""
    rows = []
    for status in statuses:
        budget = status.budget
        scope = {
            "project": f"project {budget.target}",
            "tag": f"tag {budget.target}",
        }.get(budget.scope, "whole team")
        amount = money(budget.amount, status.currency)
        if status.spent is None or status.spent_ratio is None:
            figures = "nothing measured yet" if status.found else "names nothing the team has"
            rows.append(
                f'<tr data-budget="{_e(scope)}"><td>{_e(scope)}</td><td colspan="2" '
                f'class="muted">{_e(figures)} · budget {_e(amount)}</td></tr>'
            )
            continue
        share = status.spent_ratio
        said = f"{money(status.spent, status.currency)} of {amount} ({share:.0%})"
        if status.projected_ratio is not None:
            said += f" · {status.projected_ratio:.0%} by the period's end"
        if (
            status.run_out is not None
            and status.period_end is not None
            and status.run_out < status.period_end
        ):
            out = datetime.fromtimestamp(status.run_out, UTC).strftime("%Y-%m-%d %H:%M UTC")
            said += f" · runs out {out}"
        rows.append(
            f'<tr data-budget="{_e(scope)}"><td>{_e(scope)}</td>'
            f'<td class="budgetbar">{_bar(share, _share_class(share), f"budget {share:.0%} spent")}'
            f"</td><td>{_e(said)}</td></tr>"
        )
    if not rows:
        return ""
    return f'<table class="budgets" data-field="budgets">{"".join(rows)}</table>'


def _team(
    team: TeamStatus,
    projects: Iterable[ProjectStatus],
    now: float,
    budgets: Iterable[BudgetStatus] = (),
) -> str:
    cards = [_project(p, now) for p in projects]
    totals: dict[str, float] = {}
    for p in projects:
        if p.usage is not None and p.usage.price is not None:
            totals[p.usage.currency] = totals.get(p.usage.currency, 0.0) + p.usage.price
    total = ", ".join(money(v, k) for k, v in sorted(totals.items())) or "n/a"
    return (
        f'<section data-team="{_e(team.name)}"><h2>{_e(team.name)} '
        f'<span class="muted">· {len(cards)} project{"" if len(cards) == 1 else "s"} · '
        f"{_e(total)} so far</span></h2>{_downloads(team.name, projects)}"
        f"{_problem(team, now)}{_budgets(budgets)}{_team_charts(projects, now)}"
        f'<div class="grid">{"".join(cards) or "<p class=muted>no projects yet</p>"}'
        "</div></section>"
    )


def render(view: StoreView, *, now: float, telemetry_path: str, version: str) -> bytes:
    by_team: dict[str, list[ProjectStatus]] = {t.name: [] for t in view.teams}
    for project in view.projects:
        by_team.setdefault(project.team, []).append(project)
    teams = {t.name: t for t in view.teams}
    budgets: dict[str, list[BudgetStatus]] = {}
    for status in assess(view):
        budgets.setdefault(status.team, []).append(status)
    sections = "".join(
        _team(teams.get(name) or TeamStatus(name), projects, now, budgets.get(name, ()))
        for name, projects in by_team.items()
    )
    path = _e(telemetry_path)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Latitude.sh billing · latitudesh-exporter</title><style>{_STYLE}</style></head>
<body><h1>Latitude.sh billing</h1>
<p class="meta">latitudesh-exporter {_e(version)} · figures from the last poll of each
project · <a href="{path}">{path}</a> · <a href="/healthz">/healthz</a> ·
<a href="/readyz">/readyz</a></p>
{sections or '<p class="muted">no teams yet</p>'}
</body></html>
""".encode()
