"""The OpenAPI 3.1 document served at ``/openapi.json`` (and rendered at ``/docs``).

Hand-maintained: every route the app registers must appear here (a test checks it). Request
schemas come from the pydantic models the handlers validate with, so they cannot drift.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel

from gateway.api.handlers.admin import ConsentEndIn, ConsentIn
from gateway.api.openapi import admin_clients, customer, data_client, portal
from gateway.services import registry

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


_PROBLEM = {"content": {"application/problem+json": {"schema": _ref("Problem")}}}


def _problems(*statuses: int) -> dict[str, Any]:
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

_CONNECTION = {
    "type": "object",
    "properties": {
        "ean": {"type": "string"},
        "commodity": {"enum": ["electricity", "gas"]},
        "meter_id": {"type": "string"},
        "customer_id": {"type": "string"},
        "contract_start": {"type": "string", "format": "date-time"},
        "contract_end": {"type": ["string", "null"], "format": "date-time"},
        "end_reason": {"enum": ["contract-ended", "move-out", None]},
        "level": {"enum": ["none", "monthly", "daily"]},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
    "required": ["ean", "commodity", "meter_id", "customer_id", "contract_start", "level"],
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
                    "reason": {"type": "string"},
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


def _model_schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    models: tuple[type[BaseModel], ...] = (
        registry.ConnectionIn,
        registry.ContractEndIn,
        registry.DeviceIn,
        ConsentIn,
        ConsentEndIn,
    )
    for model in models:
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


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
    return doc


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
                    "summary": "Register a connection",
                    "security": _ADMIN,
                    "requestBody": {"required": True, **_json(_ref("ConnectionIn"))},
                    "responses": {
                        "201": {"description": "registered", **_json(_ref("Connection"))},
                        **_problems(400, 401, 409, 415, 422, 503),
                    },
                }
            },
            "/v1/admin/meters/{ean}": {
                "get": {
                    "summary": "Show a connection",
                    "security": _ADMIN,
                    "parameters": [_EAN_PARAM],
                    "responses": {
                        "200": {"description": "the connection", **_json(_ref("Connection"))},
                        **_problems(401, 404, 422, 503),
                    },
                },
                "patch": {
                    "summary": "End a contract (contract ended or move-out)",
                    "description": "Ends every consent on the EAN at the same instant.",
                    "security": _ADMIN,
                    "parameters": [_EAN_PARAM],
                    "requestBody": {"required": True, **_json(_ref("ContractEndIn"))},
                    "responses": {
                        "200": {"description": "the ended connection", **_json(_ref("Connection"))},
                        **_problems(400, 401, 404, 409, 415, 422, 503),
                    },
                },
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
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "format": "uuid"},
                        }
                    ],
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
                "Connection": _CONNECTION,
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
