"""Client administration: ``/v1/admin/clients`` (admin bearer token).

``POST /v1/admin/clients`` {name, granularities, purposes, webhook_url?} → 201 {client_id, token,
…}; the token is in this answer only. ``POST /v1/admin/clients/{id}/rotate`` → a new token (the
old one stops working), ``POST /v1/admin/clients/{id}/revoke`` → the revoked client.
``GET /v1/admin/clients`` and ``GET /v1/admin/clients/{id}`` show clients without tokens.
"""

from __future__ import annotations

import uuid

from aiohttp import web

from gateway.api.appkeys import CREDENTIALS_KEY, POOL_KEY, SETTINGS_KEY
from gateway.api.auth import check_admin
from gateway.api.http import json_response, read_model
from gateway.errors import NotFoundError
from gateway.services import clients
from gateway.storage.db import acquire


def _client_id(request: web.Request) -> uuid.UUID:
    raw = request.match_info["id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFoundError(f"no client {raw[:64]!r}") from None


async def add_client(request: web.Request) -> web.Response:
    """POST /v1/admin/clients: register a client; the token is in this answer only."""
    settings = request.app[SETTINGS_KEY]
    check_admin(request)
    body = await read_model(request, clients.ClientIn)
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        new = await clients.add_client(conn, body)
    return json_response(new.as_json(), status=201)


async def rotate_client(request: web.Request) -> web.Response:
    """POST /v1/admin/clients/{id}/rotate: a new token; the old one stops working."""
    settings = request.app[SETTINGS_KEY]
    check_admin(request)
    client_id = _client_id(request)
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        new = await clients.rotate_client(conn, client_id)
    # the old token stops working in this process at once, in others within the cache TTL
    request.app[CREDENTIALS_KEY].forget_clients()
    return json_response(new.as_json())


async def revoke_client(request: web.Request) -> web.Response:
    """POST /v1/admin/clients/{id}/revoke: the client's token stops working."""
    settings = request.app[SETTINGS_KEY]
    check_admin(request)
    client_id = _client_id(request)
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        revoked = await clients.revoke_client(conn, client_id)
    request.app[CREDENTIALS_KEY].forget_clients()
    return json_response(revoked)


async def list_clients(request: web.Request) -> web.Response:
    """GET /v1/admin/clients: every client (no tokens)."""
    settings = request.app[SETTINGS_KEY]
    check_admin(request)
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        found = await clients.list_clients(conn)
    return json_response({"clients": found})


async def get_client(request: web.Request) -> web.Response:
    """GET /v1/admin/clients/{id}: one client (no token)."""
    settings = request.app[SETTINGS_KEY]
    check_admin(request)
    client_id = _client_id(request)
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        found = await clients.get_client(conn, client_id)
    return json_response(found)
