"""The simulated Latitude.sh accounts behind `--demo`: two teams whose usage grows as you watch.

A team billed in USD (hourly metered servers tagged by role, a per-minute VM, a
licence, object storage in two buckets and locations, per-1,000-call API usage, a
percent and an amount discount; one project without a threshold, one crossing it
within minutes, one running out of credit) and a team billed in BRL. `DemoAccount`
computes, at any instant of its clock, the `/billing/usage` and `/projects` answers a
real account would give: they validate against the billing_usage schema of the newest
official spec, and `shape="old"` answers in the older one that live accounts may still
return. Data and arithmetic only; `demo.py` serves them over HTTP.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

HOUR = 3600.0
DAY = 24 * HOUR
PERIOD = 30 * DAY
#: A simulated account starts this far into its billing period, so there is spend to
#: look at.
START_ELAPSED = 12 * DAY
#: `--demo` starts three simulated hours before its period's end (three real minutes at
#: the default speed): the period closes within the first minutes, so that the last
#: period's bill shows, and a new one begins.
DEMO_START_ELAPSED = PERIOD - 3 * HOUR
#: Simulated seconds per real second: one real minute is a simulated hour.
DEFAULT_SPEED = 60.0
#: Units metered by the clock, as units per hour.
CLOCK_UNITS = {"hour": 1, "minute": 60}


@dataclass(frozen=True, slots=True)
class DemoServer:
    id: str
    hostname: str
    plan: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DemoBucket:
    id: str
    name: str
    location: str | None


@dataclass(frozen=True, slots=True)
class DemoProduct:
    id: str
    name: str
    resource: str
    unit: str  # hour, minute, quantity, GB
    usage_type: str  # metered, licensed
    unit_price: float  # cents per simulated unit (per real one times the speed in answers)
    #: metered: units used per simulated hour, counted in hours (a server running all
    #: the time is 1; a `minute` unit converts it); licensed: the fixed quantity
    rate: float
    servers: tuple[DemoServer, ...] = ()
    bucket: DemoBucket | None = None
    billing_unit_divisor: int | None = None
    discounts: tuple[tuple[str, str, float], ...] = ()
    #: Simulated hours into each period when the line begins (a server created then):
    #: absent from the answers before, billed from then on.
    starts_hour: float = 0.0


@dataclass(slots=True)
class DemoProject:
    id: str
    slug: str
    name: str
    threshold: int | None
    credit: int
    products: list[DemoProduct]


def default_projects() -> list[DemoProject]:
    """The USD team: every kind of product line, every state a project can be in."""
    web1 = DemoServer("sv_web01", "web-01", "c2-small-x86", ("web", "prod"))
    web2 = DemoServer("sv_web02", "web-02", "c2-small-x86", ("web", "prod"))
    gpu = DemoServer("sv_gpu01", "trainer-01", "g3-h100-large", ("ml", "prod"))
    lake = DemoBucket("bkt_lake", "lake-raw", "SAO")
    backups = DemoBucket("bkt_backups", "backups", "NYC")
    return [
        DemoProject(
            "proj_demo_web",
            "web-platform",
            "Web Platform",
            threshold=200_000,
            credit=30_000,
            products=[
                DemoProduct(
                    "si_bm_web",
                    "c2.small.x86",
                    "bare_metal",
                    "hour",
                    "metered",
                    unit_price=30,
                    rate=2,
                    servers=(web1, web2),
                    discounts=(("Monthly Discount - Accelerate", "percent", 10.0),),
                ),
                DemoProduct(
                    "si_vm_ci",
                    "vm.tiny",
                    "virtual_machine",
                    "minute",
                    "metered",
                    unit_price=0.1,
                    rate=1,
                    servers=(DemoServer("vm_ci01", "ci-runner", "vm-tiny", ("ci",)),),
                ),
                DemoProduct(
                    "si_lic_win",
                    "Windows Server license",
                    "license",
                    "quantity",
                    "licensed",
                    unit_price=2500,
                    rate=2,
                ),
                DemoProduct(
                    "si_eip", "Elastic IP", "elastic_ip", "hour", "metered", unit_price=0.5, rate=1
                ),
            ],
        ),
        DemoProject(
            "proj_demo_gpu",
            "ml-training",
            "ML Training",
            threshold=130_000,
            credit=500_000,
            products=[
                DemoProduct(
                    "si_gpu",
                    "g3.h100.large",
                    "bare_metal",
                    "hour",
                    "metered",
                    unit_price=450,
                    rate=1,
                    servers=(gpu,),
                    discounts=(("Startup program credit", "amount", 5000.0),),
                ),
            ],
        ),
        DemoProject(
            "proj_demo_data",
            "data-lake",
            "Data Lake",
            threshold=None,
            credit=80_000,
            products=[
                DemoProduct(
                    "si_obj",
                    "Object storage",
                    "object_storage",
                    "GB",
                    "metered",
                    unit_price=2,
                    rate=5,
                    bucket=lake,
                ),
                DemoProduct(
                    "si_obj_backup",
                    "Object storage",
                    "object_storage",
                    "GB",
                    "metered",
                    unit_price=1,
                    rate=3,
                    bucket=backups,
                ),
                DemoProduct(
                    "si_api_calls",
                    "Storage API calls",
                    "object_storage",
                    "quantity",
                    "metered",
                    unit_price=1,
                    rate=40_000,
                    billing_unit_divisor=1000,
                    bucket=lake,
                ),
            ],
        ),
        DemoProject(
            "proj_demo_dev",
            "dev-sandbox",
            "Dev Sandbox",
            threshold=50_000,
            credit=12_000,
            products=[
                DemoProduct(
                    "si_vm_dev",
                    "vm.small",
                    "virtual_machine",
                    "hour",
                    "metered",
                    unit_price=4,
                    rate=3,
                    servers=(
                        DemoServer("vm_dev01", "dev-01", "vm-small"),
                        DemoServer("vm_dev02", "dev-02", "vm-small", ("dev",)),
                        DemoServer("vm_dev03", "dev-03", "vm-small", ("dev",)),
                    ),
                ),
                # a build server created six hours into each period: the forecast sees
                # its whole remaining cost at once, the linear projection hardly moves
                DemoProduct(
                    "si_build",
                    "c3.medium.x86",
                    "bare_metal",
                    "hour",
                    "metered",
                    unit_price=100,
                    rate=1,
                    servers=(DemoServer("sv_build01", "build-01", "c3-medium-x86", ("dev",)),),
                    starts_hour=6,
                ),
            ],
        ),
    ]


def brazil_projects() -> list[DemoProject]:
    """The BRL team: a shop, so the currency label and variable are exercised for real."""
    shop = DemoServer("sv_loja01", "loja-01", "c3-medium-x86", ("loja", "prod"))
    return [
        DemoProject(
            "proj_demo_loja",
            "loja-online",
            "Loja Online",
            threshold=900_000,
            credit=150_000,
            products=[
                DemoProduct(
                    "si_bm_loja",
                    "c3.medium.x86",
                    "bare_metal",
                    "hour",
                    "metered",
                    unit_price=260,
                    rate=1,
                    servers=(shop,),
                ),
                DemoProduct(
                    "si_eip_loja",
                    "Elastic IP",
                    "elastic_ip",
                    "hour",
                    "metered",
                    unit_price=3,
                    rate=2,
                ),
            ],
        ),
    ]


@dataclass(frozen=True, slots=True)
class DemoTeam:
    slug: str
    name: str
    currency: str


class DemoAccount:
    """A simulated team: projects, the clock, and the usage they have run up."""

    def __init__(
        self,
        projects: list[DemoProject] | None = None,
        *,
        speed: float = DEFAULT_SPEED,
        shape: str = "new",
        team: DemoTeam = DemoTeam("demo-us", "Demo US", "USD"),
        token: str | None = None,
        clock: Callable[[], float] = time.time,
        start_elapsed: float = START_ELAPSED,
    ) -> None:
        self.projects = {
            p.id: p for p in (projects if projects is not None else default_projects())
        }
        self.speed = speed
        self.shape = shape
        self.team = team
        self.token = token
        self._clock = clock
        self._started = clock()
        self._start_elapsed = start_elapsed

    @property
    def currency(self) -> str:
        return self.team.currency

    def period(self) -> tuple[float, float, float]:
        """(period start, period end) as Unix times, and the simulated hours used so far.

        The whole simulation runs `speed` times faster than the clock: a 30-day period
        lasts 12 real hours at the default speed, so that its start, its end and the
        spend between them stay consistent (projections, the share of the period gone).
        """
        now = self._clock()
        into = (self._start_elapsed + (now - self._started) * self.speed) % PERIOD
        start = now - into / self.speed
        return start, start + PERIOD / self.speed, into / HOUR

    def usage(
        self,
        project: DemoProject,
        shape: str | None = None,
        *,
        plan: str | None = None,
        products: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The answer to `GET /billing/usage` for `project`, filtered as the spec says:
        `plan` (`filter[plan]`, a plan name: a line of that product name or of a server
        on that plan) and `products` (`filter[products][]`, product ids); the totals
        are those of the lines kept."""
        shape = shape or self.shape
        start, end, hours = self.period()
        lines = [
            p
            for p in project.products
            if (not products or p.id in products)
            and (plan is None or plan == p.name or plan in {s.plan for s in p.servers})
        ]
        answered = [
            _product(p, hours, start, shape, self.speed) for p in lines if hours >= p.starts_hour
        ]
        price = sum(p["price"] for p in answered)
        attributes: dict[str, Any] = {
            "project": {"id": project.id, "slug": project.slug, "name": project.name},
            "period": {"start": _iso(start), "end": _iso(end)},
            "available_credit_balance": math.floor(project.credit - price),
            "price": round(price, 2),
            "threshold": project.threshold,
            "products": answered,
        }
        # Both shapes: the 2025-10-13 spec's example and today's documentation show a
        # top-level `amount` beside the older schema too.
        attributes["amount"] = round(price, 2)
        return {"data": {"id": "", "type": "billing_usage", "attributes": attributes}, "meta": {}}

    def price_at(self, project_id: str, hours: float) -> float:
        """What the project has cost, in cents, `hours` into a period."""
        return sum(
            float(_product(p, hours, 0.0, "new", self.speed)["price"])
            for p in self.projects[project_id].products
            if hours >= p.starts_hour
        )

    def project_resources(self) -> list[dict[str, Any]]:
        team = self.team
        return [
            {
                "id": p.id,
                "type": "projects",
                "attributes": {
                    "name": p.name,
                    "slug": p.slug,
                    "description": None,
                    "billing_type": "Hourly",
                    "provisioning_type": "on_demand",
                    "team": {
                        "id": f"team_{team.slug}",
                        "name": team.name,
                        "slug": team.slug,
                        "currency": {
                            "id": f"cur_{team.currency.lower()}",
                            "code": team.currency,
                            "name": team.currency,
                            "currency_id": None,
                        },
                    },
                },
            }
            for p in self.projects.values()
        ]


