"""The customer API (SPEC §5 ``/v1/me/...``): a customer's connections, consents, levels, the
permission and data access logs, export and erasure — authenticated with customer JWTs
(``gateway.customer_auth``), always scoped to the token's ``sub``.

Another customer's EAN or consent id answers 404, exactly like one that does not exist: a 403
would confirm to a stranger that the EAN is a connection of ours. Every change is audited with
``actor = "customer:<id>"``; the queries and the privacy choices (what a lower level or an
erasure does to stored readings) are in ``gateway.customer_data``.

Settings read (with defaults until ``gateway.settings.Settings`` declares them):
``consent_max_lifetime_days`` (1096, SPEC §4 "default 3 years"). Retention periods named in the
erasure answer are ``gateway.retention``'s (``METERPOORT_RETENTION_*``).
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
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from consent.model import DEFAULT_PURPOSES, Channel, EndReason
from gateway import audit, consent_store, customer_data
from gateway.app import POOL_KEY, SETTINGS_KEY
from gateway.customer_auth import customer_id_for
from gateway.db import acquire
from gateway.errors import ConflictError, FieldError, NotFoundError, ValidationError
from gateway.handlers import json_default, json_response, read_model, validation_error
from gateway.ingest import INGEST_KEY
from gateway.keys import KEYRING_KEY, issue_receipt, setup_keys
from gateway.registry import ean_problem
from gateway.retention import RETENTION_SETTINGS_KEY, RetentionPolicy
from gateway.settings import Settings

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


def retention(app: web.Application) -> RetentionPolicy:
    """The retention periods ``gateway.retention`` applies (its settings when set up in
    ``app``, else the SPEC §2 defaults): the erasure answer says when kept data goes."""
    configured = app.get(RETENTION_SETTINGS_KEY)
    return RetentionPolicy() if configured is None else configured.policy()


# ---------------------------------------------------------------------------------------------
# edge models


class ConsentGrantIn(BaseModel):
    """An interval-data consent the customer gives for one of their connections."""

    model_config = ConfigDict(extra="forbid")

    ean: str = Field(description="EAN-18 of one of the customer's connections")
    purpose: _Text = Field(description="one of the configured purposes")
    notice_version: _Text = Field(description="version of the consent text shown")
    expires_at: AwareDatetime | None = Field(
        default=None, description="omitted: the maximum lifetime (default 3 years)"
    )
    channel: Literal["portal", "api"] = "portal"

    @pydantic.field_validator("ean")
    @classmethod
    def _ean(cls, value: str) -> str:
        problem = ean_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class LevelIn(BaseModel):
    """The remote-reading level of a connection (SPEC §2)."""

    model_config = ConfigDict(extra="forbid")

    level: Literal["daily", "monthly", "none"]


class LogQuery(BaseModel):
    """Paging of a log."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=LOG_PAGE_DEFAULT, ge=1, le=LOG_PAGE_MAX)
    before_seq: int | None = Field(default=None, ge=1)


ReadingTableName = Literal[
    "readings_e_p1m",
    "readings_e_p1d",
    "readings_e_pt15m",
    "readings_g_p1m",
    "readings_g_p1d",
    "readings_g_pt1h",
]


