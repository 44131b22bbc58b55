"""The OpenAPI 3.1 document served at ``/openapi.json`` (and rendered at ``/docs``).

Hand-maintained: every route the app registers must appear here (a test checks it). Request
schemas come from the pydantic models the handlers validate with, so they cannot drift.
"""

from __future__ import annotations

import functools
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from consent.levels import Level
from gateway.api.handlers.admin import ConsentEndIn, ConsentIn
from gateway.api.openapi import admin_clients, customer, data_client, portal
from gateway.services import devices, registry
from gateway.times import ApiTime

_REF = "#/components/schemas/{model}"
#: what ApiTime fields accept, as pydantic describes them (their schema says ``date-time`` only)
_API_TIME_TEXT: str = next(
    m.description for m in get_args(ApiTime) if isinstance(m, FieldInfo) and m.description
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


_PROBLEM = {"content": {"application/problem+json": {"schema": _ref("Problem")}}}


def _problems(*statuses: int, says: dict[int, str] | None = None) -> dict[str, Any]:
    """Problem responses of ``statuses``; ``says`` words some of them for this operation."""
    text = {
        400: "unreadable body",
        401: "missing or invalid bearer token",
        403: "not allowed",
        404: "not found",
        409: "conflict with the current state",
        413: "body over the size limit",
        415: "wrong media type",
        422: "invalid fields (listed in `errors`)",
        503: "database unavailable; retry after `Retry-After` seconds",
        **(says or {}),
    }
    return {str(s): {"description": text[s], **_PROBLEM} for s in statuses}


_ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
_DEVICE: list[dict[str, list[str]]] = [{"deviceToken": []}]
_EAN_PARAM = {
    "name": "ean",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]{18}$"},
    "description": "EAN-18 connection code",
}


def _id_param(what: str) -> dict[str, Any]:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
        "description": f"{what} id (anything else answers 404)",
    }


_TIME = {"type": "string", "format": "date-time"}
_OPEN_TIME = {"type": ["string", "null"], "format": "date-time"}
_LEVEL = {"enum": [level.value for level in Level]}
#: why a contract ended (SPEC §3a); null while it has not
_CONTRACT_END_REASON = {"enum": [*get_args(registry.EndReason), None]}

_CONNECTION = {
    "type": "object",
    "description": "The `/v1/admin/meters` shorthand's view: a connection with its latest "
    "contract and current meter (the whole history: GET /v1/admin/connections/{ean}).",
    "properties": {
        "ean": {"type": "string"},
        "commodity": {"enum": sorted(registry.COMMODITIES)},
        "meter_id": {"type": ["string", "null"]},
        "customer_id": {"type": "string"},
        "contract_id": {"type": "string", "format": "uuid"},
        "contract_start": _TIME,
        "contract_end": _OPEN_TIME,
        "end_reason": _CONTRACT_END_REASON,
        "level": _LEVEL,
        "created_at": _TIME,
        "updated_at": _TIME,
    },
    "required": [
        "ean",
        "commodity",
        "meter_id",
        "customer_id",
        "contract_id",
        "contract_start",
        "level",
    ],
}

_CONTRACT = {
    "type": "object",
    "description": "A supply contract on a connection (SPEC §3a). Level and consents belong to "
    "it; a new contract starts at the default level with no consent.",
    "properties": {
        "contract_id": {"type": "string", "format": "uuid"},
        "ean": {"type": "string"},
        "customer_id": {"type": "string"},
        "start": _TIME,
        "end": {**_OPEN_TIME, "description": "exclusive; null: open-ended"},
        "end_reason": _CONTRACT_END_REASON,
        "level": _LEVEL,
        "created_at": _TIME,
        "updated_at": _TIME,
    },
    "required": [
        "contract_id",
        "ean",
        "customer_id",
        "start",
        "end",
        "end_reason",
        "level",
        "created_at",
        "updated_at",
    ],
}

