"""Pydantic models of the Latitude.sh API payloads, tolerant of drift and hostile input; no I/O.

The billing_usage schema has moved under our feet (`tests/fixtures/spec/` keeps both
generations): `amount` appeared, `unit` gained `GB`, product `metadata` changed shape,
and live accounts may still answer in the older shape. The spec requires little (only a
discount's `description`, `type` and `value`), and an answer that breaks even that must
cost one series, not the project. So every field is optional, unknown fields are
ignored, enums are plain strings, and a field whose value has the wrong type reads as
missing: one odd value drops one metric, never the whole project.

The tolerance is built into the core schema (`with_default(on_error="default")`) rather
than written as Python validators, because a poll of a large account validates hundreds
of thousands of fields and a Python call per field was most of a poll's cost.

Parsing is bounded before any model is built: the body is counted in JSON values, the
products of one answer are capped, and strings are made encodable (lone surrogates and
control characters become U+FFFD) so that one project's odd name can never break the
exposition, the status page or a log line for everyone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, TypeVar, cast

from pydantic import ConfigDict, GetCoreSchemaHandler, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import PydanticCustomError, core_schema

#: The two endpoints the exporter reads (paths under the API's base URL).
USAGE_ENDPOINT = "/billing/usage"
PROJECTS_ENDPOINT = "/projects"
ENDPOINTS = (USAGE_ENDPOINT, PROJECTS_ENDPOINT)
#: Projects asked for per page of /projects: the client pages with it and discovery
#: counts the pages a refresh costs with it, so that the budget it plans is the one spent.
PROJECTS_PAGE_SIZE = 100
#: Longest project id the exporter accepts, configured or discovered: the API's ids are
#: about 18 characters; a longer one is refused (and counted), never cut, because a cut
#: id would no longer name the project its poll was for.
MAX_ID_CHARS = 128
#: How every project id of the API begins (the spec's examples, every live id); a slug,
#: the other way to name a project, is lowercase words and hyphens.
PROJECT_ID_PREFIX = "proj_"
#: JSON values (objects, arrays and comma-separated items) one answer may hold, counted
#: before anything is parsed: bounds the memory of parsing a body that is small in
#: bytes but made of millions of `{}` (10,000 product lines take about 300,000).
MAX_JSON_VALUES = 500_000
#: Product lines one billing answer may hold; a larger answer is refused as a whole.
#: (`max_products_per_project` folds the cheapest of what is accepted.)
MAX_PRODUCTS_PER_ANSWER = 10_000
#: Replacement for what cannot be encoded or would forge a line of output.
REPLACEMENT = "\ufffd"
#: Largest magnitude a number may have (ten trillion in main units, counted in cents):
#: beyond it sums overflow or lose whole units, so an absurd figure reads as missing.
MAX_NUMBER = 1e15


class PayloadError(ValueError):
    """An answer that cannot be read as the document asked for; the message is ours."""


class _Lenient:
    """A value of the wrong type reads as None (or the default) instead of failing."""

    def __init__(self, default_factory: Callable[[], Any] | None = None) -> None:
        self._factory = default_factory

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        if self._factory is not None:
            return core_schema.with_default_schema(
                handler(source), default_factory=self._factory, on_error="default"
            )
        return core_schema.with_default_schema(handler(source), default=None, on_error="default")


class _Number:
    """int, float or a numeric string within ±MAX_NUMBER; never a bool, an infinity or
    NaN (a 400-digit integer does not fit a float and reads as missing too)."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        number = core_schema.union_schema(
            [
                core_schema.float_schema(
                    strict=True, allow_inf_nan=False, ge=-MAX_NUMBER, le=MAX_NUMBER
                ),
                core_schema.chain_schema(
                    [
                        core_schema.str_schema(strict=True, strip_whitespace=True),
                        core_schema.float_schema(
                            allow_inf_nan=False, ge=-MAX_NUMBER, le=MAX_NUMBER
                        ),
                    ]
                ),
            ],
            mode="left_to_right",
        )
        return core_schema.with_default_schema(
            core_schema.nullable_schema(number), default=None, on_error="default"
        )


