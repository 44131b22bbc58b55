"""The customer API (SPEC §5 ``/v1/me/...``): a customer's connections, consents, levels, the
permission and data access logs, export and erasure — authenticated with customer JWTs
(``gateway.api.customer_auth``), always scoped to the token's ``sub``.

Another customer's EAN or consent id answers 404, exactly like one that does not exist: a 403
would confirm to a stranger that the EAN is a connection of ours. Every change is audited with
``actor = "customer:<id>"``; the queries and the privacy choices (what a lower level or an
erasure does to stored readings) are in ``gateway.services.customers``.

Settings read: ``consent_max_lifetime_days`` (1096, SPEC §4 "default 3 years"), and the retention
periods named in the erasure answer (``settings.retention``, ``METERPOORT_RETENTION_*``).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import pydantic
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from consent.model import DEFAULT_PURPOSES, Channel
from consent.retention import RetentionPolicy
from gateway.api.appkeys import INGEST_KEY, KEYRING_KEY, POOL_KEY, SETTINGS_KEY
from gateway.api.auth import customer_id_for
from gateway.api.http import json_response, read_model
from gateway.errors import (
    FieldError,
    NotFoundError,
    ValidationError,
    validation_error,
)
from gateway.jsonenc import json_default
from gateway.services import consents as consent_store
from gateway.services import consumption as consumption_data
from gateway.services import customers as customer_data
from gateway.services import erasure, levels
from gateway.services.receipts import issue_receipt
from gateway.services.registry import Ean, validate_ean
from gateway.settings import Settings
from gateway.storage.db import acquire
from gateway.storage.schema import BIGINT_MAX, READING_TABLES, ReadingTable
from gateway.times import ApiTime

#: the receipt channel of consents given through this API
PORTAL_CHANNELS: Final = (Channel.PORTAL.value, Channel.API.value)
#: log entries per page (default and maximum)
LOG_PAGE_DEFAULT: Final = 200
LOG_PAGE_MAX: Final = 5000
#: bytes buffered before a chunk of the export is written
EXPORT_CHUNK_BYTES: Final = 64 * 1024

_Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]


def max_consent_lifetime(settings: Settings) -> dt.timedelta:
    """The configured maximum consent lifetime (SPEC §4, default 3 years)."""
    return dt.timedelta(days=settings.consent_max_lifetime_days)


def retention(settings: Settings) -> RetentionPolicy:
    """The retention periods the retention job applies: the erasure answer says when kept
    data goes."""
    return settings.retention.policy()


# ---------------------------------------------------------------------------------------------
# edge models


class ConsentGrantIn(BaseModel):
    """An interval-data consent the customer gives for one of their connections."""

    model_config = ConfigDict(extra="forbid")

    ean: Ean
    purpose: _Text = Field(description="one of the configured purposes")
    notice_version: _Text = Field(description="version of the consent text shown")
    expires_at: ApiTime | None = Field(
        default=None, description="omitted: the maximum lifetime (default 3 years)"
    )
    channel: Literal["portal", "api"] = "portal"


class LevelIn(BaseModel):
    """The remote-reading level of a connection (SPEC §2)."""

    model_config = ConfigDict(extra="forbid")

    level: Literal["daily", "monthly", "none"]


class LogQuery(BaseModel):
    """Paging of a log."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=LOG_PAGE_DEFAULT, ge=1, le=LOG_PAGE_MAX)
    before_seq: int | None = Field(default=None, ge=1, le=BIGINT_MAX)


class ExportQuery(BaseModel):
    """What to export: everything as JSON, or one reading table as CSV."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["json", "csv"] = "json"
    table: str | None = None

    @pydantic.field_validator("table")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        if value is not None and value not in READING_TABLES:
            raise ValueError(f"not a reading table; one of: {', '.join(READING_TABLES)}")
        return value


class ConsumptionQuery(BaseModel):
    """Which consumption to chart: one connection, one granularity, periods starting in
    ``[from, to)``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    ean: Ean
    granularity: Literal["P1M", "P1D", "PT1H", "PT15M"]
    from_: ApiTime = Field(alias="from")
    to: ApiTime


def _query(request: web.Request, model: type[pydantic.BaseModel]) -> Any:
    try:
        return model.model_validate(dict(request.query))
    except pydantic.ValidationError as exc:
        raise validation_error(exc, "query") from exc


# ---------------------------------------------------------------------------------------------
# helpers


async def _refresh(request: web.Request, ean: str) -> None:
    """Reload ``ean`` in THIS process's consent index before answering (other processes follow
    the NOTIFY the change committed; the database insert rule covers the meantime)."""
    await request.app[INGEST_KEY].refresh([ean])


def _receipt(request: web.Request, row: Mapping[str, Any], commodity: str) -> dict[str, Any]:
    return issue_receipt(request.app[KEYRING_KEY], request.app[SETTINGS_KEY], row, commodity)


# ---------------------------------------------------------------------------------------------
# handlers


