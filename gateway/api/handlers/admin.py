"""The admin API (``/v1/admin/*``, admin bearer token).

* The registry (SPEC §3a, ``gateway.services.registry``): connections, contracts and meters over
  time (``POST /v1/admin/contracts``, ``PATCH /v1/admin/contracts/{id}``, ``GET
  /v1/admin/connections/{ean}``, ``POST /v1/admin/connections/{ean}/meter-exchange``), the
  ``/v1/admin/meters`` shorthand (a connection with its first contract and meter; PATCH ends
  the open contract), and devices (``POST``/``GET /v1/admin/devices``, ``PATCH
  /v1/admin/devices/{id}`` rebinds, ``POST …/revoke``). Registry changes take effect in this
  process's ingest before the answer; other processes follow the NOTIFY.
* Consents the customer gave elsewhere (phone, paper): ``POST /v1/admin/consents`` {ean,
  customer_id, purpose, notice_version, expires_at?, granted_at?, channel?} and ``POST
  /v1/admin/consents/{id}/end`` {at?, reason}. The grant obeys the same rules as the customer's
  own (``gateway.services.consents``). Both take effect in this process's consent index before
  they answer; other processes follow via NOTIFY (and the database refuses interval rows a stale
  index would allow).
* Data clients: ``POST /v1/admin/clients`` {name, granularities, purposes, webhook_url?} → 201
  {client_id, token, …}, the token in this answer only; ``POST /v1/admin/clients/{id}/rotate`` →
  a new token (the old one stops working); ``POST /v1/admin/clients/{id}/revoke`` → the revoked
  client; ``GET /v1/admin/clients`` and ``GET /v1/admin/clients/{id}`` show clients without
  tokens.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from consent.model import Channel, EndReason
from gateway.api.appkeys import CREDENTIALS_KEY, INGEST_KEY, POOL_KEY, SETTINGS_KEY
from gateway.api.auth import check_admin
from gateway.api.http import json_response, read_model
from gateway.errors import NotFoundError
from gateway.services import clients, devices, registry
from gateway.services import consents as consent_store
from gateway.services.registry import validate_ean
from gateway.storage.db import acquire
from gateway.times import ApiTime


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
    # in force in this process before the answer: a device pushing right after would otherwise
    # meet 'unknown-meter', a rejection it never retries (other processes follow the NOTIFY)
    await request.app[INGEST_KEY].refresh([body.ean])
    return json_response(created, status=201)


async def get_meter(request: web.Request) -> web.Response:
    """GET /v1/admin/meters/{ean}: the connection's latest contract and current meter."""
    _authorize(request)
    ean = _ean(request)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        found = await registry.get_meter(conn, ean)
    return json_response(found)


async def end_meter_contract(request: web.Request) -> web.Response:
    """PATCH /v1/admin/meters/{ean}: end the contract open on the connection (shorthand of
    ``PATCH /v1/admin/contracts/{id}``)."""
    _authorize(request)
    ean = _ean(request)
    body = await read_model(request, registry.ContractEndIn)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        updated = await registry.end_current_contract(conn, ean, body.contract_end, body.end_reason)
    await request.app[INGEST_KEY].refresh([ean])
    return json_response(updated)


async def get_connection(request: web.Request) -> web.Response:
    """GET /v1/admin/connections/{ean}: the connection with its contract and meter history."""
    _authorize(request)
    ean = _ean(request)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        found = await registry.get_connection(conn, ean)
    return json_response(found)


async def add_contract(request: web.Request) -> web.Response:
    """POST /v1/admin/contracts: a new supply contract on a connection (move-in, switch in)."""
    _authorize(request)
    body = await read_model(request, registry.ContractIn)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        created = await registry.add_contract(conn, body)
    await request.app[INGEST_KEY].refresh([body.ean])
    return json_response(created, status=201)


