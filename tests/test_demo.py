"""The simulated API speaks the real API's language: its answers validate against the spec."""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from typing import Any

import jsonschema
import pytest
import yaml

from exporter.demo import DemoAccount, DemoApi, Fault
from tests.conftest import SHARED, TOKEN, http_get, load_fixture

SPEC = SHARED / "latitude" / "latitudesh-openapi.2026-07-16.json"
SEED = SHARED / "seeds" / "billing-usage-endpoint.md"


def to_json_schema(node: Any, *, strict: bool) -> Any:
    """OpenAPI 3.0 schema → JSON Schema: `nullable` becomes a null type; with `strict`,
    objects with declared properties refuse undeclared ones (the demo must not invent)."""
    if isinstance(node, list):
        return [to_json_schema(item, strict=strict) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v, strict=strict) for k, v in node.items()
           if k not in ("nullable", "example", "x-speakeasy-unknown-values")}
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if strict and out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


@cache
def spec() -> dict[str, Any]:
    return json.loads(SPEC.read_text())


def newest_validator(schema_name: str, *, strict: bool = True) -> jsonschema.Draft7Validator:
    root = {"$ref": f"#/components/schemas/{schema_name}",
            "components": to_json_schema(spec()["components"], strict=strict)}
    return jsonschema.Draft7Validator(root, format_checker=jsonschema.FormatChecker())


@cache
def seed_schema() -> dict[str, Any]:
    text = SEED.read_text()
    block = re.search(r"````yaml[^\n]*\n(.*?)````", text, re.DOTALL)
    assert block is not None
    document = yaml.safe_load(block.group(1))
    return to_json_schema(document["components"]["schemas"]["billing_usage"], strict=False)


def seed_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(seed_schema(), format_checker=jsonschema.FormatChecker())


def errors_of(validator: jsonschema.Draft7Validator, document: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


def test_the_schemas_really_differ() -> None:
    newest = spec()["components"]["schemas"]["billing_usage"]
    product = newest["properties"]["data"]["properties"]["attributes"]["properties"][
        "products"]["items"]["properties"]
    assert "GB" in product["unit"]["enum"] and "servers" in product["metadata"]["properties"]
    old_product = seed_schema()["properties"]["data"]["properties"]["attributes"][
        "properties"]["products"]["items"]["properties"]
    assert "GB" not in old_product["unit"]["enum"] and "hostname" in old_product["metadata"][
        "properties"]


@pytest.mark.parametrize("project", ["proj_demo_web", "proj_demo_gpu", "proj_demo_data",
                                     "proj_demo_dev"])
def test_demo_usage_validates_strictly_against_the_newest_spec(project: str) -> None:
    account = DemoAccount()
    document = account.usage(account.projects[project])
    assert errors_of(newest_validator("billing_usage"), document) == []


@pytest.mark.parametrize("project", ["proj_demo_web", "proj_demo_gpu", "proj_demo_data",
                                     "proj_demo_dev"])
def test_demo_old_shape_validates_against_the_seed_schema(project: str) -> None:
    account = DemoAccount(shape="old")
    document = account.usage(account.projects[project])
    assert errors_of(seed_validator(), document) == []
    attributes = document["data"]["attributes"]
    assert "amount" not in attributes
    assert all("servers" not in p["metadata"] for p in attributes["products"])


def test_fixtures_validate_against_their_schemas() -> None:
    assert errors_of(newest_validator("billing_usage"),
                     load_fixture("billing_usage_new.json")) == []
    assert errors_of(seed_validator(), load_fixture("billing_usage_old.json")) == []


def test_the_validator_catches_a_wrong_answer() -> None:
    document = DemoAccount().usage(DemoAccount().projects["proj_demo_web"])
    broken = copy.deepcopy(document)
    broken["data"]["attributes"]["products"][0]["unit"] = "petaflop"
    broken["data"]["attributes"]["invented"] = 1
    assert len(errors_of(newest_validator("billing_usage"), broken)) == 2


def test_demo_projects_validate_against_the_spec() -> None:
    schema = spec()["paths"]["/projects"]["get"]["responses"]["200"]["content"][
        "application/vnd.api+json"]["schema"]
    root = {**to_json_schema(schema, strict=False),
            "components": to_json_schema(spec()["components"], strict=False)}
    validator = jsonschema.Draft7Validator(root)
    assert errors_of(validator, {"data": DemoAccount().project_resources(), "meta": {}}) == []


def test_usage_grows_with_time_and_rolls_over_at_period_end() -> None:
    now = [1_000_000.0]
    account = DemoAccount(clock=lambda: now[0], speed=3600)  # one real second = one hour
    web = account.projects["proj_demo_web"]
    first = account.usage(web)["data"]["attributes"]["price"]
    now[0] += 10
    later = account.usage(web)["data"]["attributes"]["price"]
    assert later > first
    now[0] += 24 * 20  # 20 simulated days: past the 30-day period end
    rolled = account.usage(web)["data"]["attributes"]
    assert rolled["price"] < first


def test_a_product_running_all_the_time_uses_the_elapsed_time_in_its_unit() -> None:
    """One VM billed by the minute uses 60 minutes an hour, not 60 VMs' worth."""
    account = DemoAccount(clock=lambda: 1_000_000.0)
    start, _, now = account.period()
    hours = (now - start) / 3600
    products = {p["id"]: p for p in account.usage(account.projects["proj_demo_web"])
                ["data"]["attributes"]["products"]}
    assert products["si_vm_ci"]["unit"] == "minute"
    assert products["si_vm_ci"]["quantity"] == pytest.approx(hours * 60, abs=0.01)
    assert products["si_eip"]["quantity"] == pytest.approx(hours, abs=0.01)
    assert products["si_bm_web"]["quantity"] == pytest.approx(2 * hours, abs=0.01)  # 2 servers


def test_demo_api_serves_and_checks_the_token() -> None:
    with DemoApi(token=TOKEN) as api:
        status, headers, body = http_get(api.url + "/billing/usage?filter[project]=proj_demo_gpu",
                                         {"Authorization": TOKEN})
        assert status == 200 and headers["Content-Type"] == "application/vnd.api+json"
        assert json.loads(body)["data"]["attributes"]["project"]["slug"] == "ml-training"
        assert http_get(api.url + "/billing/usage?filter[project]=proj_demo_gpu")[0] == 401


def test_faults_can_be_injected_over_http() -> None:
    with DemoApi() as api:
        from urllib.request import Request, urlopen

        request = Request(api.url + "/__demo__/faults", method="POST",
                          data=json.dumps({"project": "proj_demo_web", "times": 1,
                                           "fault": {"kind": "status", "status": 503}}).encode())
        with urlopen(request, timeout=5) as response:
            assert response.status == 200
        url = api.url + "/billing/usage?filter[project]=proj_demo_web"
        assert http_get(url)[0] == 503
        assert http_get(url)[0] == 200
        assert Fault.from_json({"kind": "reset", "bogus": 1}) == Fault("reset")
