"""The facts the tests need from Latitude.sh's API spec, kept in the repository.

`tests/fixtures/spec/latitude.json` holds the billing_usage schema of the newest
official spec (2026-07-16), the older one live accounts may still answer with (from
the endpoint's documentation), and the `GET /projects` answer with the schemas it
refers to. Nothing reads the spec from outside the repository at test time; one
CI-only test (`test_spec_agreement.py`) checks that this copy still agrees with the
reference material when it is there. To refresh the copy:

    python -m tests.spec PATH/TO/shared     # rewrites tests/fixtures/spec/latitude.json
"""

from __future__ import annotations

import json
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC_COPY = Path(__file__).resolve().parent / "fixtures" / "spec" / "latitude.json"
NEWEST = Path("latitude") / "latitudesh-openapi.2026-07-16.json"
SEED = Path("seeds") / "billing-usage-endpoint.md"


def extract(shared: Path) -> dict[str, Any]:
    """The repository's copy, computed from the reference material in `shared`."""
    spec = json.loads((shared / NEWEST).read_text())
    block = re.search(r"````yaml[^\n]*\n(.*?)````", (shared / SEED).read_text(), re.DOTALL)
    assert block is not None, "the seed document has no yaml block"
    seed = yaml.safe_load(block.group(1))
    projects = spec["paths"]["/projects"]["get"]["responses"]["200"]["content"][
        "application/vnd.api+json"
    ]["schema"]
    components = spec["components"]["schemas"]
    needed: dict[str, Any] = {}
    pending = _refs(projects)
    while pending:
        name = pending.pop()
        if name not in needed:
            needed[name] = components[name]
            pending |= _refs(components[name])
    return {
        "about": "Extracted from Latitude.sh's official OpenAPI spec 2026-07-16 "
        "(github.com/latitudesh/latitudesh-mcp, .speakeasy/out.openapi.yaml) "
        "and the billing_usage endpoint's documentation (older shape). "
        "Refresh with: python -m tests.spec PATH/TO/shared",
        "billing_usage": {
            "newest": components["billing_usage"],
            "seed": seed["components"]["schemas"]["billing_usage"],
        },
        "projects": {"response": projects, "components": dict(sorted(needed.items()))},
    }


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.add(value.rsplit("/", 1)[-1])
            else:
                found |= _refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= _refs(item)
    return found


@cache
def copy() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SPEC_COPY.read_text())
    return data


def to_json_schema(node: Any, *, strict: bool) -> Any:
    """OpenAPI 3.0 schema → JSON Schema: `nullable` becomes a null type; with `strict`,
    objects with declared properties refuse undeclared ones (the demo must not invent)."""
    if isinstance(node, list):
        return [to_json_schema(item, strict=strict) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: to_json_schema(v, strict=strict)
        for k, v in node.items()
        if k not in ("nullable", "example", "examples", "x-speakeasy-unknown-values")
    }
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if strict and out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


def billing_schema(which: str, *, strict: bool) -> Any:
    """`newest` or `seed` billing_usage as JSON Schema."""
    return to_json_schema(copy()["billing_usage"][which], strict=strict)


def billing_validator(which: str, *, strict: bool = True) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(
        billing_schema(which, strict=strict), format_checker=jsonschema.FormatChecker()
    )


def projects_validator() -> jsonschema.Draft7Validator:
    projects = copy()["projects"]
    root = {
        **to_json_schema(projects["response"], strict=False),
        "components": {"schemas": to_json_schema(projects["components"], strict=False)},
    }
    return jsonschema.Draft7Validator(root)


def errors_of(validator: jsonschema.Draft7Validator, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


if __name__ == "__main__":
    SPEC_COPY.parent.mkdir(parents=True, exist_ok=True)
    SPEC_COPY.write_text(json.dumps(extract(Path(sys.argv[1])), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SPEC_COPY}")