class _Objects:
    """A list whose items that are not what they should be are skipped; anything but a
    list reads as empty (or, when `required`, is an error)."""

    def __init__(self, *, required: bool = False) -> None:
        self._required = required

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        (item,) = source.__args__
        items = core_schema.with_default_schema(handler.generate_schema(item), on_error="omit")
        listed = core_schema.list_schema(items)
        if not self._required:
            return core_schema.with_default_schema(listed, default_factory=list, on_error="default")

        def not_a_list(value: Any) -> list[Any]:
            raise PydanticCustomError("list_type", "not a list")

        return core_schema.union_schema(
            [listed, core_schema.no_info_plain_validator_function(not_a_list)],
            mode="left_to_right",
        )


class _Text:
    """A string; an integer where a string belongs (an id sent as a number) is read as
    its digits, anything else as missing."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        text = core_schema.union_schema(
            [
                core_schema.str_schema(strict=True),
                core_schema.chain_schema(
                    [
                        core_schema.int_schema(strict=True),
                        core_schema.no_info_plain_validator_function(str),
                    ]
                ),
            ],
            mode="left_to_right",
        )
        return core_schema.with_default_schema(
            core_schema.nullable_schema(text), default=None, on_error="default"
        )


Text = Annotated[str | None, _Text()]
Number = Annotated[float | None, _Number()]
Timestamp = Annotated[datetime | None, _Lenient()]


def epoch_seconds(when: datetime | None) -> float | None:
    """A parsed timestamp as seconds since the epoch; naive ones are UTC (every
    documented example carries +00:00); None where none, or beyond what a float
    timestamp can say (year 1 or 9999 at the edge of the epoch)."""
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return when.timestamp()
    except (OverflowError, ValueError, OSError):
        return None


Texts = Annotated[list[str], _Objects()]


#: Every model is a frozen, slotted pydantic dataclass that ignores unknown fields.
#: Dataclasses rather than BaseModel: an answer can hold tens of thousands of product
#: lines, and a slotted dataclass costs a third of a model's memory (no instance dict,
#: no set of the fields that were given).
_CONFIG = ConfigDict(extra="ignore")


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class ProjectRef:
    id: Text = None
    slug: Text = None
    name: Text = None


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class Period:
    start: Timestamp = None
    end: Timestamp = None


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class Discount:
    description: Text = None
    #: `percent` or `amount`, the spec's closed enum; any other value (or none) is
    #: not read as money, only counted (`latitudesh_billing_discounts_unknown_type`).
    type: Text = None
    value: Number = None


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class Server:
    id: Text = None
    hostname: Text = None
    plan: Text = None
    tags: Texts = field(default_factory=list)


#: Product `resource`s whose old-shape `metadata.id` alone names a server, and those
#: where it names a bucket (the values the API and its documentation use).
SERVER_RESOURCES = frozenset({"bare_metal", "virtual_machine"})
STORAGE_RESOURCES = frozenset({"object_storage", "filesystem", "block_storage"})


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class Bucket:
    id: Text = None
    name: Text = None
    location: Text = None


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class ProductMetadata:
    """Both shapes in one model: the old `{id, hostname, plan, tags}` and the new
    `{servers[], bucket, billing_unit_divisor}` (spec of 2026-07-16)."""

    id: Text = None
    hostname: Text = None
    plan: Text = None
    tags: Texts = field(default_factory=list)
    servers: Annotated[list[Server], _Objects()] = field(default_factory=list)
    bucket: Annotated[Bucket | None, _Lenient()] = None
    billing_unit_divisor: Number = None

    def all_servers(self, resource: str | None) -> list[Server]:
        """The servers behind the product line of `resource`, whichever shape the API
        used.

        The old shape names a server as `{id, hostname, plan, tags}`, but puts a
        storage bucket's id in `id` too, with hostname and plan null: an id alone is a
        server only on a server's line (`SERVER_RESOURCES`)."""
        if self.servers:
            return list(self.servers)
        if self.hostname or self.plan or (self.id and resource in SERVER_RESOURCES):
            return [Server(id=self.id, hostname=self.hostname, plan=self.plan, tags=self.tags)]
        return []

    def storage_bucket(self, resource: str | None) -> Bucket | None:
        """The bucket behind the product line: the new shape's `bucket`, or the old
        shape's bare `id` on a storage line (`STORAGE_RESOURCES`)."""
        if self.bucket is not None:
            return self.bucket
        if self.id and not (self.hostname or self.plan) and resource in STORAGE_RESOURCES:
            return Bucket(id=self.id)
        return None


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class Product:
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
    discounts: Annotated[list[Discount], _Objects()] = field(default_factory=list)
    metadata: Annotated[ProductMetadata | None, _Lenient()] = None
    #: When the line began and ended being billed; `end` is null while it runs.
    start: Timestamp = None
    end: Timestamp = None


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class UsageAttributes:
    project: Annotated[ProjectRef | None, _Lenient()] = None
    period: Annotated[Period | None, _Lenient()] = None
    available_credit_balance: Number = None
    price: Number = None
    amount: Number = None
    threshold: Number = None
    products: Annotated[list[Product], _Objects()] = field(default_factory=list)

    @property
    def has_figures(self) -> bool:
        """Whether the answer says anything about money: a price, an amount, a credit
        balance, or a product line with one. An answer without (`attributes: {}`, or
        every value of the wrong type) must fail the poll, not blank the project."""
        if any(v is not None for v in (self.price, self.amount, self.available_credit_balance)):
            return True
        return any(
            p.price is not None or p.amount is not None or p.quantity is not None
            for p in self.products
        )


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class UsageResource:
    # Not lenient, unlike the rest: an error below (too many products) must reach the
    # caller, and an `attributes` of the wrong type fails the poll either way.
    attributes: UsageAttributes | None = None


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class BillingUsageDocument:
    """`GET /billing/usage`: `data` is documented as an object; a list is accepted too."""

    data: UsageResource | Annotated[list[UsageResource], _Objects(required=True)] | None = None

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


