"""Admin consent endpoints: record a consent the customer gave elsewhere (phone, paper), end one.

The grant obeys the same rules as the customer's own (``gateway.services.consents``).

``POST /v1/admin/consents`` {ean, customer_id, purpose, notice_version, expires_at?, granted_at?,
channel?} and ``POST /v1/admin/consents/{id}/end`` {at?, reason}. Both take effect in this
process's consent index before they answer; other processes follow via NOTIFY (and the
database refuses interval rows a stale index would allow).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from consent.model import Channel, EndReason
from gateway.api.appkeys import INGEST_KEY, POOL_KEY, SETTINGS_KEY
from gateway.api.auth import check_admin
from gateway.api.http import json_response, read_model
from gateway.errors import NotFoundError
from gateway.services import consents as consent_store
from gateway.services.registry import validate_ean
from gateway.storage.db import acquire

_Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]


class ConsentIn(BaseModel):
    """An interval consent to record."""

    model_config = ConfigDict(extra="forbid")

    ean: str = Field(description="EAN-18 of the connection")
    customer_id: _Text
    purpose: _Text
    notice_version: _Text
    expires_at: AwareDatetime | None = None
    granted_at: AwareDatetime | None = None
    channel: Channel = Channel.API


class ConsentEndIn(BaseModel):
    """Ending a consent."""

    model_config = ConfigDict(extra="forbid")

    reason: EndReason
    at: AwareDatetime | None = None


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