class ExportQuery(BaseModel):
    """What to export: everything as JSON, or one reading table as CSV."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["json", "csv"] = "json"
    table: ReadingTableName | None = None


def _query(request: web.Request, model: type[pydantic.BaseModel]) -> Any:
    try:
        return model.model_validate(dict(request.query))
    except pydantic.ValidationError as exc:
        raise validation_error(exc, "query") from exc


# ---------------------------------------------------------------------------------------------
# helpers


def _actor(customer_id: str) -> str:
    return f"customer:{customer_id}"


async def _refresh(request: web.Request, ean: str) -> None:
    """Reload ``ean`` in THIS process's consent index before answering (other processes follow
    the NOTIFY the change committed; the database insert rule covers the meantime)."""
    state = request.app.get(INGEST_KEY)
    if state is not None and state.maintainer is not None:
        await state.maintainer.reload_eans([ean])


def _receipt(request: web.Request, row: Mapping[str, Any], commodity: str) -> dict[str, Any]:
    return issue_receipt(request.app[KEYRING_KEY], request.app[SETTINGS_KEY], row, commodity)


def _not_your_ean(ean: str) -> NotFoundError:
    return NotFoundError(f"you have no connection {ean}")


# ---------------------------------------------------------------------------------------------
# handlers


async def get_connections(request: web.Request) -> web.Response:
    """GET /v1/me/connections: the customer's EANs, levels, contract periods and consents."""
    customer = await customer_id_for(request)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            now: dt.datetime = await conn.fetchval("SELECT now()")
            connections = await customer_data.connections_of(conn, customer)
            consents = await customer_data.consents_of(conn, customer)
    by_ean: dict[str, list[dict[str, Any]]] = {}
    for row in consents:
        by_ean.setdefault(row["ean"], []).append(customer_data.customer_consent_json(row, now))
    out = []
    for k in connections:
        entry = customer_data.connection_json(k)
        entry["consents"] = by_ean.get(k["ean"], [])
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
    max_life = max_consent_lifetime(settings)
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        async with conn.transaction():
            # now() is the transaction's start: the same instant create_consent grants at
            now: dt.datetime = await conn.fetchval("SELECT now()")
            k = await customer_data.connection_of(conn, customer, body.ean, lock=True)
            if k is None:
                raise _not_your_ean(body.ean)
            if body.purpose not in DEFAULT_PURPOSES:
                allowed = ", ".join(sorted(DEFAULT_PURPOSES))
                raise ValidationError(
                    f"unknown purpose {body.purpose!r}; configured purposes: {allowed}",
                    [FieldError(("body", "purpose"), "not a configured purpose")],
                )
            expires = body.expires_at if body.expires_at is not None else now + max_life
            if expires <= now:
                raise ValidationError(
                    "expires_at must be in the future",
                    [FieldError(("body", "expires_at"), "not after now")],
                )
            if expires > now + max_life:
                raise ValidationError(
                    f"expires_at is beyond the maximum consent lifetime of {max_life.days} days",
                    [FieldError(("body", "expires_at"), "beyond the maximum lifetime")],
                )
            if k["contract_end"] is not None and k["contract_end"] <= now:
                raise ConflictError(f"the contract of connection {body.ean} has ended")
            if k["level"] != "daily":
                raise ConflictError(
                    f"connection {body.ean} is at level {k['level']!r}: interval readings need"
                    " level 'daily' (PUT /v1/me/connections/{ean}/level) before a consent"
                )
            duplicate = await conn.fetchval(
                "SELECT consent_id FROM consents WHERE ean = $1 AND customer_id = $2"
                " AND purpose = $3 AND ended_at IS NULL"
                " AND (expires_at IS NULL OR expires_at > $4)",
                body.ean,
                customer,
                body.purpose,
                now,
            )
            if duplicate is not None:
                raise ConflictError(
                    f"consent {duplicate} for {body.purpose!r} on {body.ean} is already in force"
                )
            created = await consent_store.create_consent(
                conn,
                ean=body.ean,
                customer_id=customer,
                purpose=body.purpose,
                notice_version=body.notice_version,
                expires_at=expires,
                channel=Channel(body.channel),
                actor=_actor(customer),
                max_lifetime=max_life,
            )
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
        found = await customer_data.consent_of(conn, customer, consent_id)
        if found is None:
            raise NotFoundError(f"you have no consent {consent_id}")
        # end_consent commits the end, the deletion of interval readings the consent no longer
        # covers, the event, the audit row and a NOTIFY in ONE transaction before we answer.
        # Every process's ingest is bound by it at once whatever its cache says: the database
        # insert rule (gateway.ingest INTERVAL_CONDITION) re-checks the consent row under a
        # share lock that this end's row lock conflicts with.
        ended = await consent_store.end_consent(
            conn, consent_id, EndReason.REVOKED, actor=_actor(customer)
        )
        now: dt.datetime = await conn.fetchval("SELECT now()")
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
    ean = request.match_info["ean"]
    body = await read_model(request, LevelIn)
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        async with conn.transaction():
            k = await customer_data.connection_of(conn, customer, ean, lock=True)
            if k is None:
                raise _not_your_ean(ean)
            now: dt.datetime = await conn.fetchval("SELECT now()")
            if k["contract_end"] is not None and k["contract_end"] <= now:
                raise ConflictError(f"the contract of connection {ean} has ended")
            result = await customer_data.change_level(
                conn, k, body.level, actor=_actor(customer), channel=Channel.PORTAL.value
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
        eans = [k["ean"] for k in await customer_data.connections_of(conn, customer)]
        entries = await customer_data.access_log(
            conn, customer, eans, limit=query.limit, before_seq=query.before_seq
        )
    next_before = entries[-1]["seq"] if len(entries) == query.limit else None
    return json_response({"entries": entries, "next_before_seq": next_before})


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
        [customer_data.READING_TABLES[query.table]]
        if query.table is not None
        else list(customer_data.READING_TABLES.values())
    )
    settings = request.app[SETTINGS_KEY]
    async with acquire(request.app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
        # audited in its own committed transaction first: an export is never unaudited, even
        # when the client hangs up halfway
        async with conn.transaction():
            eans = [k["ean"] for k in await customer_data.connections_of(conn, customer)]
            await audit.append(
                conn,
                kind=audit.KIND_EXPORT,
                actor=_actor(customer),
                subject=customer,
                ean=None,
                detail={
                    "format": query.format,
                    "tables": [t.name for t in tables],
                    "eans": eans,
                },
            )
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
    table: customer_data.ReadingTable,
    connections: list[Any],
) -> None:
    out = _ChunkWriter(response)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(
        ("ean", "commodity", "granularity", "period_start", "measured_at", *table.registers)
    )
    for k in connections:
        if k["commodity"] != table.commodity:
            continue
        async for row in customer_data.iter_readings(conn, table, k):
            writer.writerow(
                (
                    k["ean"],
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
    tables: list[customer_data.ReadingTable],
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
    eans = [k["ean"] for k in connections]
    await out.write(',"access_log":' + _dumps(await customer_data.access_log(conn, customer, eans)))
    await out.write(',"readings":{')
    for t_index, table in enumerate(tables):
        await out.write(("," if t_index else "") + _dumps(table.name) + ":[")
        first = True
        for k in connections:
            if k["commodity"] != table.commodity:
                continue
            async for row in customer_data.iter_readings(conn, table, k):
                await out.write(
                    ("" if first else ",") + _dumps(customer_data.reading_json(table, row))
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
        result = await customer_data.erase(
            conn, customer, actor=_actor(customer), retention=retention(request.app)
        )
    for ean in eans:
        await _refresh(request, ean)
    return json_response(result)


def setup_routes(app: web.Application, settings: Settings | None = None) -> None:
    """Register the ``/v1/me`` routes (and make sure the receipt signing key is loaded)."""
    setup_keys(app, app[SETTINGS_KEY] if settings is None else settings)
    app.router.add_get("/v1/me/connections", get_connections)
    app.router.add_put("/v1/me/connections/{ean}/level", put_level)
    app.router.add_post("/v1/me/consents", grant_consent)
    app.router.add_post("/v1/me/consents/{id}/revoke", revoke_consent)
    app.router.add_get("/v1/me/permission-log", get_permission_log)
    app.router.add_get("/v1/me/access-log", get_access_log)
    app.router.add_get("/v1/me/export", export)
    app.router.add_post("/v1/me/erasure", request_erasure)


# ---------------------------------------------------------------------------------------------
# OpenAPI

_CUSTOMER: Final[list[dict[str, list[str]]]] = [{"customerToken": []}]
_PROBLEM_REF: Final = {
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
}
_PROBLEM_TEXT: Final = {
    400: "unreadable body",
    401: "missing or invalid customer token",
    404: "not one of your connections / consents",
    409: "conflict with the current state",
    415: "wrong media type",
    422: "invalid fields (listed in `errors`)",
    503: "database unavailable; retry after `Retry-After` seconds",
}


def _problems(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": _PROBLEM_TEXT[s], **_PROBLEM_REF} for s in statuses}


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": model.model_json_schema()}},
    }


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or {"type": "object"}}},
    }