_METER_INSTALLATION = {
    "type": "object",
    "description": "A meter installed on the connection during [installed_from, installed_until)",
    "properties": {
        "meter_id": {"type": "string"},
        "installed_from": _TIME,
        "installed_until": {**_OPEN_TIME, "description": "null: still installed"},
    },
    "required": ["meter_id", "installed_from", "installed_until"],
}

_CONNECTION_HISTORY = {
    "type": "object",
    "description": "A connection with its whole contract and meter history, oldest first.",
    "properties": {
        "ean": {"type": "string"},
        "commodity": {"enum": sorted(registry.COMMODITIES)},
        "created_at": _TIME,
        "contracts": {"type": "array", "items": _ref("Contract")},
        "meters": {"type": "array", "items": _ref("MeterInstallation")},
    },
    "required": ["ean", "commodity", "created_at", "contracts", "meters"],
}

_DEVICE_SCHEMA = {
    "type": "object",
    "description": "A field device (never its token)",
    "properties": {
        "device_id": {"type": "string", "format": "uuid"},
        "meter_ids": {"type": "array", "items": {"type": "string"}},
        "created_at": _TIME,
        "revoked_at": {**_OPEN_TIME, "description": "null: the token works"},
    },
    "required": ["device_id", "meter_ids", "created_at", "revoked_at"],
}

_PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                },
            },
        },
    },
    "required": ["type", "title", "status", "detail"],
}

_TELEGRAM_RESULT = {
    "type": "object",
    "properties": {
        "accepted": {"type": "integer"},
        "rejected": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "reason": {
                        "type": "string",
                        "description": "stable code, e.g. `bad-crc`, `meter-not-bound` (no "
                        "meter of the telegram is bound to this device), `unknown-meter` (the "
                        "meter was installed on no connection at the measured time), "
                        "`no-contract` (no supply contract was in force on its connection "
                        "then), `clock-unset`, `future-timestamp`, `too-old`",
                    },
                    "detail": {"type": "string"},
                },
            },
        },
    },
    "required": ["accepted", "rejected"],
}


_JWKS = {
    "type": "object",
    "properties": {
        "keys": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "kty": {"const": "OKP"},
                    "crv": {"const": "Ed25519"},
                    "x": {"type": "string", "description": "public key, base64url"},
                    "kid": {"type": "string", "description": "RFC 7638 thumbprint"},
                    "use": {"const": "sig"},
                    "alg": {"const": "EdDSA"},
                    "key_ops": {"type": "array", "items": {"const": "verify"}},
                },
                "required": ["kty", "crv", "x", "kid"],
            },
        }
    },
    "required": ["keys"],
}


