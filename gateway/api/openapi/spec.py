"""The building blocks of the API document: an ``Operation`` per route, and ``assemble`` turning
them into OpenAPI 3.1.

An operation names its request and response bodies as pydantic models (or, for non-JSON media,
a plain schema); ``assemble`` gathers every model into ``components/schemas`` with pydantic's
``models_json_schema`` (request bodies in validation mode, responses in serialization mode, so
each schema says what the gateway accepts and what it sends) and refers to them with ``$ref``.
Problem responses are named by status only (``problems``): they all share the ``Problem`` schema.

Hand-written rather than an aiohttp OpenAPI plugin: the routes stay plain aiohttp routes in
``gateway.api.routes`` (one table), and the plugins available either generate from docstrings
(untyped) or want their own handler signatures. The part a library does well, JSON Schema from
types, is pydantic's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from gateway.times import ApiTime

REF: Final = "#/components/schemas/{model}"
JSON: Final = "application/json"
PROBLEM_MEDIA: Final = "application/problem+json"

#: a body: a model (its schema goes to components) or a plain schema (text media, CSV)
Body = type[BaseModel] | dict[str, Any]

#: what each error status means when an operation does not word it itself
PROBLEM_TEXT: Final[Mapping[int, str]] = {
    400: "unreadable body or query",
    401: "missing or invalid bearer token",
    403: "authenticated, but not allowed",
    404: "not found",
    406: "none of the offered media types is acceptable (`Accept`)",
    409: "conflict with the current state",
    413: "body over the size limit",
    415: "wrong media type or content coding",
    422: "invalid fields (listed in `errors`)",
    431: "the request line or a header field is longer than the server accepts",
    503: "database unavailable; retry after `Retry-After` seconds",
}

#: 401 of the device and data-client operations (``gateway.api.auth``)
TOKEN_OR_CERTIFICATE_401: Final = (
    "missing or invalid bearer token; on a gateway set up for mutual TLS also a connection "
    "without a client certificate from its client CA (`client-certificate-required`)"
)

#: what the HTTP layer answers for any operation before a handler runs (gateway.api.protocol):
#: a request line or header that is not valid HTTP, or one longer than the parser accepts
PROTOCOL_PROBLEMS: Final[Mapping[int, str]] = {
    400: "the request line or a header is not valid HTTP",
    431: PROBLEM_TEXT[431],
}

#: security scheme names (components/securitySchemes)
Scheme = Literal["adminToken", "deviceToken", "clientToken", "customerToken"]


@dataclass(frozen=True)
class Response:
    """One status of an operation: what it means and its body per media type."""

    description: str
    content: Mapping[str, Body] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    """One route of ``gateway.api.routes`` as the document describes it.

    ``operation_id``: stable camelCase (client generators name methods after it; never rename).
    ``problems``: error statuses the handler can answer, each with its meaning for this
    operation ("" takes PROBLEM_TEXT's); ``assemble`` adds 429 wherever 401 is, and the
    PROTOCOL_PROBLEMS every operation may answer.
    """

    method: str
    path: str
    operation_id: str
    tag: str
    summary: str
    responses: Mapping[int, Response]
    description: str = ""
    security: Scheme | None = None
    parameters: tuple[dict[str, Any], ...] = ()
    request: Mapping[str, Body] | None = None
    problems: Mapping[int, str] = field(default_factory=dict)
    #: problems whose body has more members than ``Problem`` (a subclass of it), by status
    problem_bodies: Mapping[int, type[BaseModel]] = field(default_factory=dict)


def problems(*statuses: int, says: Mapping[int, str] | None = None) -> dict[int, str]:
    """``statuses`` with their meaning: ``says``' words where given, PROBLEM_TEXT's otherwise."""
    return {s: (says or {}).get(s, "") for s in statuses}


def path_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A path parameter."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def query_param(
    name: str, schema: dict[str, Any], description: str, *, required: bool = False
) -> dict[str, Any]:
    """A query parameter given at most once."""
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


EAN_SCHEMA: Final = {"type": "string", "pattern": "^[0-9]{18}$"}
UUID_SCHEMA: Final = {"type": "string", "format": "uuid"}
#: a time query parameter's schema (RFC 3339 with an offset, or a plain local date)
TIME_PARAM: Final = {"$ref": "#/components/schemas/ApiTime"}

# ---------------------------------------------------------------------------------------------
# ApiTime: pydantic describes it as date-time only; it also takes a plain local date

#: what ApiTime fields accept, as their pydantic Field says
_API_TIME_TEXT: Final[str] = next(
    m.description for m in get_args(ApiTime) if isinstance(m, FieldInfo) and m.description
)
API_TIME_SCHEMA: Final = {
    "type": "string",
    "anyOf": [{"format": "date-time"}, {"format": "date"}],
    "description": f"{_API_TIME_TEXT}; e.g. `2024-03-01T00:00:00Z`, "
    "`2024-03-01T00:00:00+01:00` or `2024-03-01`",
}


def _api_times(schema: Any) -> Any:
    """``schema`` with every ApiTime field referring to the ``ApiTime`` schema."""
    if isinstance(schema, list):
        return [_api_times(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("format") == "date-time" and schema.get("description") == _API_TIME_TEXT:
        rest = {k: v for k, v in schema.items() if k not in ("type", "format", "description")}
        return {**rest, "$ref": REF.format(model="ApiTime")}
    return {k: _api_times(v) for k, v in schema.items()}


# ---------------------------------------------------------------------------------------------
# assembling


def _models(operations: list[Operation], extra: tuple[type[BaseModel], ...]) -> set[Any]:
    found: set[tuple[type[BaseModel], JsonSchemaMode]] = {(m, "serialization") for m in extra}
    for op in operations:
        for body in (op.request or {}).values():
            if isinstance(body, type):
                found.add((body, "validation"))
        for response in op.responses.values():
            for body in response.content.values():
                if isinstance(body, type):
                    found.add((body, "serialization"))
        found.update((m, "serialization") for m in op.problem_bodies.values())
    return found


def assemble(
    operations: list[Operation],
    *,
    base: dict[str, Any],
    problem: type[BaseModel],
    extra_models: tuple[type[BaseModel], ...] = (),
) -> dict[str, Any]:
    """The OpenAPI document: ``base`` (info, servers, tags, securitySchemes) with the paths of
    ``operations`` and every model they name in ``components/schemas``."""
    models = sorted(_models(operations, (problem, *extra_models)), key=lambda m: m[0].__name__)
    refs, defs = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = {"ApiTime": API_TIME_SCHEMA, **_api_times(defs.get("$defs", {}))}

    def body(schema: Body, mode: JsonSchemaMode) -> dict[str, Any]:
        return {"schema": refs[(schema, mode)] if isinstance(schema, type) else schema}

    problem_ref = refs[(problem, "serialization")]
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        responses: dict[str, Any] = {}
        for status, response in sorted(op.responses.items()):
            out: dict[str, Any] = {"description": response.description}
            if response.content:
                out["content"] = {m: body(s, "serialization") for m, s in response.content.items()}
            responses[str(status)] = out
        errors = dict(op.problems)
        for status, text in PROTOCOL_PROBLEMS.items():
            errors.setdefault(status, text)
        if 401 in errors:
            # every operation that checks a token may refuse it unheard (gateway.api.throttle)
            errors.setdefault(
                429,
                "too many failed authentications from this address or with this credential; "
                "retry after `Retry-After` seconds",
            )
        for status, text in sorted(errors.items()):
            responses[str(status)] = {
                "description": text or PROBLEM_TEXT[status],
                "content": {
                    PROBLEM_MEDIA: {
                        "schema": refs[(op.problem_bodies[status], "serialization")]
                        if status in op.problem_bodies
                        else problem_ref
                    }
                },
            }
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "tags": [op.tag],
            "summary": op.summary,
        }
        if op.description:
            operation["description"] = op.description
        operation["security"] = [{op.security: []}] if op.security else []
        if op.parameters:
            operation["parameters"] = list(op.parameters)
        if op.request is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {m: body(s, "validation") for m, s in op.request.items()},
            }
        operation["responses"] = responses
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    doc = dict(base)
    doc["paths"] = paths
    doc["components"] = {**base.get("components", {}), "schemas": dict(sorted(schemas.items()))}
    return doc


def paths_of(operations: list[Operation]) -> dict[str, dict[str, Operation]]:
    """path → method → operation (for tests that look up one audience's routes)."""
    out: dict[str, dict[str, Operation]] = {}
    for op in operations:
        out.setdefault(op.path, {})[op.method.lower()] = op
    return out
