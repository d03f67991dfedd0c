"""Pydantic models of the Latitude.sh API payloads, tolerant of schema drift; no I/O.

The billing_usage schema has moved under our feet (see
shared/latitude/billing_usage.spec-history.json): `amount` and `unit_amount` appeared,
`unit` gained `GB`, product `metadata` changed shape, and live accounts may still answer
in the older shape. Nothing in the spec is required. So every field is optional, unknown
fields are ignored, enums are plain strings, and a field whose value has the wrong type
reads as missing: one odd value must drop one metric, never the whole project.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError


def _lenient_number(value: Any) -> float | None:
    # bool is an int subclass; a true/false where money belongs is not a number.
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _lenient_str(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return str(value)
    return None


def _lenient_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    # A naive timestamp from the API is UTC (every documented example carries +00:00).
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _list_or_empty(value: Any) -> Any:
    return value if isinstance(value, list) else []


def _object_or_none(value: Any) -> Any:
    return value if isinstance(value, dict) else None


Number = Annotated[float | None, BeforeValidator(_lenient_number)]
Text = Annotated[str | None, BeforeValidator(_lenient_str)]
Timestamp = Annotated[datetime | None, BeforeValidator(_lenient_datetime)]


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def _objects_only(value: Any) -> list[Any]:
    """Keep the items of a list that are objects; skip anything else in it."""
    return [item for item in _list_or_empty(value) if isinstance(item, dict)]


_OBJECTS = BeforeValidator(_objects_only)


class ProjectRef(_Tolerant):
    id: Text = None
    slug: Text = None
    name: Text = None


class Period(_Tolerant):
    start: Timestamp = None
    end: Timestamp = None


class Discount(_Tolerant):
    description: Text = None
    #: `percent` or `amount` per the spec; `fixed` has been seen in the wild.
    type: Text = None
    value: Number = None


class Server(_Tolerant):
    id: Text = None
    hostname: Text = None
    plan: Text = None
    tags: Annotated[list[Text], BeforeValidator(_list_or_empty)] = Field(default_factory=list)


class Bucket(_Tolerant):
    id: Text = None
    name: Text = None
    location: Text = None


class ProductMetadata(_Tolerant):
    """Both shapes in one model: the old `{id, hostname, plan, tags}` and the new
    `{servers[], bucket, billing_unit_divisor}` (spec of 2026-07-16)."""

    id: Text = None
    hostname: Text = None
    plan: Text = None
    tags: Annotated[list[Text], BeforeValidator(_list_or_empty)] = Field(default_factory=list)
    servers: Annotated[list[Server], _OBJECTS] = Field(default_factory=list)
    bucket: Annotated[Bucket | None, BeforeValidator(_object_or_none)] = None
    billing_unit_divisor: Number = None

    def all_servers(self) -> list[Server]:
        """The servers behind the product line, whichever shape the API used."""
        if self.servers:
            return list(self.servers)
        if self.id or self.hostname or self.plan:
            return [Server(id=self.id, hostname=self.hostname, plan=self.plan, tags=self.tags)]
        return []


class Product(_Tolerant):
    id: Text = None
    resource: Text = None
    name: Text = None
    description: Text = None
    unit: Text = None
    usage_type: Text = None
    quantity: Number = None
    price: Number = None
    amount: Number = None
    unit_price: Number = None
    unit_amount: Number = None
    amount_without_discount: Number = None
    start: Timestamp = None
    end: Timestamp = None
    discounts: Annotated[list[Discount], _OBJECTS] = Field(
        default_factory=list
    )
    metadata: Annotated[ProductMetadata | None, BeforeValidator(_object_or_none)] = None


class UsageAttributes(_Tolerant):
    project: Annotated[ProjectRef | None, BeforeValidator(_object_or_none)] = None
    period: Annotated[Period | None, BeforeValidator(_object_or_none)] = None
    available_credit_balance: Number = None
    price: Number = None
    amount: Number = None
    threshold: Number = None
    products: Annotated[list[Product], _OBJECTS] = Field(default_factory=list)


class UsageResource(_Tolerant):
    id: Text = None
    type: Text = None
    attributes: Annotated[UsageAttributes | None, BeforeValidator(_object_or_none)] = None


class BillingUsageDocument(_Tolerant):
    """`GET /billing/usage`: `data` is documented as an object; a list is accepted too."""

    data: UsageResource | list[UsageResource] | None = None

    def usage_for(self, project_id: str) -> UsageAttributes | None:
        """The attributes that belong to `project_id`, or None when there are none.

        A list answer is searched for the project; an answer that names another
        project is refused (None), because exporting it would put one project's
        money under another's id.
        """
        resources = self.data if isinstance(self.data, list) else [self.data]
        for resource in resources:
            if resource is None or resource.attributes is None:
                continue
            attributes = resource.attributes
            answered_for = attributes.project.id if attributes.project else None
            if answered_for in (None, "", project_id):
                return attributes
        return None


class Currency(_Tolerant):
    code: Text = None


class Team(_Tolerant):
    currency: Annotated[Currency | None, BeforeValidator(_object_or_none)] = None


class ProjectAttributes(_Tolerant):
    name: Text = None
    slug: Text = None
    team: Annotated[Team | None, BeforeValidator(_object_or_none)] = None


class ProjectResource(_Tolerant):
    id: Text = None
    attributes: Annotated[ProjectAttributes | None, BeforeValidator(_object_or_none)] = None

    @property
    def currency(self) -> str | None:
        attributes = self.attributes
        if attributes and attributes.team and attributes.team.currency:
            return attributes.team.currency.code
        return None


class ProjectsPage(_Tolerant):
    """One page of `GET /projects`; the API gives no pagination metadata."""

    data: Annotated[list[ProjectResource], _OBJECTS] = Field(
        default_factory=list
    )


class ErrorItem(_Tolerant):
    status: Text = None
    code: Text = None
    title: Text = None
    detail: Text = None
    message: Text = None
    meta: Annotated[dict[str, Any] | None, BeforeValidator(_object_or_none)] = None

    @property
    def retry_after(self) -> float | None:
        return _lenient_number(self.meta.get("retry_after")) if self.meta else None


class ErrorDocument(_Tolerant):
    """`{"errors": [...]}`; some answers carry only a top-level `code`/`message`."""

    errors: Annotated[list[ErrorItem], _OBJECTS] = Field(default_factory=list)
    code: Text = None
    message: Text = None

    @property
    def retry_after(self) -> float | None:
        waits = [item.retry_after for item in self.errors if item.retry_after is not None]
        return max(waits) if waits else None

    @property
    def summary(self) -> str:
        """A short, single-line description for logs (never contains request data)."""
        for item in self.errors:
            text = item.detail or item.title or item.message or item.code
            if text:
                return " ".join(text.split())[:200]
        return " ".join((self.message or self.code or "").split())[:200]


def parse_error_document(payload: Any) -> ErrorDocument:
    """Read an error body of any shape; a body that is not an object reads as empty."""
    if not isinstance(payload, dict):
        return ErrorDocument()
    try:
        return ErrorDocument.model_validate(payload)
    except ValidationError:
        return ErrorDocument()
