"""The client administration paths (``/v1/admin/clients``) in /openapi.json."""

from __future__ import annotations

from typing import Any

from gateway.services import clients

_PROBLEM = {
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
}
_ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
    "description": "client id",
}
_CLIENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "client_id": {"type": "string", "format": "uuid"},
        "name": {"type": "string"},
        "granularities": {"type": "array", "items": {"enum": list(clients.GRANULARITIES)}},
        "purposes": {"type": "array", "items": {"type": "string"}},
        "webhook_url": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "rotated_at": {"type": ["string", "null"], "format": "date-time"},
        "revoked_at": {"type": ["string", "null"], "format": "date-time"},
    },
    "required": ["client_id", "name", "granularities", "purposes"],
}
_WITH_TOKEN: dict[str, Any] = {
    "allOf": [
        _CLIENT,
        {
            "type": "object",
            "properties": {"token": {"type": "string", "description": "shown only here"}},
            "required": ["token"],
        },
    ]
}


def _problems(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "problem", **_PROBLEM} for c in codes}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


OPENAPI_PATHS: dict[str, Any] = {
    "/v1/admin/clients": {
        "post": {
            "summary": "Register a data client (billing system, other recipient)",
            "security": _ADMIN,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": clients.ClientIn.model_json_schema()}},
            },
            "responses": {
                "201": _json(_WITH_TOKEN, "the client and its token (shown only here)"),
                **_problems(400, 401, 415, 422, 503),
            },
        },
        "get": {
            "summary": "List data clients (without tokens)",
            "security": _ADMIN,
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {"clients": {"type": "array", "items": _CLIENT}},
                    },
                    "every client",
                ),
                **_problems(401, 503),
            },
        },
    },
    "/v1/admin/clients/{id}": {
        "get": {
            "summary": "One data client (without token)",
            "security": _ADMIN,
            "parameters": [_ID],
            "responses": {"200": _json(_CLIENT, "the client"), **_problems(401, 404, 503)},
        }
    },
    "/v1/admin/clients/{id}/rotate": {
        "post": {
            "summary": "Issue a new token for a client; the old token stops working",
            "security": _ADMIN,
            "parameters": [_ID],
            "responses": {
                "200": _json(_WITH_TOKEN, "the client and its new token (shown only here)"),
                **_problems(401, 404, 409, 503),
            },
        }
    },
    "/v1/admin/clients/{id}/revoke": {
        "post": {
            "summary": "Revoke a client's token",
            "security": _ADMIN,
            "parameters": [_ID],
            "responses": {
                "200": _json(_CLIENT, "the revoked client"),
                **_problems(401, 404, 409, 503),
            },
        }
    },
}
