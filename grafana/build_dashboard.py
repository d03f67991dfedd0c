"""Writes grafana/dashboards/latitudesh-billing.json: run after changing a panel.

    python grafana/build_dashboard.py

The dashboard is generated rather than edited by hand so that every money panel is
built the same way: one query per currency, each with its Grafana currency unit (a
unit cannot come from a variable), every series deduplicated across exporter replicas
(`max without (instance, pod)`: two replicas must never double the money), and the
share-of-threshold colours the same everywhere. A test fails when the JSON in the
repository is not what this script writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "latitudesh-billing.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
#: Currencies with a Grafana unit of their own; any other shows as a plain number.
CURRENCIES = ("USD", "BRL", "EUR", "GBP")
#: The dashboard's selection of projects (the project variable follows the team one).
SELECTED = 'project_slug=~"$project", currency=~"$currency"'
MATCHER = "@CURRENCY@"
THRESHOLD_STEPS = [
    {"color": "green", "value": None},
    {"color": "orange", "value": 0.8},
    {"color": "red", "value": 1},
]


def one(expr: str) -> str:
    """One replica's copy of each series."""
    return f"max without (instance, pod) ({expr})"


def selected(metric: str, *matchers: str) -> str:
    """`metric` of the selected projects (and currency), each series once."""
    return one(metric + "{" + ", ".join((SELECTED, *matchers)) + "}")


def total(metric: str) -> str:
    """The selection's sum of `metric`, per currency: a template for `money_targets`."""
    return f"sum by (currency) ({selected(metric, MATCHER)})"


class Layout:
    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = 0
        self.y = 0
        self.row_height = 0

    def row(self, title: str) -> None:
        self.newline()
        self.panels.append(
            {
                "id": len(self.panels) + 1,
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1},
            }
        )
        self.y += 1

    def newline(self) -> None:
        if self.x:
            self.y += self.row_height
            self.x = 0
            self.row_height = 0

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self.newline()
        panel = {
            "id": len(self.panels) + 1,
            "datasource": DATASOURCE,
            **panel,
            "gridPos": {"x": self.x, "y": self.y, "w": w, "h": h},
        }
        for target in panel["targets"]:
            target.setdefault("datasource", DATASOURCE)
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)


def target(
    expr: str,
    ref: str = "A",
    legend: str | None = None,
    *,
    instant: bool = False,
    table: bool = False,
) -> dict[str, Any]:
    out: dict[str, Any] = {"refId": ref, "expr": expr}
    if legend is not None:
        out["legendFormat"] = legend
    if instant:
        out["instant"] = True
    if table:
        out["format"] = "table"
    return out


