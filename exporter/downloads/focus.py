"""The FOCUS 1.2 cost and usage file: what FinOps tools ingest (Vantage custom
providers, Datadog Custom Costs, Cloudability, Flexera, FinOps hubs, OpenCost's
plugins), from the kept answers.

The FinOps Foundation's specification, tag v1.2 (`specification/columns/*.md`), with
the 1.3 names `ServiceProviderName` and `HostProviderName` beside `ProviderName`
(ingesters already ask for them). One row per product line; where a project's lines
do not add up to its price, one `Adjustment` row carries the difference, so that the
`BilledCost` of a project's rows adds up to its price. The mapping, each choice
documented in the README's "Showback for finance":

- team → BillingAccount; project → SubAccount (type `Project`);
- a line → a row: `price` → BilledCost = EffectiveCost = ContractedCost (the API's
  discounts are the account's contracted terms); the unit price (per billed unit:
  `unit_price` / `billing_unit_divisor`) → ListUnitPrice, and ListCost = ListUnitPrice
  times PricingQuantity;
- every line is ChargeCategory `Usage`: `metered` ones `Usage-Based`, `licensed` ones
  (a licence a month) `Recurring`. Not `Purchase`: FOCUS reads a purchase as paying
  for future charges ahead (its EffectiveCost 0, rule EffectiveCost-C-005-C), which
  a monthly licence is not;
- InvoiceId empty: usage is not invoiced yet (the API says nothing of invoices);
- servers and virtual machines → ServiceCategory `Compute`, block, file and object
  storage → `Storage`, IPs and traffic → `Networking`, anything else → `Other`, each
  with a ServiceSubcategory of 1.2's list (`Other (Compute)` for bare metal);
- a line naming one server or a bucket → its ResourceId, ResourceName and
  ResourceType; a server's tags → Tags, `{"tag": true}`;
- "Latitude.sh" as provider, publisher, invoice issuer and host.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from functools import lru_cache
from operator import itemgetter

from exporter.downloads.lines import Line, ProjectLines
from exporter.downloads.text import csv_chunks, decimal, timestamp

PROVIDER = "Latitude.sh"

MANDATORY: tuple[str, ...] = (
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ServiceCategory",
    "ServiceName",
)
#: The conditional and recommended columns Latitude.sh has the concepts of, and the
#: 1.3 provider names.
CONDITIONAL: tuple[str, ...] = (
    "ChargeFrequency",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedUnitPrice",
    "HostProviderName",
    "InvoiceId",
    "ListUnitPrice",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceProviderName",
    "ServiceSubcategory",
    "SubAccountId",
    "SubAccountName",
    "SubAccountType",
    "Tags",
)
#: Columns of this exporter's own: FOCUS wants an `x_` in front of each.
CUSTOM: tuple[str, ...] = (
    "x_ProjectSlug",
    "x_ProductId",
    "x_Resource",
    "x_UsageType",
    "x_ServerPlan",
    "x_BucketLocation",
    "x_Discounts",
    "x_ObservedAt",
)
COLUMNS = MANDATORY + CONDITIONAL + CUSTOM
#: A row's values in the columns' order (one C call, not a lookup a column).
_IN_ORDER = itemgetter(*COLUMNS)

#: The API's `unit` as a FOCUS unit (plural, from the specification's list).
UNITS = {"hour": "Hours", "minute": "Minutes", "GB": "GB", "quantity": "Units"}
#: The API's `resource` as a ServiceCategory, a ServiceName and a ServiceSubcategory
#: (one of the 1.2 values allowed under that category).
SERVICES = {
    "bare_metal": ("Compute", "Bare Metal", "Other (Compute)"),
    "virtual_machine": ("Compute", "Virtual Machines", "Virtual Machines"),
    "kubernetes": ("Compute", "Kubernetes", "Containers"),
    "block_storage": ("Storage", "Block Storage", "Block Storage"),
    "filesystem": ("Storage", "Filesystem", "File Storage"),
    "object_storage": ("Storage", "Object Storage", "Object Storage"),
    "elastic_ip": ("Networking", "Elastic IPs", "Network Connectivity"),
    "ip_address": ("Networking", "IP Addresses", "Network Connectivity"),
    "ip": ("Networking", "IP Addresses", "Network Connectivity"),
    "traffic": ("Networking", "Traffic", "Network Connectivity"),
    "bandwidth": ("Networking", "Traffic", "Network Connectivity"),
    "private_network": ("Networking", "Private Networks", "Network Connectivity"),
}
#: ResourceType of what a line names.
RESOURCE_TYPES = {
    "bare_metal": "Bare Metal Server",
    "virtual_machine": "Virtual Machine",
    "object_storage": "Object Storage Bucket",
    "filesystem": "Filesystem",
    "block_storage": "Block Storage Volume",
}


def rows(projects: Iterable[ProjectLines]) -> Iterator[dict[str, str]]:
    """Each row of the file, by column."""
    for project in projects:
        start = project.period_start if project.period_start is not None else project.observed_at
        end = project.period_end if project.period_end is not None else project.observed_at
        base = dict.fromkeys(COLUMNS, "") | {
            "BillingAccountId": project.team,
            "BillingAccountName": project.team_name,
            "BillingCurrency": project.currency,
            "BillingPeriodStart": timestamp(start),
            "BillingPeriodEnd": timestamp(end),
            "InvoiceIssuerName": PROVIDER,
            "ProviderName": PROVIDER,
            "PublisherName": PROVIDER,
            "ServiceProviderName": PROVIDER,
            "HostProviderName": PROVIDER,
            "SubAccountId": project.project_id,
            "SubAccountName": project.project_name,
            "SubAccountType": "Project",
            "x_ProjectSlug": project.project_slug,
            "x_ObservedAt": timestamp(project.observed_at),
        }
        for line in project.lines:
            yield base | _line(line, start, end, project.observed_at)
        difference = project.unreconciled
        if difference:
            cost = decimal(difference)
            yield base | {
                "BilledCost": cost,
                "ContractedCost": cost,
                "EffectiveCost": cost,
                "ListCost": cost,
                "ChargeCategory": "Adjustment",
                "ChargeDescription": "Difference between the project's price and its lines",
                "ChargeFrequency": "One-Time",
                "ChargePeriodStart": timestamp(start),
                "ChargePeriodEnd": timestamp(max(start, min(project.observed_at, end))),
                "ServiceCategory": "Other",
                "ServiceName": "Billing",
                "ServiceSubcategory": "Other (Other)",
            }


def csv_file(projects: Iterable[ProjectLines]) -> Iterator[bytes]:
    return csv_chunks(COLUMNS, map(_IN_ORDER, rows(projects)))


def _line(line: Line, start: float, end: float, observed: float) -> dict[str, str]:
    metered = line.usage_type != "licensed"
    consumed = line.quantity is not None
    quantity = line.billed_quantity if line.billed_quantity is not None else 1.0
    unit = UNITS.get(line.unit, "Units")
    if line.divisor:
        unit = f"{line.divisor:g} {unit}"
    category, service, subcategory = SERVICES.get(
        line.resource,
        ("Other", line.resource.replace("_", " ").title() or "Other", "Other (Other)"),
    )
    list_cost = line.unit_price * quantity if line.unit_price is not None else None
    if list_cost is None:
        list_cost = line.price_without_discount if line.price_without_discount else line.price
    charge_start = min(max(line.start if line.start is not None else start, start), end)
    charge_end = line.end if line.end is not None else observed
    charge_end = max(charge_start, min(charge_end, end))
    resource = line.resources[0] if len(line.resources) == 1 else None
    tags = dict.fromkeys(tag for r in line.resources for tag in r.tags)
    billed = decimal(line.price)
    return {
        "BilledCost": billed,
        "ContractedCost": billed,
        "EffectiveCost": billed,
        "ListCost": decimal(list_cost),
        "ListUnitPrice": decimal(line.unit_price),
        "ContractedUnitPrice": decimal(line.price / quantity) if quantity else "",
        "ChargeCategory": "Usage",
        "ChargeFrequency": "Usage-Based" if metered else "Recurring",
        "ChargeDescription": line.description,
        "ChargePeriodStart": timestamp(charge_start),
        "ChargePeriodEnd": timestamp(charge_end),
        "PricingQuantity": decimal(quantity),
        "PricingUnit": unit,
        "ConsumedQuantity": decimal(line.quantity) if consumed else "",  # raw units
        "ConsumedUnit": UNITS.get(line.unit, "Units") if consumed else "",
        "ServiceCategory": category,
        "ServiceName": service,
        "ServiceSubcategory": subcategory,
        "ResourceId": resource.id if resource else "",
        "ResourceName": resource.name if resource else "",
        "ResourceType": _resource_type(line, resource.kind) if resource else "",
        "Tags": _tags(tuple(tags)) if tags else "",
        "x_ProductId": line.product_id,
        "x_Resource": line.resource,
        "x_UsageType": line.usage_type,
        "x_ServerPlan": resource.plan if resource else "",
        "x_BucketLocation": resource.location if resource else "",
        "x_Discounts": "; ".join(line.discounts),
    }


def _resource_type(line: Line, kind: str) -> str:
    default = "Bare Metal Server" if kind == "server" else "Storage Bucket"
    return RESOURCE_TYPES.get(line.resource, default)


@lru_cache(maxsize=1024)
def _tags(tags: tuple[str, ...]) -> str:
    """Tags as FOCUS writes them: a JSON object, a tag without a value `true`. Cached:
    the same few sets repeat on every server's row."""
    return json.dumps(dict.fromkeys(tags, True), separators=(",", ":"))