@dataclass(frozen=True, slots=True)
class UsageAnswer:
    """One project's usage as the API answered it: parsed, and the decoded body it was
    parsed from, which the state store keeps to read again the same way at a restart
    (`read_usage`), so a stored answer is never trusted more than a live one."""

    attributes: UsageAttributes
    body: bytes


def read_usage(project_id: str, body: bytes) -> UsageAttributes:
    """`project_id`'s usage in a `/billing/usage` answer, bounded and checked: the answer
    must hold that project's usage, at most `MAX_PRODUCTS_PER_ANSWER` product lines and
    at least one usable figure. Raises `PayloadError`."""
    usage = parse_document(BillingUsageDocument, body).usage_for(project_id)
    if usage is None:
        raise PayloadError("the answer holds no usage for the requested project")
    if len(usage.products) > MAX_PRODUCTS_PER_ANSWER:
        raise PayloadError(
            f"the answer holds {len(usage.products)} product lines, over the cap of "
            f"{MAX_PRODUCTS_PER_ANSWER}"
        )
    if not usage.has_figures:
        raise PayloadError(
            "the answer holds no usable figure (no price, amount, credit or product line)"
        )
    return usage


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class Currency:
    code: Text = None


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class Team:
    slug: Text = None
    name: Text = None
    currency: Annotated[Currency | None, _Lenient()] = None


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class ProjectAttributes:
    name: Text = None
    slug: Text = None
    team: Annotated[Team | None, _Lenient()] = None


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class ProjectResource:
    id: Text = None
    attributes: Annotated[ProjectAttributes | None, _Lenient()] = None

    @property
    def team(self) -> Team | None:
        return self.attributes.team if self.attributes else None

    @property
    def currency(self) -> str | None:
        team = self.team
        return team.currency.code if team and team.currency else None


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class ProjectsPage:
    """One page of `GET /projects`. The spec offers a total in `meta.stats.total.count`
    (asked with `stats[total]=count`); it is not asked for: a short page ends the list.

    Unlike everything else here, `data` is required and must be a list: a 200 whose
    body has no list would otherwise read as "the team has no projects" and blank
    every series of the team.
    """

    data: Annotated[list[ProjectResource], _Objects(required=True)]


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class ErrorMeta:
    retry_after: Number = None


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class ErrorItem:
    code: Text = None
    title: Text = None
    detail: Text = None
    message: Text = None
    meta: Annotated[ErrorMeta | None, _Lenient()] = None

    @property
    def retry_after(self) -> float | None:
        return self.meta.retry_after if self.meta else None


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class ErrorDocument:
    """`{"errors": [...]}`; some answers carry only a top-level `code`/`message`."""

    errors: Annotated[list[ErrorItem], _Objects()] = field(default_factory=list)
    code: Text = None
    message: Text = None

    @property
    def retry_after(self) -> float | None:
        waits = [item.retry_after for item in self.errors if item.retry_after is not None]
        return max(waits) if waits else None

    @property
    def text(self) -> str:
        """The API's own words, whole: the caller scrubs secrets before shortening."""
        for item in self.errors:
            text = item.detail or item.title or item.message or item.code
            if text:
                return text
        return self.message or self.code or ""