def money_targets(
    template: str, legend: str, *, instant: bool = False, table: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One query per currency (`@CURRENCY@` in `template` is its matcher) and the
    override that gives each its unit; one more for any other currency."""
    targets, overrides = [], []
    for index, code in enumerate(CURRENCIES):
        ref = chr(ord("A") + index)
        targets.append(
            target(
                template.replace(MATCHER, f'currency="{code}"'),
                ref,
                legend,
                instant=instant,
                table=table,
            )
        )
        overrides.append(
            {
                "matcher": {"id": "byFrameRefID", "options": ref},
                "properties": [{"id": "unit", "value": f"currency{code}"}],
            }
        )
    others = "|".join(CURRENCIES)
    targets.append(
        target(
            template.replace(MATCHER, f'currency!~"{others}"'),
            "Z",
            legend + " {{currency}}" if not table else None,
            instant=instant,
            table=table,
        )
    )
    return targets, overrides


def dashed(prefix: str, targets: list[dict[str, Any]], overrides: list[dict[str, Any]]) -> None:
    """`money_targets`' queries drawn dashed beside another set in one panel: their
    refIds (and the overrides that give their units) prefixed so that both sets fit."""
    for item in targets:
        item["refId"] = prefix + item["refId"]
    for item in overrides:
        item["matcher"]["options"] = prefix + item["matcher"]["options"]
        item["properties"].append(
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}
        )


def piechart(
    title: str, description: str, targets: list[dict[str, Any]], overrides: list[Any]
) -> dict[str, Any]:
    """A pie of money per something, its legend a table of values and shares."""
    return {
        "type": "piechart",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {"defaults": {"decimals": 2}, "overrides": overrides},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "legend": {
                "displayMode": "table",
                "placement": "right",
                "values": ["value", "percent"],
            },
        },
    }


def money_in(colour: str) -> dict[str, Any]:
    """Field defaults of money bars drawn in one colour (units come per currency)."""
    return {
        "decimals": 2,
        "thresholds": {"mode": "absolute", "steps": [{"color": colour, "value": None}]},
    }


def bargauge(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    defaults: dict[str, Any],
    overrides: list[Any],
) -> dict[str, Any]:
    """Horizontal gradient bars of the last value per series."""
    return {
        "type": "bargauge",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides},
        "options": {
            "orientation": "horizontal",
            "displayMode": "gradient",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
    }


def stat(
    title: str,
    description: str,
    template: str,
    *,
    legend: str = "{{currency}}",
    thresholds: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    targets, overrides = money_targets(template, legend, instant=True)
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "decimals": 2,
                "color": {"mode": "thresholds"},
                "thresholds": {
                    "mode": "absolute",
                    "steps": thresholds or [{"color": "blue", "value": None}],
                },
            },
            "overrides": overrides,
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "value_and_name",
            "justifyMode": "auto",
            "orientation": "auto",
        },
    }


def timeseries(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    overrides: list[dict[str, Any]] | None = None,
    unit: str | None = None,
    stack: bool = False,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"custom": {"lineWidth": 2, "fillOpacity": 10}}
    if unit:
        defaults["unit"] = unit
    if stack:
        defaults["custom"]["stacking"] = {"mode": "normal", "group": "A"}
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def table(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    overrides: list[dict[str, Any]],
    hide: list[str],
    rename: dict[str, str],
    sort: str,
) -> dict[str, Any]:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {"defaults": {"decimals": 2}, "overrides": overrides},
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": dict.fromkeys(
                        ["Time", "__name__", "job", "instance", "pod", "project_id", *hide], True
                    ),
                    "renameByName": rename,
                },
            },
            {"id": "sortBy", "options": {"sort": [{"field": sort, "desc": True}]}},
        ],
    }


def variables() -> list[dict[str, Any]]:
    def query(name: str, label: str, definition: str, *, multi: bool = True) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "query": {"query": definition, "refId": name},
            "multi": multi,
            "includeAll": True,
            "allValue": ".*",
            "refresh": 2,
            "sort": 1,
            "hide": 0,
            "options": [],
            "regex": "",
        }

    return [
        {
            "name": "DS_PROMETHEUS",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "hide": 0,
            "refresh": 1,
            "regex": "",
            "options": [],
        },
        query("team", "Team", "label_values(latitudesh_project_info, team)"),
        query(
            "project",
            "Project",
            'label_values(latitudesh_project_info{team=~"$team"}, project_slug)',
        ),
        query(
            "currency",
            "Currency",
            'label_values(latitudesh_project_info{team=~"$team", project_slug=~"$project"}, '
            "currency)",
        ),
        query(
            "tag",
            "Tag",
            'label_values(latitudesh_billing_tag_price{project_slug=~"$project"}, tag)',
        ),
    ]


THRESHOLD_SHARE = {
    "unit": "percentunit",
    "min": 0,
    "max": 1.2,
    "thresholds": {"mode": "absolute", "steps": THRESHOLD_STEPS},
}


def spend_row(layout: Layout) -> None:
    """Spend this billing period: what each project has cost and will cost."""
    layout.row("Spend this billing period")
    layout.add(
        stat(
            "Spend so far",
            "Usage price of the selected projects so far in the current billing "
            "period, per currency (the API's cents / 100), from the last poll.",
            total("latitudesh_billing_price"),
        ),
        w=5,
        h=5,
    )
    layout.add(
        stat(
            "Projected at period end",
            "Spend at the end of the period from what runs now (the run-rate "
            "forecast), or at the pace so far where no line has a rate "
            "(latitudesh:billing_price:projected_end_of_period).",
            total("latitudesh:billing_price:projected_end_of_period"),
        ),
        w=5,
        h=5,
    )
    layout.add(
        stat(
            "Credit left",
            "Available credit balance of the selected projects; negative when overdrawn.",
            total("latitudesh_billing_available_credit_balance"),
            thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 0}],
        ),
        w=5,
        h=5,
    )
    layout.add(
        {
            "type": "gauge",
            "title": "Billing period elapsed",
            "description": "How far the current billing period has gone (the most advanced "
            "of the selected projects).",
            "targets": [
                target(
                    "max("
                    + one('latitudesh:billing_period_elapsed:ratio{project_slug=~"$project"}')
                    + ")",
                    instant=True,
                )
            ],
            "fieldConfig": {
                "defaults": {
                    "unit": "percentunit",
                    "min": 0,
                    "max": 1,
                    "thresholds": {"mode": "absolute", "steps": [{"color": "blue", "value": None}]},
                },
                "overrides": [],
            },
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        },
        w=3,
        h=5,
    )
    layout.add(
        bargauge(
            "Share of threshold used",
            "Spend as a share of each project's charging threshold "
            "(latitudesh:billing_threshold_used:ratio): green under 80 %, orange "
            "up to 100 %, red beyond. Alerts fire at 80 % and 100 %.",
            [
                target(
                    one("latitudesh:billing_threshold_used:ratio{" + SELECTED + "}"),
                    legend="{{project_slug}}",
                    instant=True,
                )
            ],
            THRESHOLD_SHARE,
            [],
        ),
        w=6,
        h=5,
    )

    targets, overrides = money_targets(
        one("latitudesh_billing_price{" + SELECTED + ", @CURRENCY@}"), "{{project_slug}}"
    )
    thresholds, threshold_overrides = money_targets(
        one("latitudesh_billing_threshold{" + SELECTED + ", @CURRENCY@}"),
        "{{project_slug}} threshold",
    )
    dashed("T", thresholds, threshold_overrides)
    layout.add(
        timeseries(
            "Spend over time per project",
            "Each project's spend so far in the period, with its threshold "
            "dashed. It falls back to zero when a new period starts.",
            targets + thresholds,
            overrides + threshold_overrides,
        ),
        w=12,
        h=8,
    )
    targets, overrides = money_targets(
        one("latitudesh:billing_run_rate:per_hour{" + SELECTED + ", @CURRENCY@}"),
        "{{project_slug}}",
    )
    band, band_overrides = money_targets(
        one("latitudesh:billing_run_rate:expected{" + SELECTED + ", @CURRENCY@}"),
        "{{project_slug}} expected",
    )
    dashed("E", band, band_overrides)
    layout.add(
        timeseries(
            "Run rate per hour and its anomaly band",
            "What runs now costs per hour (latitudesh:billing_run_rate:per_hour), and "
            "dashed the top of what its last day, the same hour yesterday and a week ago "
            "make expected (latitudesh:billing_run_rate:expected): LatitudeshSpendAnomaly "
            "fires when the rate stands well above the dashed line for an hour.",
            targets + band,
            overrides + band_overrides,
        ),
        w=12,
        h=8,
    )
    layout.add(
        stat(
            "Running now, per hour",
            "What the lines running at the last poll cost per hour: metered hour and "
            "minute lines not ended, at their unit price, less percent discounts "
            "(latitudesh_billing_run_rate_per_hour).",
            total("latitudesh_billing_run_rate_per_hour"),
        ),
        w=6,
        h=8,
    )
    forecast, forecast_overrides = money_targets(
        total("latitudesh_billing_projected_price"), "forecast {{currency}}"
    )
    linear, linear_overrides = money_targets(
        total("latitudesh:billing_price:projected_linear"), "linear {{currency}}"
    )
    dashed("L", linear, linear_overrides)
    layout.add(
        timeseries(
            "Projected at period end: forecast and linear",
            "The forecast from what runs now (the spend so far plus the run rate over "
            "the hours left) beside the linear projection (the spend so far over the "
            "share of the period gone, dashed). A server added makes the forecast jump "
            "by its remaining cost at once, where the linear one creeps.",
            forecast + linear,
            forecast_overrides + linear_overrides,
        ),
        w=18,
        h=8,
    )
    team_targets, team_overrides = money_targets(
        'latitudesh:billing_price:sum_by_team{team=~"$team", currency=~"$currency", @CURRENCY@}',
        "{{team}}",
    )
    layout.add(
        timeseries(
            "Spend per team",
            "Spend of each team (one API key) across its projects "
            "(latitudesh:billing_price:sum_by_team).",
            team_targets,
            team_overrides,
        ),
        w=24,
        h=7,
    )


#: A budget's name in a legend: its team, and its project or tag (or the whole team).
BUDGET_LEGEND = "{{team}} {{scope}} {{project_id}}{{tag}}"
BUDGETS = 'team=~"$team"'


def budget_row(layout: Layout) -> None:
    """The config's budgets: spent, projected by the run rate, and when they run out."""
    layout.row("Budgets")
    for title, metric, description in (
        (
            "Budget spent",
            "latitudesh_budget_spent_ratio",
            "Each budget of the config (`budgets`): the share of its amount its scope "
            "(a team, a project or a tag) has spent this period.",
        ),
        (
            "Budget at period end, at the run rate",
            "latitudesh_budget_projected_ratio",
            "The share of each budget its scope will have spent by the period's end if "
            "what runs now keeps running (latitudesh_budget_projected_ratio).",
        ),
    ):
        layout.add(
            bargauge(
                title,
                description,
                [target(one(metric + "{" + BUDGETS + "}"), legend=BUDGET_LEGEND, instant=True)],
                THRESHOLD_SHARE,
                [],
            ),
            w=8,
            h=7,
        )
    amount = "latitudesh_budget_amount{" + BUDGETS + "}"
    run_out = "latitudesh_budget_run_out_timestamp_seconds{" + BUDGETS + "}"
    layout.add(
        table(
            "When budgets run out",
            "Each budget's amount and the time its scope's run rate spends the rest "
            "(latitudesh_budget_run_out_timestamp_seconds); empty once it is spent or "
            "when nothing runs.",
            [
                target(one(amount), "A", instant=True, table=True),
                target(one(run_out) + " * 1000", "B", instant=True, table=True),
            ],
            [
                {
                    "matcher": {"id": "byName", "options": "Value #B"},
                    "properties": [{"id": "unit", "value": "dateTimeAsIso"}],
                },
            ],
            [],
            {"Value #A": "amount", "Value #B": "runs out"},
            "runs out",
        ),
        w=8,
        h=7,
    )


def money_row(layout: Layout) -> None:
    """Where the money goes: products, plans and resources."""
    layout.row("Where the money goes")
    targets, overrides = money_targets(
        "topk(20, " + one("latitudesh_billing_product_price{" + SELECTED + ", @CURRENCY@}") + ")",
        "",
        instant=True,
        table=True,
    )
    layout.add(
        table(
            "Top products by cost",
            "The 20 costliest product lines of the selected projects, with the "
            "server and plan behind each.",
            targets,
            overrides,
            ["product_id"],
            {
                "Value": "Price",
                "project_slug": "Project",
                "product_name": "Product",
                "resource": "Resource",
                "plan": "Plan",
                "hostname": "Hostname",
                "unit": "Unit",
                "usage_type": "Usage type",
                "currency": "Currency",
            },
            "Price",
        ),
        w=12,
        h=10,
    )
    targets, overrides = money_targets(
        "sum by (plan, currency) ("
        + one("latitudesh:billing_product_price:sum_by_plan{" + SELECTED + ", @CURRENCY@}")
        + ")",
        "{{plan}}",
        instant=True,
    )
    layout.add(
        piechart(
            "Spend by plan",
            "Product spend of the selected projects per server plan "
            "(empty: products without a plan, e.g. storage).",
            targets,
            overrides,
        ),
        w=6,
        h=10,
    )
    targets, overrides = money_targets(
        "sum by (resource, currency) ("
        + one("latitudesh:billing_product_price:sum_by_resource{" + SELECTED + ", @CURRENCY@}")
        + ")",
        "{{resource}}",
        instant=True,
    )
    layout.add(
        piechart(
            "Spend by resource",
            "Product spend of the selected projects per resource type "
            "(bare metal, virtual machines, storage, IPs, licences).",
            targets,
            overrides,
        ),
        w=6,
        h=10,
    )
    layout.add(
        timeseries(
            "Quantity used per unit",
            "Units used so far by the selected projects, per unit (hours, minutes, GB, quantity).",
            [
                target(
                    "sum by (unit) ("
                    + one('latitudesh_billing_product_quantity{project_slug=~"$project"}')
                    + ")",
                    legend="{{unit}}",
                )
            ],
            unit="short",
        ),
        w=24,
        h=7,
    )


def showback_row(layout: Layout) -> None:
    """Showback: the spend of each server and tag."""
    layout.row("Showback: servers and tags")
    targets, overrides = money_targets(
        "sum by (tag, currency) ("
        + one("latitudesh_billing_tag_price{" + SELECTED + ', tag=~"$tag", @CURRENCY@}')
        + ")",
        "{{tag}}",
        instant=True,
    )
    layout.add(
        bargauge(
            "Spend by tag",
            "Spend of the servers carrying each tag. A server counts "
            "under each of its tags, so tags overlap and do not add up. "
            "__untagged__: servers without tags; __unattributed__: lines "
            "without servers (storage, IPs, licences).",
            targets,
            money_in("blue"),
            overrides,
        ),
        w=12,
        h=9,
    )
    layout.add(
        {
            "type": "stat",
            "title": "Untagged and unattributed share",
            "description": "Share of the selected projects' spend that cannot be shown back: "
            "on servers without a tag (alert LatitudeshUntaggedSpendHigh at 20 % "
            "of server spend), and on lines without any server.",
            "targets": [
                target(
                    "sum by (currency) ("
                    + one("latitudesh_billing_tag_price{" + SELECTED + f', tag="{tag}"' + "}")
                    + ") / sum by (currency) ("
                    + one("latitudesh_billing_price{" + SELECTED + "}")
                    + ")",
                    ref,
                    f"{tag.strip('_')} {{{{currency}}}}",
                    instant=True,
                )
                for ref, tag in (("A", "__untagged__"), ("B", "__unattributed__"))
            ],
            "fieldConfig": {
                "defaults": {
                    "unit": "percentunit",
                    "decimals": 1,
                    "thresholds": {
                        "mode": "absolute",
                        "steps": [
                            {"color": "green", "value": None},
                            {"color": "orange", "value": 0.2},
                        ],
                    },
                },
                "overrides": [],
            },
            "options": {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "value",
                "graphMode": "none",
                "textMode": "value_and_name",
                "justifyMode": "auto",
                "orientation": "auto",
            },
        },
        w=4,
        h=9,
    )
    targets, overrides = money_targets(
        "sum by (location, bucket_name, currency) ("
        + one("latitudesh_billing_product_price{" + SELECTED + ", @CURRENCY@}")
        + " * on (project_id, product_id) group_left (bucket_name, location) "
        + one('latitudesh_billing_product_bucket_info{project_slug=~"$project"}')
        + ")",
        "{{bucket_name}} ({{location}})",
        instant=True,
    )
    layout.add(
        bargauge(
            "Storage by bucket and location",
            "Spend of product lines that bill for a storage bucket, per bucket and location.",
            targets,
            money_in("purple"),
            overrides,
        ),
        w=8,
        h=9,
    )
    targets, overrides = money_targets(
        "topk(20, " + one("latitudesh_billing_server_price{" + SELECTED + ", @CURRENCY@}") + ")",
        "",
        instant=True,
        table=True,
    )
    layout.add(
        table(
            "Top servers by cost",
            "Each server's share of the spend (a line's price split evenly over "
            "the servers it lists), the 20 costliest; their tags are in the next "
            "table.",
            targets,
            overrides,
            [],
            {
                "Value": "Price",
                "project_slug": "Project",
                "server_id": "Server",
                "hostname": "Hostname",
                "plan": "Plan",
                "currency": "Currency",
            },
            "Price",
        ),
        w=12,
        h=10,
    )
    layout.add(
        table(
            "Server tags",
            "One row per server and tag (latitudesh_billing_server_tag_info), for "
            "the servers of the selected projects carrying the selected tags.",
            [
                target(
                    one(
                        'latitudesh_billing_server_tag_info{project_slug=~"$project", tag=~"$tag"}'
                    ),
                    instant=True,
                    table=True,
                )
            ],
            [],
            ["Value"],
            {
                "project_slug": "Project",
                "server_id": "Server",
                "hostname": "Hostname",
                "tag": "Tag",
            },
            "Tag",
        ),
        w=12,
        h=10,
    )


def last_period_row(layout: Layout) -> None:
    """The last closed period: what it cost, per project and tag, and how late its
    figures were seen."""
    layout.row("Last period")
    layout.add(
        stat(
            "Last period's bill",
            "What the selected projects' last closed billing period cost: the price "
            "of the last answer seen in it (latitudesh_billing_previous_period_price). "
            "Kept across restarts in the exporter's state file.",
            total("latitudesh_billing_previous_period_price"),
        ),
        w=6,
        h=8,
    )
    targets, overrides = money_targets(
        one("latitudesh_billing_previous_period_price{" + SELECTED + ", @CURRENCY@}"),
        "{{project_slug}}",
        instant=True,
    )
    layout.add(
        bargauge(
            "Last period per project",
            "Each project's bill for its last closed period.",
            targets,
            money_in("blue"),
            overrides,
        ),
        w=6,
        h=8,
    )
    targets, overrides = money_targets(
        "sum by (tag, currency) ("
        + one(
            "latitudesh_billing_previous_period_tag_price{"
            + SELECTED
            + ', tag=~"$tag", @CURRENCY@}'
        )
        + ")",
        "{{tag}}",
        instant=True,
    )
    layout.add(
        bargauge(
            "Last period by tag",
            "Spend of the servers carrying each tag in the last closed period (tags "
            "overlap, as in Spend by tag).",
            targets,
            money_in("purple"),
            overrides,
        ),
        w=6,
        h=8,
    )
    layout.add(
        bargauge(
            "Last figures seen before the period's end",
            "How long before its period's end the last answer of each closed period "
            "was received: its figures miss at most that much spend.",
            [
                target(
                    one(
                        "latitudesh_billing_previous_period_end_timestamp_seconds"
                        '{project_slug=~"$project"} - '
                        "latitudesh_billing_previous_period_observed_timestamp_seconds"
                        '{project_slug=~"$project"}'
                    ),
                    legend="{{project_slug}}",
                    instant=True,
                )
            ],
            {
                "unit": "s",
                "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
            },
            [],
        ),
        w=6,
        h=8,
    )


def health_row(layout: Layout) -> None:
    """Exporter health: polls, errors, budget and freshness."""
    layout.row("Exporter health")
    layout.add(
        {
            "type": "stat",
            "title": "Projects polled successfully",
            "description": "latitudesh_up per project: 1 when its last poll succeeded. A project "
            "at 0 keeps its last good figures.",
            "targets": [
                target(
                    "min without (instance, pod) (latitudesh_up and on (project_id) "
                    'latitudesh_project_info{team=~"$team", project_slug=~"$project"})',
                    legend="{{project_id}}",
                    instant=True,
                )
            ],
            "fieldConfig": {
                "defaults": {
                    "mappings": [
                        {
                            "type": "value",
                            "options": {
                                "0": {"text": "DOWN", "color": "red"},
                                "1": {"text": "UP", "color": "green"},
                            },
                        }
                    ],
                    "thresholds": {
                        "mode": "absolute",
                        "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}],
                    },
                },
                "overrides": [],
            },
            "options": {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "background",
                "graphMode": "none",
                "textMode": "value_and_name",
                "justifyMode": "auto",
                "orientation": "auto",
            },
        },
        w=6,
        h=7,
    )
    layout.add(
        timeseries(
            "Data age",
            "Seconds since each project's last successful poll, against its team's poll "
            "interval (LatitudeshDataStale fires at three intervals).",
            [
                target(
                    "time() - "
                    + one(
                        "latitudesh_last_success_timestamp_seconds and on "
                        '(project_id) latitudesh_project_info{team=~"$team", '
                        'project_slug=~"$project"}'
                    ),
                    "A",
                    "{{project_id}}",
                ),
                target(
                    one('latitudesh_poll_effective_interval_seconds{team=~"$team"}'),
                    "B",
                    "interval {{team}}",
                ),
            ],
            unit="s",
        ),
        w=9,
        h=7,
    )
    layout.add(
        timeseries(
            "Poll and discovery errors by reason",
            "Failed polls and project discoveries per reason, per team (one replica's count).",
            [
                target(
                    "sum by (reason) ("
                    + one(
                        "increase(latitudesh_poll_errors_total[$__rate_interval])"
                        " * on (instance, project_id) group_left max by (instance, project_id)"
                        ' (latitudesh_project_info{team=~"$team"})'
                    )
                    + ")",
                    "A",
                    "poll {{reason}}",
                ),
                target(
                    "sum by (team, reason) ("
                    + one(
                        'increase(latitudesh_discovery_errors_total{team=~"$team"}[$__rate_interval])'
                    )
                    + ")",
                    "B",
                    "discovery {{team}} {{reason}}",
                ),
            ],
            unit="short",
        ),
        w=9,
        h=7,
    )
    layout.add(
        timeseries(
            "API requests by status code",
            "Requests each team's key sends to the Latitude.sh API (60 a minute at most), by "
            "endpoint and status; timeout and network when no complete answer came.",
            [
                target(
                    "sum by (team, endpoint, code) ("
                    + one('rate(latitudesh_api_requests_total{team=~"$team"}[$__rate_interval])')
                    + ")",
                    legend="{{team}} {{endpoint}} {{code}}",
                )
            ],
            unit="reqps",
        ),
        w=12,
        h=7,
    )
    layout.add(
        timeseries(
            "Poll and refresh duration",
            "Wall time of each project's last poll (retries and budget waits included) and "
            "of each team's last full refresh.",
            [
                target(
                    one(
                        "latitudesh_poll_duration_seconds and on (project_id) "
                        'latitudesh_project_info{team=~"$team", project_slug=~"$project"}'
                    ),
                    "A",
                    "{{project_id}}",
                ),
                target(
                    one('latitudesh_refresh_duration_seconds{team=~"$team"}'),
                    "B",
                    "refresh {{team}}",
                ),
            ],
            unit="s",
        ),
        w=12,
        h=7,
    )


def build() -> dict[str, Any]:
    layout = Layout()
    for row in (spend_row, budget_row, last_period_row, money_row, showback_row, health_row):
        row(layout)
    return {
        "title": "Latitude.sh billing",
        "uid": "latitudesh-billing",
        "description": "Spend, projections, thresholds, credit and showback of Latitude.sh "
        "projects, from latitudesh-exporter.",
        "tags": ["latitudesh", "billing", "cost"],
        "timezone": "",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 2,
        "refresh": "1m",
        "time": {"from": "now-7d", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": variables()},
        "panels": layout.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
