"""OpenCost's custom pricing CSV: what each running server costs an hour, so that a
Kubernetes cluster on Latitude.sh servers gets real node costs in OpenCost (and
Kubecost), which know no price for bare metal of their own.

The file OpenCost's CSV pricing reads (`EndTimestamp,InstanceID,Region,AssetClass,
InstanceIDField,InstanceType,MarketPriceHourly,Version`): one row per server named by
a line that runs now, its price the hourly run rate of those lines (`forecast.
line_rate`: the unit price per hour less percent discounts), a line naming several
servers split evenly. `InstanceID` is the server's hostname (what a node is named when
the cluster was installed on it: matched against `metadata.name`), or its id; both
choosable by the query (`?instance_id=server_id`, `?instance_id_field=spec.providerID`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from exporter.downloads.lines import ProjectLines
from exporter.downloads.text import csv_chunks, decimal, timestamp

COLUMNS: tuple[str, ...] = (
    "EndTimestamp",
    "InstanceID",
    "Region",
    "AssetClass",
    "InstanceIDField",
    "InstanceType",
    "MarketPriceHourly",
    "Version",
)
#: What `InstanceID` holds: the hostname (the default) or the server's id.
INSTANCE_IDS = ("hostname", "server_id")
DEFAULT_FIELD = "metadata.name"


def rows(
    projects: Iterable[ProjectLines],
    *,
    instance_id: str = "hostname",
    instance_id_field: str = DEFAULT_FIELD,
) -> Iterator[list[str]]:
    """A row per running server, by project (a server two projects bill, twice)."""
    for project in projects:
        hourly: dict[tuple[str, str, str], float] = {}
        for line in project.lines:
            servers = [r for r in line.resources if r.kind == "server"]
            if not servers or not line.rate_per_hour:
                continue
            share = line.rate_per_hour / len(servers)
            for server in servers:
                key = (server.id, server.name, server.plan)
                hourly[key] = hourly.get(key, 0.0) + share
        for (server_id, hostname, plan), rate in hourly.items():
            yield [
                timestamp(project.period_end),
                hostname if instance_id == "hostname" and hostname else server_id,
                "",
                "node",
                instance_id_field,
                plan,
                decimal(rate),
                "",
            ]


def csv_file(
    projects: Iterable[ProjectLines],
    *,
    instance_id: str = "hostname",
    instance_id_field: str = DEFAULT_FIELD,
) -> Iterator[bytes]:
    return csv_chunks(
        COLUMNS,
        rows(projects, instance_id=instance_id, instance_id_field=instance_id_field),
    )
