"""The showback file: what each team, project, product line and server cost, as CSV
or JSON, for a finance team that does not use PromQL.

One row per product line, and per server where a line names several: the line's
money and quantity split evenly over them (as the metrics' server shares are), the
`share` column saying which part of the line a row is. A line naming one server or a
bucket is one row naming it. Where a project's lines do not add up to its price,
one `adjustment` row carries the difference, so that every project's rows add up to
the price the API gave (and `latitudesh_billing_price` shows). Columns are named as
the metrics' labels where one exists.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from operator import itemgetter

from exporter.downloads.lines import Line, ProjectLines, Resource
from exporter.downloads.text import csv_chunks, decimal, gathered, timestamp

COLUMNS: tuple[str, ...] = (
    "team",
    "project_id",
    "project_slug",
    "project_name",
    "currency",
    "period_start",
    "period_end",
    "observed_at",
    "row_type",
    "product_id",
    "product_name",
    "description",
    "resource",
    "usage_type",
    "unit",
    "server_id",
    "hostname",
    "plan",
    "bucket_id",
    "bucket_name",
    "bucket_location",
    "tags",
    "share",
    "quantity",
    "billing_unit_divisor",
    "unit_price",
    "price_without_discount",
    "discounts",
    "price",
    "line_start",
    "line_end",
)
#: `row_type` of a line's row, and of a project's difference to its price.
LINE, ADJUSTMENT = "line", "adjustment"


#: A row: every column's value as it is (numbers as floats, None for none, a server's
#: tags as a tuple); each file writes it its own way (`csv_file`, `json_file`).
Row = dict[str, object]


def rows(projects: Iterable[ProjectLines]) -> Iterator[Row]:
    """Each row of the file, by column."""
    for project in projects:
        base: Row = {
            "team": project.team_name,
            "project_id": project.project_id,
            "project_slug": project.project_slug,
            "project_name": project.project_name,
            "currency": project.currency,
            "period_start": timestamp(project.period_start),
            "period_end": timestamp(project.period_end),
            "observed_at": timestamp(project.observed_at),
        }
        for line in project.lines:
            for resource, share in _shares(line):
                yield base | _line(line, resource, share)
        difference = project.unreconciled
        if difference:
            yield (
                base
                | _EMPTY
                | {
                    "row_type": ADJUSTMENT,
                    "product_name": "Difference between the project's price and its lines",
                    "share": 1.0,
                    "price": difference,
                }
            )


def csv_file(projects: Iterable[ProjectLines]) -> Iterator[bytes]:
    return csv_chunks(COLUMNS, map(_csv_row, rows(projects)))


def json_file(projects: Iterable[ProjectLines]) -> Iterator[bytes]:
    """`{"columns": [...], "rows": [{...}, ...]}`, streamed; numbers as JSON numbers,
    none as null."""

    def pieces() -> Iterator[str]:
        yield '{"columns":' + _JSON.encode(COLUMNS) + ',"rows":['
        for index, row in enumerate(rows(projects)):
            yield ("," if index else "") + _JSON.encode(_json_row(row))
        yield "]}\n"

    return gathered(pieces())


#: Columns that hold numbers: decimals in the CSV, numbers in JSON.
_NUMBERS = (
    "share",
    "quantity",
    "billing_unit_divisor",
    "unit_price",
    "price_without_discount",
    "price",
)
#: A row's values in the columns' order (one C call, not a lookup a column).
_IN_ORDER = itemgetter(*COLUMNS)
_NUMBER_AT = tuple(COLUMNS.index(column) for column in _NUMBERS)
_TAGS_AT = COLUMNS.index("tags")
#: The line columns of a row that is not a line's.
_EMPTY: Row = {
    **dict.fromkeys(COLUMNS[8:], ""),
    **dict.fromkeys(_NUMBERS),
    "tags": (),
}
#: One encoder for every row (`json.dumps` with options makes one a call).
_JSON = json.JSONEncoder(separators=(",", ":"))


def _csv_row(row: Row) -> list[object]:
    """Numbers as plain decimals, tags joined by `;`, none as an empty field."""
    values: list[object] = list(_IN_ORDER(row))
    for index in _NUMBER_AT:
        values[index] = decimal(values[index])
    values[_TAGS_AT] = ";".join(values[_TAGS_AT])  # type: ignore[arg-type]
    return values


def _json_row(row: Row) -> Row:
    """Numbers as JSON numbers (at most 10 decimals, as the CSV's), a list of tags, null
    for an empty text or no number."""
    typed: Row = {column: value or None for column, value in row.items()}
    for column in _NUMBERS:
        value = row[column]
        typed[column] = None if value is None else round(value, 10)  # type: ignore[call-overload]
    typed["tags"] = list(row["tags"])  # type: ignore[call-overload]
    return typed


def _shares(line: Line) -> Iterator[tuple[Resource | None, float]]:
    if not line.resources:
        yield None, 1.0
        return
    share = 1.0 / len(line.resources)
    for resource in line.resources:
        yield resource, share


def _line(line: Line, resource: Resource | None, share: float) -> Row:
    server = resource if resource is not None and resource.kind == "server" else None
    bucket = resource if resource is not None and resource.kind == "bucket" else None
    return {
        "row_type": LINE,
        "product_id": line.product_id,
        "product_name": line.name,
        "description": line.description,
        "resource": line.resource,
        "usage_type": line.usage_type,
        "unit": line.unit,
        "server_id": server.id if server else "",
        "hostname": server.name if server else "",
        "plan": server.plan if server else "",
        "bucket_id": bucket.id if bucket else "",
        "bucket_name": bucket.name if bucket else "",
        "bucket_location": bucket.location if bucket else "",
        "tags": server.tags if server else (),
        "share": share,
        "quantity": _part(line.quantity, share),
        "billing_unit_divisor": line.divisor,
        "unit_price": line.unit_price,
        "price_without_discount": _part(line.price_without_discount, share),
        "discounts": "; ".join(line.discounts),
        "price": line.price * share,
        "line_start": timestamp(line.start),
        "line_end": timestamp(line.end),
    }


def _part(value: float | None, share: float) -> float | None:
    return None if value is None else value * share