def _uuid(request: web.Request, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise NotFoundError(f"no {what} {request.match_info['id'][:64]!r}") from None


async def end_contract(request: web.Request) -> web.Response:
    """PATCH /v1/admin/contracts/{id}: end a contract (and its consents) at ``end``."""
    _authorize(request)
    contract_id = _uuid(request, "contract")
    body = await read_model(request, registry.ContractPatchIn)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        updated = await registry.end_contract(conn, contract_id, body.end, body.end_reason)
    # in force for this process's ingest before the answer; others follow the NOTIFY
    await request.app[INGEST_KEY].refresh([updated["ean"]])
    return json_response(updated)


async def exchange_meter(request: web.Request) -> web.Response:
    """POST /v1/admin/connections/{ean}/meter-exchange: the installed meter is replaced."""
    _authorize(request)
    ean = _ean(request)
    body = await read_model(request, registry.MeterExchangeIn)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        updated = await registry.exchange_meter(conn, ean, body)
    await request.app[INGEST_KEY].refresh([ean])
    return json_response(updated)


async def add_device(request: web.Request) -> web.Response:
    """POST /v1/admin/devices: register a device; the token is in this answer only."""
    _authorize(request)
    body = await read_model(request, devices.DeviceIn)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        device = await devices.add_device(conn, body.meter_ids)
    return json_response(device.as_json(), status=201)


async def list_devices(request: web.Request) -> web.Response:
    """GET /v1/admin/devices: every device (never a token)."""
    _authorize(request)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        listed = await devices.list_devices(conn)
    return json_response({"devices": listed})


async def rebind_device(request: web.Request) -> web.Response:
    """PATCH /v1/admin/devices/{id}: bind the device to other meters (after an exchange)."""
    _authorize(request)
    device_id = _uuid(request, "device")
    body = await read_model(request, devices.DeviceIn)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        device = await devices.rebind_device(conn, device_id, body.meter_ids)
    request.app[CREDENTIALS_KEY].forget_devices()
    return json_response(device)


async def revoke_device(request: web.Request) -> web.Response:
    """POST /v1/admin/devices/{id}/revoke: the device's token stops working at once."""
    _authorize(request)
    device_id = _uuid(request, "device")
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        device = await devices.revoke_device(conn, device_id)
    request.app[CREDENTIALS_KEY].forget_devices()
    return json_response(device)


# --- consents given elsewhere (phone, paper) --------------------------------------------------


_Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]


class ConsentIn(BaseModel):
    """An interval consent to record."""

    model_config = ConfigDict(extra="forbid")

    ean: str = Field(description="EAN-18 of the connection")
    customer_id: _Text
    purpose: _Text
    notice_version: _Text
    expires_at: ApiTime | None = None
    granted_at: ApiTime | None = None
    channel: Channel = Channel.API


class ConsentEndIn(BaseModel):
    """Ending a consent."""

    model_config = ConfigDict(extra="forbid")

    reason: EndReason
    at: ApiTime | None = None


async def add_consent(request: web.Request) -> web.Response:
    """POST /v1/admin/consents: record a granted interval consent."""
    settings = request.app[SETTINGS_KEY]
    check_admin(request)
    body = await read_model(request, ConsentIn)
    ean = validate_ean(body.ean)
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        created = await consent_store.create_consent(
            conn,
            ean=ean,
            customer_id=body.customer_id,
            purpose=body.purpose,
            notice_version=body.notice_version,
            expires_at=body.expires_at,
            granted_at=body.granted_at,
            channel=body.channel,
            max_lifetime=dt.timedelta(days=settings.consent_max_lifetime_days),
        )
    await request.app[INGEST_KEY].refresh([ean])
    return json_response(created, status=201)


async def end_consent(request: web.Request) -> web.Response:
    """POST /v1/admin/consents/{id}/end: end a consent (and delete what it no longer covers)."""
    settings = request.app[SETTINGS_KEY]
    check_admin(request)
    try:
        consent_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        raise NotFoundError(f"no consent {request.match_info['id']!r}") from None
    body = await read_model(request, ConsentEndIn)
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        ended = await consent_store.end_consent(conn, consent_id, body.reason, body.at)
    await request.app[INGEST_KEY].refresh([ended["ean"]])
    return json_response(ended)


# --- data clients ----------------------------------------------------------------------


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