async def get_connections(request: web.Request) -> web.Response:
    """GET /v1/me/connections: the customer's contracts (one entry each, ended ones included:
    SPEC §3a), with their EAN, window, level and consents; ``current`` marks the contracts in
    force now, the only ones a consent can be granted on."""
    customer = await customer_id_for(request)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        now, connections, consents = await customer_data.overview(conn, customer)
    by_contract: dict[Any, list[dict[str, Any]]] = {}
    for row in consents:
        by_contract.setdefault(row["contract_id"], []).append(
            customer_data.customer_consent_json(row, now)
        )
    out = []
    for k in connections:
        entry = customer_data.connection_json(k)
        entry["current"] = k["contract_start"] <= now and (
            k["contract_end"] is None or now < k["contract_end"]
        )
        entry["consents"] = by_contract.get(k["contract_id"], [])
        out.append(entry)
    return json_response(
        {
            "customer_id": customer,
            "connections": out,
            "purposes": [
                {"name": p.name, "description": p.description, "on_revoke": p.on_revoke.value}
                for p in DEFAULT_PURPOSES.values()
            ],
            "max_consent_lifetime_days": max_consent_lifetime(settings).days,
        }
    )


async def grant_consent(request: web.Request) -> web.Response:
    """POST /v1/me/consents: grant an interval consent on one of the customer's connections."""
    customer = await customer_id_for(request)
    body = await read_model(request, ConsentGrantIn)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        created = await consent_store.create_consent(
            conn,
            ean=body.ean,
            customer_id=customer,
            purpose=body.purpose,
            notice_version=body.notice_version,
            expires_at=body.expires_at,
            channel=Channel(body.channel),
            actor=customer_data.customer_actor(customer),
            max_lifetime=max_consent_lifetime(settings),
            as_customer=True,
        )
        k = await customer_data.connection_of(conn, customer, body.ean)
    now: dt.datetime = created["granted_at"]
    assert k is not None  # the grant found it under lock; a connection is never deleted
    await _refresh(request, body.ean)
    receipt = _receipt(request, created, k["commodity"])
    consent = customer_data.customer_consent_json(
        {**created, "contract_end": k["contract_end"]}, now
    )
    return json_response({"consent": consent, "receipt": receipt}, status=201)


async def revoke_consent(request: web.Request) -> web.Response:
    """POST /v1/me/consents/{id}/revoke: end the customer's consent now."""
    customer = await customer_id_for(request)
    raw = request.match_info["id"]
    try:
        consent_id = uuid.UUID(raw)
    except ValueError:
        raise NotFoundError("you have no consent with this id") from None
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        now, found, ended = await customer_data.revoke(conn, customer, consent_id)
    await _refresh(request, found["ean"])
    receipt = _receipt(request, ended, found["commodity"])
    consent = customer_data.customer_consent_json(
        {**ended, "contract_end": found["contract_end"]}, now
    )
    consent["deleted_readings"] = ended["deleted_readings"]
    return json_response({"consent": consent, "receipt": receipt})


async def put_level(request: web.Request) -> web.Response:
    """PUT /v1/me/connections/{ean}/level: set the remote-reading level."""
    customer = await customer_id_for(request)
    ean = validate_ean(request.match_info["ean"])
    body = await read_model(request, LevelIn)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        result = await levels.set_level(
            conn, customer, ean, body.level, channel=Channel.PORTAL.value
        )
    if result["changed"]:
        await _refresh(request, ean)
    return json_response(result)


async def get_permission_log(request: web.Request) -> web.Response:
    """GET /v1/me/permission-log: grants, revocations, expiries, ends and level changes."""
    customer = await customer_id_for(request)
    query: LogQuery = _query(request, LogQuery)
    if query.before_seq is not None:
        raise ValidationError(
            "the permission log pages by limit only",
            [FieldError(("query", "before_seq"), "not supported here")],
        )
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        entries = await customer_data.permission_log(conn, customer, query.limit)
    return json_response({"entries": entries})


async def get_access_log(request: web.Request) -> web.Response:
    """GET /v1/me/access-log: which client read which of the customer's readings, and exports."""
    customer = await customer_id_for(request)
    query: LogQuery = _query(request, LogQuery)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        contracts = await customer_data.connections_of(conn, customer)
        entries = await customer_data.access_log(
            conn, customer, contracts, limit=query.limit, before_seq=query.before_seq
        )
    next_before = entries[-1]["seq"] if len(entries) == query.limit else None
    return json_response({"entries": entries, "next_before_seq": next_before})


async def get_consumption(request: web.Request) -> web.Response:
    """GET /v1/me/consumption: the customer's consumption per period on one of their
    connections, from their stored readings (``gateway.services.consumption``); the read is
    in their access log."""
    customer = await customer_id_for(request)
    query: ConsumptionQuery = _query(request, ConsumptionQuery)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        answer = await consumption_data.consumption(
            conn, customer, query.ean, query.granularity, query.from_, query.to
        )
    response = json_response(answer)
    response.headers["Cache-Control"] = "no-store"  # personal data: no cache keeps a copy
    return response


