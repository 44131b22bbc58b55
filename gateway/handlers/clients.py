"""Client administration: ``/v1/admin/clients`` (admin bearer token).

``POST /v1/admin/clients`` {name, granularities, purposes, webhook_url?} → 201 {client_id, token,
…}; the token is in this answer only. ``POST /v1/admin/clients/{id}/rotate`` → a new token (the
old one stops working), ``POST /v1/admin/clients/{id}/revoke`` → the revoked client.
``GET /v1/admin/clients`` and ``GET /v1/admin/clients/{id}`` show clients without tokens.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from gateway import clients
from gateway.app import POOL_KEY, SETTINGS_KEY
from gateway.auth import check_admin
from gateway.db import acquire
from gateway.errors import NotFoundError
from gateway.handlers import json_response, read_model


def _client_id(request: web.Request) -> uuid.UUID:
    raw = request.match_info["id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFoundError(f"no client {raw[:64]!r}") from None


async def add_client(request: web.Request) -> web.Response:
    """POST /v1/admin/clients: register a client; the token is in this answer only."""
    settings = request.app[SETTINGS_KEY]
    check_admin(request, settings)
    body = await read_model(request, clients.ClientIn)
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        new = await clients.add_client(conn, body)
    return json_response(new.as_json(), status=201)


async def rotate_client(request: web.Request) -> web.Response:
    """POST /v1/admin/clients/{id}/rotate: a new token; the old one stops working."""
    settings = request.app[SETTINGS_KEY]
    check_admin(request, settings)
    client_id = _client_id(request)
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        new = await clients.rotate_client(conn, client_id)
    return json_response(new.as_json())


async def revoke_client(request: web.Request) -> web.Response:
    """POST /v1/admin/clients/{id}/revoke: the client's token stops working."""
    settings = request.app[SETTINGS_KEY]
    check_admin(request, settings)
    client_id = _client_id(request)
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        revoked = await clients.revoke_client(conn, client_id)
    return json_response(revoked)


async def list_clients(request: web.Request) -> web.Response:
    """GET /v1/admin/clients: every client (no tokens)."""
    settings = request.app[SETTINGS_KEY]
    check_admin(request, settings)
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        found = await clients.list_clients(conn)
    return json_response({"clients": found})


async def get_client(request: web.Request) -> web.Response:
    """GET /v1/admin/clients/{id}: one client (no token)."""
    settings = request.app[SETTINGS_KEY]
    check_admin(request, settings)
    client_id = _client_id(request)
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        found = await clients.get_client(conn, client_id)
    return json_response(found)


def setup_routes(app: web.Application) -> None:
    """Register the client administration routes."""
    app.router.add_post("/v1/admin/clients", add_client)
    app.router.add_get("/v1/admin/clients", list_clients)
    app.router.add_get("/v1/admin/clients/{id}", get_client)
    app.router.add_post("/v1/admin/clients/{id}/rotate", rotate_client)
    app.router.add_post("/v1/admin/clients/{id}/revoke", revoke_client)


# ---------------------------------------------------------------------------------------------
# OpenAPI (merged into /openapi.json via gateway.openapi.PATH_MODULES)

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