def default_accounts(**kwargs: Any) -> list[DemoAccount]:
    """The two demo teams, each behind its own key, three simulated hours before their
    period closes (`DEMO_START_ELAPSED`)."""
    kwargs.setdefault("start_elapsed", DEMO_START_ELAPSED)
    return [
        DemoAccount(token=DEMO_TOKENS[0], **kwargs),
        DemoAccount(
            brazil_projects(),
            team=DemoTeam("demo-br", "Demo Brasil", "BRL"),
            token=DEMO_TOKENS[1],
            **kwargs,
        ),
    ]


DEMO_TOKENS = ("demo-key-us", "demo-key-br")
#: Simulated hours after the start at which the demo's project budget passes 75 %: 90
#: real seconds at the default speed, and the period's close (at three minutes)
#: resolves its alert.
DEMO_BUDGET_HOURS = 1.5


def demo_budgets(accounts: Sequence[DemoAccount]) -> list[dict[str, Any]]:
    """The demo's budgets (when the config names none), as the config writes them, set
    from what the first account's clock says now: web-platform's passes 75 % within
    the first two minutes; the team's whole spend stands near 40 % of its budget."""
    us = accounts[0]
    _, _, hours = us.period()
    web = us.price_at("proj_demo_web", hours + DEMO_BUDGET_HOURS) / 100 / 0.75
    team = sum(us.price_at(pid, hours) for pid in us.projects) / 100 / 0.4
    return [
        {"team": us.team.slug, "project": "web-platform", "amount": round(web, 2)},
        {"team": us.team.slug, "amount": round(team, 2)},
    ]