class _ChunkWriter:
    """Buffers text and writes it to a StreamResponse in chunks of EXPORT_CHUNK_BYTES."""

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response
        self._parts: list[bytes] = []
        self._size = 0

    async def write(self, text: str) -> None:
        data = text.encode("utf-8")
        self._parts.append(data)
        self._size += len(data)
        if self._size >= EXPORT_CHUNK_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self._parts:
            await self._response.write(b"".join(self._parts))
            self._parts.clear()
            self._size = 0


def _dumps(value: Any) -> str:
    return json.dumps(value, default=json_default, ensure_ascii=False)


async def export(request: web.Request) -> web.StreamResponse:
    """GET /v1/me/export: everything held about the customer, streamed (JSON, or CSV of one
    reading table). The export itself is audited before any data leaves."""
    customer = await customer_id_for(request)
    query: ExportQuery = _query(request, ExportQuery)
    if query.format == "csv" and query.table is None:
        raise ValidationError(
            "a CSV export is one reading table: add ?table=<reading table>",
            [FieldError(("query", "table"), "required with format=csv")],
        )
    tables = (
        [READING_TABLES[query.table]] if query.table is not None else list(READING_TABLES.values())
    )
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        await customer_data.record_export(conn, customer, query.format, tables)
        # one consistent snapshot for the whole document
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            now: dt.datetime = await conn.fetchval("SELECT now()")
            connections = await customer_data.connections_of(conn, customer)
            response = web.StreamResponse(
                headers={
                    "Cache-Control": "no-store",
                    "Content-Disposition": 'attachment; filename="meterpoort-export-'
                    f"{now.strftime('%Y%m%dT%H%M%SZ')}"
                    + (f"-{query.table}.csv" if query.format == "csv" else ".json")
                    + '"',
                }
            )
            if query.format == "csv":
                response.content_type = "text/csv"
                response.charset = "utf-8"
                await response.prepare(request)
                await _write_csv(conn, response, tables[0], connections)
            else:
                response.content_type = "application/json"
                response.charset = "utf-8"
                await response.prepare(request)
                await _write_json(request, conn, response, customer, now, tables, connections)
    await response.write_eof()
    return response


async def _write_csv(
    conn: Any,
    response: web.StreamResponse,
    table: ReadingTable,
    connections: list[Any],
) -> None:
    out = _ChunkWriter(response)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(
        (
            "ean",
            "contract_id",
            "customer_id",
            "commodity",
            "granularity",
            "period_start",
            "measured_at",
            *table.registers,
        )
    )
    for k in connections:
        if k["commodity"] != table.commodity:
            continue
        async for row in customer_data.iter_readings(conn, table, k):
            writer.writerow(
                (
                    k["ean"],
                    k["contract_id"],
                    k["customer_id"],
                    table.commodity,
                    table.granularity,
                    json_default(row["period_start"]),
                    json_default(row["measured_at"]),
                    *("" if row[c] is None else row[c] for c in table.registers),
                )
            )
            if buffer.tell() >= EXPORT_CHUNK_BYTES:
                await out.write(buffer.getvalue())
                buffer.seek(0)
                buffer.truncate()
    await out.write(buffer.getvalue())
    await out.flush()


async def _write_json(
    request: web.Request,
    conn: Any,
    response: web.StreamResponse,
    customer: str,
    now: dt.datetime,
    tables: list[ReadingTable],
    connections: list[Any],
) -> None:
    out = _ChunkWriter(response)
    await out.write(
        '{"format":"meterpoort-export-1","customer_id":'
        + _dumps(customer)
        + ',"generated_at":'
        + _dumps(now)
        + ',"connections":'
        + _dumps([customer_data.connection_json(k) for k in connections])
    )
    consents = []
    for row in await customer_data.consents_of(conn, customer):
        entry = customer_data.customer_consent_json(row, now)
        entry["receipt"] = _receipt(request, row, row["commodity"])
        consents.append(entry)
    await out.write(',"consents":' + _dumps(consents))
    log = await customer_data.permission_log(conn, customer, 1_000_000)
    await out.write(',"permission_log":' + _dumps(log))
    access = await customer_data.access_log(conn, customer, connections)
    await out.write(',"access_log":' + _dumps(access))
    await out.write(',"readings":{')
    for t_index, table in enumerate(tables):
        await out.write(("," if t_index else "") + _dumps(table.name) + ":[")
        first = True
        for k in connections:
            if k["commodity"] != table.commodity:
                continue
            async for row in customer_data.iter_readings(conn, table, k):
                await out.write(
                    ("" if first else ",") + _dumps(customer_data.reading_json(table, row, k))
                )
                first = False
        await out.write("]")
    await out.write("}}")
    await out.flush()


async def request_erasure(request: web.Request) -> web.Response:
    """POST /v1/me/erasure: erase what may be erased; the answer lists what was kept."""
    customer = await customer_id_for(request)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        eans = [k["ean"] for k in await customer_data.connections_of(conn, customer)]
        result = await erasure.erase(
            conn,
            customer,
            actor=customer_data.customer_actor(customer),
            retention=retention(settings),
        )
    # one reload of all of them: each refresh waits its turn behind the index's other loads
    await request.app[INGEST_KEY].refresh(eans)
    return json_response(result)