_CONSENT_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "consent_id": {"type": "string", "format": "uuid"},
        "ean": {"type": "string"},
        "purpose": {"type": "string"},
        "notice_version": {"type": "string"},
        "channel": {"enum": ["portal", "phone", "api"]},
        "granted_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": ["string", "null"], "format": "date-time"},
        "ended_at": {"type": ["string", "null"], "format": "date-time"},
        "end_reason": {"type": ["string", "null"]},
        "status": {"enum": ["active", "expired", "contract-ended", *(r.value for r in EndReason)]},
        "on_revoke": {"enum": ["keep", "delete", None]},
    },
}
_CONSENT_AND_RECEIPT: Final = {
    "type": "object",
    "properties": {
        "consent": _CONSENT_SCHEMA,
        "receipt": {
            "type": "object",
            "description": "signed consent receipt (Kantara v1.1 fields, Ed25519; keys at "
            "GET /v1/keys)",
        },
    },
    "required": ["consent", "receipt"],
}
_LOG_PARAMS: Final = [
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": LOG_PAGE_MAX},
    },
]
_EAN_PATH: Final = {
    "name": "ean",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]{18}$"},
}

#: the customer API's paths, merged into /openapi.json (gateway.openapi PATH_MODULES)
OPENAPI_PATHS: Final[dict[str, Any]] = {
    "/v1/me/connections": {
        "get": {
            "summary": "Your connections with their level, contract period and consents",
            "security": _CUSTOMER,
            "responses": {"200": _ok("connections and configured purposes"), **_problems(401, 503)},
        }
    },
    "/v1/me/connections/{ean}/level": {
        "put": {
            "summary": "Set the remote-reading level of your connection (daily, monthly, none)",
            "description": "Lowering acts from now on: readings of granularities the new level "
            "does not allow, measured at or after the change, are deleted; earlier ones are kept "
            "under the billing retention (use POST /v1/me/erasure).",
            "security": _CUSTOMER,
            "parameters": [_EAN_PATH],
            "requestBody": _json_body(LevelIn),
            "responses": {
                "200": _ok("the new level"),
                **_problems(400, 401, 404, 409, 415, 422, 503),
            },
        }
    },
    "/v1/me/consents": {
        "post": {
            "summary": "Grant an interval-data consent on your connection",
            "security": _CUSTOMER,
            "requestBody": _json_body(ConsentGrantIn),
            "responses": {
                "201": _ok("the consent and its signed receipt", _CONSENT_AND_RECEIPT),
                **_problems(400, 401, 404, 409, 415, 422, 503),
            },
        }
    },
    "/v1/me/consents/{id}/revoke": {
        "post": {
            "summary": "Revoke your consent; effective before the answer",
            "security": _CUSTOMER,
            "parameters": [
                {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "format": "uuid"},
                }
            ],
            "responses": {
                "200": _ok("the ended consent and its signed receipt", _CONSENT_AND_RECEIPT),
                **_problems(401, 404, 409, 503),
            },
        }
    },
    "/v1/me/permission-log": {
        "get": {
            "summary": "Your permission log: grants, revocations, expiries, ends, level changes",
            "security": _CUSTOMER,
            "parameters": _LOG_PARAMS,
            "responses": {"200": _ok("entries, newest first"), **_problems(401, 422, 503)},
        }
    },
    "/v1/me/access-log": {
        "get": {
            "summary": "Who read which of your readings (client, time, granularity, period), "
            "and your exports",
            "security": _CUSTOMER,
            "parameters": [
                *_LOG_PARAMS,
                {"name": "before_seq", "in": "query", "schema": {"type": "integer", "minimum": 1}},
            ],
            "responses": {
                "200": _ok("entries, newest first; next_before_seq pages on"),
                **_problems(401, 422, 503),
            },
        }
    },
    "/v1/me/export": {
        "get": {
            "summary": "Everything held about you: JSON, or one reading table as CSV",
            "security": _CUSTOMER,
            "parameters": [
                {"name": "format", "in": "query", "schema": {"enum": ["json", "csv"]}},
                {
                    "name": "table",
                    "in": "query",
                    "schema": {"enum": list(customer_data.READING_TABLES)},
                    "description": "required with format=csv",
                },
            ],
            "responses": {
                "200": {
                    "description": "streamed export (audited)",
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
                **_problems(401, 422, 503),
            },
        }
    },
    "/v1/me/erasure": {
        "post": {
            "summary": "Erase what may be erased; the answer lists what was kept, why, until when",
            "security": _CUSTOMER,
            "responses": {"200": _ok("erased counts and kept items"), **_problems(401, 503)},
        }
    },
}
