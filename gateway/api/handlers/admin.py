"""Registry administration: ``/v1/admin/*`` (admin bearer token)."""

from __future__ import annotations

from aiohttp import web

from gateway.api.appkeys import POOL_KEY, SETTINGS_KEY
from gateway.api.auth import check_admin
from gateway.api.http import json_response, read_model
from gateway.services import registry
from gateway.storage.db import acquire


def _authorize(request: web.Request) -> None:
    check_admin(request)


def _ean(request: web.Request) -> str:
    return registry.validate_ean(request.match_info["ean"])


async def add_meter(request: web.Request) -> web.Response:
    """POST /v1/admin/meters: register a connection."""
    _authorize(request)
    body = await read_model(request, registry.ConnectionIn)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        created = await registry.add_connection(conn, body)
    return json_response(created, status=201)


async def get_meter(request: web.Request) -> web.Response:
    """GET /v1/admin/meters/{ean}: one connection."""
    _authorize(request)
    ean = _ean(request)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        found = await registry.get_connection(conn, ean)
    return json_response(found)


async def end_meter_contract(request: web.Request) -> web.Response:
    """PATCH /v1/admin/meters/{ean}: end the contract (contract ended or move-out)."""
    _authorize(request)
    ean = _ean(request)
    body = await read_model(request, registry.ContractEndIn)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        updated = await registry.end_contract(conn, ean, body.contract_end, body.end_reason)
    return json_response(updated)


async def add_device(request: web.Request) -> web.Response:
    """POST /v1/admin/devices: register a device; the token is in this answer only."""
    _authorize(request)
    body = await read_model(request, registry.DeviceIn)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        device = await registry.add_device(conn, body.meter_ids)
    return json_response(device.as_json(), status=201)