def accounts_of(accounts: Sequence[DemoAccount] | DemoAccount | None) -> list[DemoAccount]:
    """The accounts a simulated API answers for: the demo's two when none are given."""
    if accounts is None:
        return default_accounts()
    return [accounts] if isinstance(accounts, DemoAccount) else list(accounts)


def _product(
    product: DemoProduct, hours: float, start: float, shape: str, speed: float
) -> dict[str, Any]:
    unit_price = product.unit_price
    if product.usage_type == "licensed":
        quantity = product.rate
    elif product.unit in CLOCK_UNITS:
        # Hours and minutes of the real clock, which the answer's timestamps follow: the
        # simulation runs `speed` times faster, so a unit costs `speed` times more (the
        # price is the same); a forecast from the unit price is then true in real time.
        running = (hours - product.starts_hour) / speed
        quantity = round(product.rate * running * CLOCK_UNITS[product.unit], 6)
        unit_price = product.unit_price * speed
    else:
        quantity = round(product.rate * hours, 3)
    billable = quantity / (product.billing_unit_divisor or 1)
    gross = round(billable * unit_price)
    price = float(gross)
    discounts = []
    for description, kind, value in product.discounts:
        price -= gross * value / 100 if kind == "percent" else value
        discounts.append({"description": description, "type": kind, "value": value})
    price = round(max(price, 0.0), 2)
    out: dict[str, Any] = {
        "id": product.id,
        "resource": product.resource,
        "name": product.name,
        "description": product.name,
        "proration": product.usage_type == "metered",
        "discounts": discounts,
        "discountable": bool(discounts),
        "amount_without_discount": gross,
        "start": _iso(start + product.starts_hour * HOUR / speed),
        "end": None,
        "unit": product.unit,
        "unit_price": unit_price,
        "usage_type": product.usage_type,
        "quantity": quantity,
        "price": price,
    }
    servers = [
        {"id": s.id, "hostname": s.hostname, "plan": s.plan, "tags": list(s.tags)}
        for s in product.servers
    ]
    bucket = product.bucket
    if shape == "new":
        out["amount"] = price
        out["unit_amount"] = unit_price
        metadata: dict[str, Any] = {"servers": servers}
        if bucket is not None:
            metadata["bucket"] = {"id": bucket.id, "name": bucket.name, "location": bucket.location}
        if product.billing_unit_divisor:
            metadata["billing_unit_divisor"] = product.billing_unit_divisor
        out["metadata"] = metadata
    else:
        if out["unit"] == "GB":
            out["unit"] = "quantity"  # the older enum had no GB
        first = servers[0] if servers else None
        out["metadata"] = {
            "id": first["id"] if first else (bucket.id if bucket else None),
            "hostname": first["hostname"] if first else None,
            "plan": first["plan"] if first else None,
            "tags": first["tags"] if first else [],
        }
    return out


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