def _api_times(schema: Any) -> Any:
    """``schema`` with every ApiTime field (pydantic says ``format: date-time`` only) saying
    what it accepts: RFC 3339 with an offset, or a plain date (midnight Europe/Amsterdam)."""
    if isinstance(schema, list):
        return [_api_times(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("format") == "date-time" and schema.get("description") == _API_TIME_TEXT:
        rest = {k: v for k, v in schema.items() if k not in ("type", "format", "description")}
        return {**rest, "$ref": _REF.format(model="ApiTime")}
    return {k: _api_times(v) for k, v in schema.items()}


_API_TIME = {
    "type": "string",
    "anyOf": [{"format": "date-time"}, {"format": "date"}],
    "description": f"{_API_TIME_TEXT}; e.g. `2024-03-01T00:00:00Z`, "
    "`2024-03-01T00:00:00+01:00` or `2024-03-01`",
}


def _model_schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    models: tuple[type[BaseModel], ...] = (
        registry.ConnectionIn,
        registry.ContractEndIn,
        registry.ContractIn,
        registry.ContractPatchIn,
        registry.MeterExchangeIn,
        devices.DeviceIn,
        ConsentIn,
        ConsentEndIn,
    )
    for model in models:
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return {name: _api_times(schema) for name, schema in schemas.items()}


#: the paths described beside their handlers (path → operations, in this document's shape),
#: merged into ``paths``
MODULE_PATHS: tuple[dict[str, Any], ...] = (
    portal.OPENAPI_PATHS,
    customer.OPENAPI_PATHS,
    admin_clients.OPENAPI_PATHS,
    data_client.OPENAPI_PATHS,
)


def _module_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for module_paths in MODULE_PATHS:
        paths.update(module_paths)
    return paths


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document (built once per process)."""
    doc = _base_document()
    doc["paths"].update(_module_paths())
    _with_throttling(doc)
    return doc


def _with_throttling(doc: dict[str, Any]) -> None:
    # every operation that checks a token may refuse it unheard (gateway.api.throttle): said here
    # once rather than beside each of the 401s
    for operations in doc["paths"].values():
        for operation in operations.values():
            responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
            if "401" in responses:
                responses["429"] = {
                    "description": "too many failed authentications from this address or with "
                    "this credential; retry after `Retry-After` seconds",
                    **_PROBLEM,
                }


def _base_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Meterpoort",
            "version": "1",
            "description": "Smart-meter consent and data-access gateway. Errors are RFC 9457 "
            "problem+json with stable `type` URIs under https://meterpoort.nl/problems/.",
        },
        "paths": {
            "/v1/telegrams": {
                "post": {
                    "summary": "Push one or more raw DSMR telegrams (back to back)",
                    "description": "Per-telegram outcome. Idempotent: a repeated telegram is "
                    "accepted again without changing stored readings.",
                    "security": _DEVICE,
                    "requestBody": {
                        "required": True,
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "responses": {
                        "200": {"description": "outcome per telegram", **_json(_TELEGRAM_RESULT)},
                        **_problems(400, 401, 413, 415, 503),
                    },
                }
            },
            "/v1/admin/meters": {
                "post": {
                    "summary": "Register a connection with its first contract and meter",
                    "description": "Shorthand for a new EAN: the connection, a supply contract "
                    "from `contract_start` (default level, no consent) and the meter installed "
                    "from the same instant. Further contracts: POST /v1/admin/contracts; meter "
                    "exchanges: POST /v1/admin/connections/{ean}/meter-exchange.",
                    "security": _ADMIN,
                    "requestBody": {"required": True, **_json(_ref("ConnectionIn"))},
                    "responses": {
                        "201": {"description": "registered", **_json(_ref("Connection"))},
                        **_problems(
                            400,
                            401,
                            409,
                            415,
                            422,
                            503,
                            says={
                                409: "the EAN is already registered (add a contract to it), "
                                "or the meter is installed on another connection (named in "
                                "`detail`)"
                            },
                        ),
                    },
                }
            },
            "/v1/admin/meters/{ean}": {
                "get": {
                    "summary": "Show a connection: its latest contract and current meter",
                    "security": _ADMIN,
                    "parameters": [_EAN_PARAM],
                    "responses": {
                        "200": {"description": "the connection", **_json(_ref("Connection"))},
                        **_problems(401, 404, 422, 503),
                    },
                },
                "patch": {
                    "summary": "End the contract open on the connection (contract ended, "
                    "move-out or switch)",
                    "description": "Shorthand of PATCH /v1/admin/contracts/{id} for the contract "
                    "open at `contract_end`: ends it and every consent of it at the same "
                    "instant.",
                    "security": _ADMIN,
                    "parameters": [_EAN_PARAM],
                    "requestBody": {"required": True, **_json(_ref("ContractEndIn"))},
                    "responses": {
                        "200": {"description": "the ended connection", **_json(_ref("Connection"))},
                        **_problems(
                            400,
                            401,
                            404,
                            409,
                            415,
                            422,
                            503,
                            says={
                                409: "every contract of the connection has ended, or a later "
                                "contract starts before `contract_end` (named in `detail`)"
                            },
                        ),
                    },
                },
            },
            "/v1/admin/connections/{ean}": {
                "get": {
                    "summary": "A connection with its whole contract and meter history",
                    "security": _ADMIN,
                    "parameters": [_EAN_PARAM],
                    "responses": {
                        "200": {
                            "description": "the connection",
                            **_json(_ref("ConnectionHistory")),
                        },
                        **_problems(401, 404, 422, 503, says={404: "no connection with this EAN"}),
                    },
                }
            },
            "/v1/admin/connections/{ean}/meter-exchange": {
                "post": {
                    "summary": "Exchange the meter of a connection",
                    "description": "The installation of the meter in place at `at` ends at `at` "
                    "and `meter_id`'s starts at the same instant. Rebind the field device "
                    "afterwards (PATCH /v1/admin/devices/{id}).",
                    "security": _ADMIN,
                    "parameters": [_EAN_PARAM],
                    "requestBody": {"required": True, **_json(_ref("MeterExchangeIn"))},
                    "responses": {
                        "200": {
                            "description": "the connection with its history",
                            **_json(_ref("ConnectionHistory")),
                        },
                        **_problems(
                            400,
                            401,
                            404,
                            409,
                            415,
                            422,
                            503,
                            says={
                                404: "no connection with this EAN",
                                409: "the new meter is installed on another connection then "
                                "(the EAN is named in `detail`), is already this one's, or no "
                                "meter is installed on the connection at `at`",
                            },
                        ),
                    },
                }
            },
            "/v1/admin/contracts": {
                "post": {
                    "summary": "Register a supply contract on a connection (move-in, switch to us)",
                    "description": "The contract starts at the default level with no consent; "
                    "the previous tenant's choices never carry over. Contracts on one EAN never "
                    "overlap; a new one may start at or after the previous one's end.",
                    "security": _ADMIN,
                    "requestBody": {"required": True, **_json(_ref("ContractIn"))},
                    "responses": {
                        "201": {"description": "the new contract", **_json(_ref("Contract"))},
                        **_problems(
                            400,
                            401,
                            404,
                            409,
                            415,
                            422,
                            503,
                            says={
                                404: "no connection with this EAN",
                                409: "the period overlaps a contract of the connection (named "
                                "in `detail`)",
                            },
                        ),
                    },
                }
            },
            "/v1/admin/contracts/{id}": {
                "patch": {
                    "summary": "End a contract (contract ended, move-out or switch)",
                    "description": "In one transaction: the contract ends at `end`, every "
                    "consent of it still open then ends at `end` with the same reason (pushed to "
                    "subscribers), and the connection's readings measured at or after `end` "
                    "within the contract are deleted.",
                    "security": _ADMIN,
                    "parameters": [_id_param("contract")],
                    "requestBody": {"required": True, **_json(_ref("ContractPatchIn"))},
                    "responses": {
                        "200": {"description": "the ended contract", **_json(_ref("Contract"))},
                        **_problems(
                            400,
                            401,
                            404,
                            409,
                            415,
                            422,
                            503,
                            says={
                                404: "no such contract",
                                409: "the contract has already ended, or a later contract of "
                                "the connection starts before `end` (named in `detail`)",
                                422: "invalid fields (listed in `errors`), or `end` not after "
                                "the contract's start",
                            },
                        ),
                    },
                }
            },
            "/v1/admin/devices": {
                "post": {
                    "summary": "Register a field device",
                    "description": "The token is shown in this answer only.",
                    "security": _ADMIN,
                    "requestBody": {"required": True, **_json(_ref("DeviceIn"))},
                    "responses": {
                        "201": {"description": "registered", **_json(_ref("NewDevice"))},
                        **_problems(400, 401, 415, 422, 503),
                    },
                },
                "get": {
                    "summary": "List field devices (without tokens), oldest first",
                    "security": _ADMIN,
                    "responses": {
                        "200": {
                            "description": "every device",
                            **_json(
                                {
                                    "type": "object",
                                    "properties": {
                                        "devices": {"type": "array", "items": _ref("Device")}
                                    },
                                    "required": ["devices"],
                                }
                            ),
                        },
                        **_problems(401, 503),
                    },
                },
            },
            "/v1/admin/devices/{id}": {
                "patch": {
                    "summary": "Bind a device to other meters (after a meter exchange)",
                    "description": "Replaces the device's meter ids; its token stays valid.",
                    "security": _ADMIN,
                    "parameters": [_id_param("device")],
                    "requestBody": {"required": True, **_json(_ref("DeviceIn"))},
                    "responses": {
                        "200": {"description": "the device", **_json(_ref("Device"))},
                        **_problems(
                            400,
                            401,
                            404,
                            409,
                            415,
                            422,
                            503,
                            says={404: "no such device", 409: "the device is revoked"},
                        ),
                    },
                }
            },
            "/v1/admin/devices/{id}/revoke": {
                "post": {
                    "summary": "Revoke a device's token at once (a stolen or retired dongle)",
                    "description": "Refused from now on by every gateway process. Revoking "
                    "again changes nothing.",
                    "security": _ADMIN,
                    "parameters": [_id_param("device")],
                    "responses": {
                        "200": {"description": "the revoked device", **_json(_ref("Device"))},
                        **_problems(401, 404, 503, says={404: "no such device"}),
                    },
                }
            },
            "/v1/admin/consents": {
                "post": {
                    "summary": "Record a granted interval consent (admin)",
                    "security": _ADMIN,
                    "requestBody": {"required": True, **_json(_ref("ConsentIn"))},
                    "responses": {
                        "201": {"description": "the consent", **_json({"type": "object"})},
                        **_problems(400, 401, 404, 409, 415, 422, 503),
                    },
                }
            },
            "/v1/admin/consents/{id}/end": {
                "post": {
                    "summary": "End a consent (admin)",
                    "description": "Deletes interval readings the consent no longer covers, in "
                    "the same transaction.",
                    "security": _ADMIN,
                    "parameters": [_id_param("consent")],
                    "requestBody": {"required": True, **_json(_ref("ConsentEndIn"))},
                    "responses": {
                        "200": {"description": "the ended consent", **_json({"type": "object"})},
                        **_problems(400, 401, 404, 409, 415, 422, 503),
                    },
                }
            },
            "/v1/keys": {
                "get": {
                    "summary": "Public keys that verify consent receipts and webhooks",
                    "description": "A JWK Set of Ed25519 (OKP) keys; a signature's `kid` names "
                    "its key. Receipt signatures are over the receipt's canonical JSON (sorted "
                    "keys, no whitespace, UTF-8).",
                    "responses": {"200": {"description": "JWK Set", **_json(_JWKS)}},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": {"description": "the process answers"}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: the database is reachable",
                    "responses": {"200": {"description": "ready"}, **_problems(503)},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of the answering process",
                    "responses": {"200": {"description": "text exposition format"}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1"}},
                }
            },
            "/docs": {
                "get": {
                    "summary": "This document as a web page",
                    "responses": {"200": {"description": "HTML"}},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "METERPOORT_ADMIN_TOKEN",
                },
                "deviceToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "token from POST /v1/admin/devices",
                },
                "clientToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "token from POST /v1/admin/clients (billing, other recipients)",
                },
                "customerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "JWT from the supplier's identity provider (EdDSA or ES256); "
                    "`sub` is the customer id",
                },
            },
            "schemas": {
                **_model_schemas(),
                "ApiTime": _API_TIME,
                "Connection": _CONNECTION,
                "ConnectionHistory": _CONNECTION_HISTORY,
                "Contract": _CONTRACT,
                "MeterInstallation": _METER_INSTALLATION,
                "Device": _DEVICE_SCHEMA,
                "NewDevice": {
                    "type": "object",
                    "properties": {
                        "device_id": {"type": "string", "format": "uuid"},
                        "token": {"type": "string"},
                        "meter_ids": {"type": "array", "items": {"type": "string"}},
                    },
                    "required": ["device_id", "token", "meter_ids"],
                },
                "Problem": _PROBLEM_SCHEMA,
            },
        },
    }