M = TypeVar("M")

# A backslash pair is matched (and kept) first, so an escaped backslash followed by
# "u" is never read as a unicode escape; a valid surrogate pair is kept whole.
_ESCAPES = re.compile(
    r"(\\\\)|(\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|\\u(?:[dD][89a-fA-F][0-9a-fA-F]{2}|00[01][0-9a-fA-F]|007[fF]|00[89][0-9a-fA-F])"
    r"|\\[bfnrt]"
)
# DEL and the C1 controls may stand in JSON strings unescaped.
_RAW_CONTROLS = dict.fromkeys(range(0x7F, 0xA0), REPLACEMENT)


def _escape_kept(match: re.Match[str]) -> str:
    return match.group(0) if match.group(1) or match.group(2) else "\\ufffd"


def clean_json(body: bytes) -> bytes | str:
    """The body with every string made encodable and free of control characters.

    The common answer is plain ASCII without escapes and is returned as it is; the
    rest costs a decode and two passes in C, never a Python call per string.
    """
    if body.isascii():
        if b"\\" not in body:
            return body
        text = body.decode("ascii")
    else:
        # Invalid UTF-8 (raw surrogates included) becomes U+FFFD instead of failing.
        text = body.decode("utf-8", "replace").translate(_RAW_CONTROLS)
    if "\\" in text:
        text = _ESCAPES.sub(_escape_kept, text)
    return text


def parse_document(model: type[M], body: bytes, *, max_values: int = MAX_JSON_VALUES) -> M:
    """Validate `body` as `model`, bounded in values as well as bytes.

    Raises `PayloadError` with a message of our own (never the API's bytes).
    """
    text = clean_json(body)
    if isinstance(text, bytes):
        values = text.count(b",") + text.count(b"{") + text.count(b"[")
    else:
        values = text.count(",") + text.count("{") + text.count("[")
    if values > max_values:
        raise PayloadError(f"the answer holds more than {max_values} JSON values")
    try:
        return cast(M, _adapter(cast(Any, model)).validate_json(text))
    except ValidationError as exc:
        raise PayloadError(_describe(exc)) from None


@cache
def _adapter(model: Any) -> TypeAdapter[Any]:
    return TypeAdapter(model)


def _describe(exc: ValidationError) -> str:
    found = exc.errors(include_url=False, include_input=False, include_context=False)
    first = found[0]
    # Only field names: union members and list indexes would say nothing to a reader.
    where = ".".join(p for p in map(str, first["loc"]) if p.isidentifier() and p.islower())
    where = where or "the answer"
    if first["type"] == "json_invalid":
        return str(first["msg"])  # "Invalid JSON: ..." names a position, not content
    if first["type"] in ("model_type", "model_attributes_type"):
        return "not a JSON object"
    if first["type"] == "missing":
        return f"{where} is missing"
    if first["type"] == "list_type":
        return f"{where} is not a list"
    return f"{where}: {first['type']}"


def parse_error_document(body: bytes) -> ErrorDocument:
    """Read an error body of any shape; anything unreadable reads as empty."""
    try:
        return parse_document(ErrorDocument, body)
    except PayloadError:
        return ErrorDocument()
