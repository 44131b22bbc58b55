"""The generated OpenAPI document's shape: what a client generator and a strict client need.

That real answers match it is tests/integration/test_openapi_conformance.py; that every route
is in it, tests/integration/test_serve.py.
"""

from __future__ import annotations

import re
from typing import Any, get_args

import jsonschema_rs
import pytest
from openapi_spec_validator import validate

from consent.levels import Level
from consent.model import Channel, EndReason, OnRevoke
from gateway.api.openapi import OPERATIONS, common, document, html
from gateway.services import registry

DOC = document()
OPS = [
    (method, path, op)
    for path, operations in DOC["paths"].items()
    for method, op in operations.items()
]
CAMEL = re.compile(r"[a-z][a-zA-Z0-9]*")


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(DOC)


def test_every_operation_has_an_id_a_declared_tag_and_a_typed_success_body() -> None:
    tags = {t["name"] for t in DOC["tags"]}
    assert all(t.get("description") for t in DOC["tags"])
    ids = [op["operationId"] for _, _, op in OPS]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for method, path, op in OPS:
        where = f"{method.upper()} {path}"
        assert CAMEL.fullmatch(op["operationId"]), where
        assert len(op["tags"]) == 1 and op["tags"][0] in tags, where
        assert op.get("summary"), where
        successes = [r for s, r in op["responses"].items() if s.startswith("2")]
        assert successes, f"{where}: no 2xx response"
        bodies = [(media, c["schema"]) for r in successes for media, c in r["content"].items()]
        assert bodies, f"{where}: a 2xx without a body"
        for media, schema in bodies:
            if media == "application/json" or media.endswith("+json") or "json" in media:
                # a model ($ref), never a bare {"type": "object"}
                assert set(schema) == {"$ref"}, f"{where} {media}: {schema}"
            else:
                assert schema.get("type") == "string", f"{where} {media}: {schema}"


def test_errors_are_problems_and_429_goes_with_401() -> None:
    for method, path, op in OPS:
        for status, response in op["responses"].items():
            if int(status) >= 400:
                [(media, content)] = response["content"].items()
                assert media == "application/problem+json", (method, path, status)
                ref = content["schema"]["$ref"].rsplit("/", 1)[-1]
                schema = DOC["components"]["schemas"][ref]
                assert {"type", "title", "status", "detail"} <= set(schema["required"])
        if "401" in op["responses"]:
            assert "429" in op["responses"], (method, path)
        assert bool(op["security"]) == ("401" in op["responses"]), (method, path)


def test_path_parameters_are_declared_and_every_parameter_is_typed() -> None:
    for method, path, op in OPS:
        params = op.get("parameters", [])
        in_path = {p["name"] for p in params if p["in"] == "path"}
        assert in_path == set(re.findall(r"\{(\w+)\}", path)), (method, path)
        for p in params:
            assert p["schema"], (method, path, p["name"])
            assert p["in"] != "path" or p["required"] is True


def test_servers_and_declared_enums_match_the_domain() -> None:
    assert DOC["openapi"] == "3.1.0"
    assert DOC["servers"] == [{"url": "/", "description": "the gateway serving this document"}]
    assert set(get_args(common.LevelName)) == {level.value for level in Level}
    assert set(get_args(common.ChannelName)) == {c.value for c in Channel}
    assert set(get_args(common.OnRevokeName)) == {o.value for o in OnRevoke}
    reasons = {r.value for r in EndReason} | set(get_args(registry.EndReason))
    assert set(get_args(common.ConsentEndReason)) == reasons
    assert set(get_args(common.ConsentStatus)) == reasons | {"active"}
    statuses = DOC["components"]["schemas"]["CustomerConsent"]["properties"]["status"]["enum"]
    assert len(statuses) == len(set(statuses))


def _validator(name: str) -> Any:
    root = {"$ref": f"#/components/schemas/{name}", "components": DOC["components"]}
    return jsonschema_rs.Draft202012Validator(root, validate_formats=True)


READING = {
    "ean": "871600000000000017",
    "contract_id": "6f1c1f0e-8a3b-4c1e-9d1e-0a0b0c0d0e0f",
    "customer_id": "alice",
    "commodity": "electricity",
    "granularity": "P1D",
    "period_start": "2024-03-01T00:00:00Z",
    "measured_at": "2024-03-01T00:00:04Z",
}
ELECTRICITY = {"import_t1_wh": 1, "import_t2_wh": None, "export_t1_wh": 0, "export_t2_wh": None}


@pytest.mark.parametrize(
    ("registers", "valid"),
    [
        (ELECTRICITY, True),
        ({"volume_dm3": 12}, True),
        ({"import_t1_wh": 1}, False),  # every electricity register is required
        ({**ELECTRICITY, "volume_dm3": 1}, False),  # both commodities at once
        ({"volume_dm3": None}, False),  # gas volume is never null
        ({}, False),
    ],
)
def test_reading_registers_are_exactly_one_commodity(registers: Any, valid: bool) -> None:
    validator = _validator("Reading")
    assert validator.is_valid({**READING, "registers": registers}) is valid
    schema = DOC["components"]["schemas"]["Reading"]["properties"]["registers"]
    assert len(schema["oneOf"]) == 2


def test_docs_page_renders_parameters_bodies_responses_and_schemas() -> None:
    page = html.render(DOC)
    # nothing fetched: no script, stylesheet, image or frame
    assert not re.search(r"<(script|link|img|iframe|object)\b|\bsrc=", page)
    assert page.count("<main>") == 1 and "<nav aria-label='Operations'>" in page
    for op in OPERATIONS:
        assert f"<article id='{op.operation_id}'" in page, op.operation_id
    for name in DOC["components"]["schemas"]:
        assert f"id='schema-{name}'" in page, name
    targets = set(re.findall(r"id='([^']+)'", page))
    assert set(re.findall(r"href='#([^']+)'", page)) <= targets
