"""The client API: ``GET /v1/readings`` (billing pull) and ``GET /v1/consents`` (reconciliation).

``GET /v1/readings?granularity=&from=&to=[&ean=…][&cursor=][&limit=]`` answers by ``Accept``:

* ``application/x-ndjson`` — one reading per line, streamed with constant memory: PostgreSQL's
  ``COPY … TO STDOUT`` output goes through ``readings_query.encode_chunk`` straight into the
  response, chunk by chunk, with asyncpg reading the next chunk only once the previous one is
  written (so a slow client slows the query, it does not fill memory);
* ``text/csv`` — the same rows as CSV with a header line, streamed the same way;
* ``application/json`` (the default) — ``{readings: […], next_cursor}`` pages of ``limit``
  (default 1000, at most 10 000) with an opaque, HMAC-signed keyset cursor.

What a client may see is decided in SQL (gateway.readings_query). Every request that returns
data is recorded as ONE audit row (kind ``data.read``, actor ``client:<id>``) listing the EANs
returned, so each customer's access log shows who read their data: pages log before they answer;
streams log when they end, also when the client went away mid-stream (then listing the EANs of
every chunk handed to the transport — rather one too many than one too few).

``GET /v1/consents?changed_since=`` lists consent changes (grants, ends, expiries) for the
client's purposes, oldest first, with ``next_changed_since`` for the next poll.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Mapping
from typing import Any, Final
from zoneinfo import ZoneInfo

import asyncpg
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from multidict import MultiMapping

from gateway import audit, readings_query
from gateway.app import POOL_KEY, SETTINGS_KEY
from gateway.clients import Client, authenticate_client
from gateway.db import acquire
from gateway.errors import FieldError, ForbiddenError, ValidationError
from gateway.handlers import json_response, rfc3339
from gateway.keys import setup_keys
from gateway.readings_query import CursorCodec, EanTracker, ReadingsQuery
from gateway.settings import Settings

log = logging.getLogger(__name__)

CURSOR_CODEC_KEY: Final = web.AppKey("readings_cursor_codec", CursorCodec)

NDJSON: Final = "application/x-ndjson"
CSV: Final = "text/csv"
JSON: Final = "application/json"
_OFFERED: Final = (JSON, NDJSON, CSV)

#: GET /v1/consents: default and largest page
CONSENT_PAGE_DEFAULT: Final = 1000
CONSENT_PAGE_MAX: Final = 10_000
#: how far behind now ``next_changed_since`` stays: a change recorded (now()) by a transaction
#: that commits later than a poll is still found by the next one. Changes inside this window
#: may be returned twice; ``event_id`` identifies them.
COMMIT_LAG: Final = dt.timedelta(seconds=10)

_SESSION_SQL: Final = "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'"


# ---------------------------------------------------------------------------------------------
# content negotiation


def negotiate(accept: str | None) -> str:
    """The media type to answer with: the offered type with the highest q in ``Accept``
    (JSON when absent or ``*/*``); 406 when nothing offered is acceptable."""
    if accept is None or not accept.strip():
        return JSON
    best: tuple[float, int, str] | None = None
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        media = media.lower()
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        for rank, offered in enumerate(_OFFERED):
            major = offered.split("/")[0]
            if media in (offered, "*/*", f"{major}/*"):
                # exact types beat wildcards at equal q; then our order (JSON first)
                candidate = (q + (0.0001 if media == offered else 0.0), -rank, offered)
                if best is None or candidate > best:
                    best = candidate
    if best is None:
        raise web.HTTPNotAcceptable(
            text=f"GET /v1/readings answers in {', '.join(_OFFERED)}; none is acceptable"
        )
    return best[2]


# ---------------------------------------------------------------------------------------------
# GET /v1/readings


def _single_params(query: MultiMapping[str]) -> dict[str, str]:
    """The query parameters but ``ean``, each given once (422 naming those given twice)."""
    names = list(dict.fromkeys(query.keys()))
    errors = [
        FieldError(("query", n), "given more than once")
        for n in names
        if n != "ean" and len(query.getall(n)) > 1
    ]
    if errors:
        raise ValidationError(
            "invalid query parameters: " + ", ".join(str(e.loc[1]) for e in errors), errors
        )
    return {n: query[n] for n in names if n != "ean"}


async def get_readings(request: web.Request) -> web.StreamResponse:
    """GET /v1/readings: the readings this client may see (module docstring)."""
    settings = request.app[SETTINGS_KEY]
    pool = request.app[POOL_KEY]
    client = await authenticate_client(request, pool)
    raw = request.rel_url.query
    params = _single_params(raw)
    query = readings_query.parse_params(params, raw.getall("ean", []), ZoneInfo(settings.tz))
    if query.granularity not in client.granularities:
        allowed = ", ".join(sorted(client.granularities))
        raise ForbiddenError(
            f"this client may not read {query.granularity} readings (it may read: {allowed})"
        )
    media = negotiate(request.headers.get("Accept"))
    cursor = params.get("cursor")
    if media != JSON:
        stray = [n for n in ("cursor", "limit") if n in params]
        if stray:
            raise ValidationError(
                f"{' and '.join(stray)} only apply to JSON pages; streams return every reading",
                [FieldError(("query", n), f"not used with Accept: {media}") for n in stray],
            )
        return await _stream(request, settings, pool, client, query, media)
    if cursor is not None:
        after = request.app[CURSOR_CODEC_KEY].decode(cursor, query.fingerprint(client.client_id))
        query = dataclasses.replace(query, after=after)
    return await _page(request, settings, pool, client, query)


async def _copy(
    conn: asyncpg.Connection,
    client: Client,
    query: ReadingsQuery,
    output: str,
    sink: Any,
    *,
    paged: bool,
) -> int:
    """Run the query's COPY into ``sink``; returns the number of rows (COPY's status)."""
    sql, args = readings_query.build_sql(
        query,
        output,
        paged=paged,
        purposes=sorted(client.purposes),
        keep=readings_query.keep_purposes(),
    )
    async with conn.transaction(readonly=True):
        await conn.execute(_SESSION_SQL)
        if output == "json":
            status = await conn.copy_from_query(sql, *args, output=sink, null="null")
        else:
            status = await conn.copy_from_query(sql, *args, output=sink, format="csv", header=True)
    return int(status.rsplit(" ", 1)[-1])


async def _page(
    request: web.Request,
    settings: Settings,
    pool: asyncpg.Pool,
    client: Client,
    query: ReadingsQuery,
) -> web.Response:
    chunks: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        chunks.append(chunk)

    async with acquire(pool, settings.pool_acquire_timeout_s) as conn:
        await _copy(conn, client, query, "json", collect, paged=True)
        lines = readings_query.encode_chunk(
            b"".join(chunks), readings_query.has_gas_pad(query.granularity)
        ).split(b"\n")
        lines.pop()  # after the last newline
        more = len(lines) > query.limit
        del lines[query.limit :]
        next_cursor = None
        if more:
            last = lines[-1]
            start = last.index(b'"period_start":"') + 16
            period_start = last[start : last.index(b'"', start)].decode("ascii")
            next_cursor = request.app[CURSOR_CODEC_KEY].encode(
                query.fingerprint(client.client_id), int(last[8:26]), period_start
            )
        eans = sorted({line[8:26].decode("ascii") for line in lines})
        # logged before the answer leaves: a page that cannot be logged is not served
        await _log_read(conn, client, query, eans, len(lines), JSON, complete=True)
    body = b"".join(
        (
            b'{"readings":[',
            b",".join(lines),
            b'],"next_cursor":',
            json.dumps(next_cursor).encode("ascii"),
            b"}",
        )
    )
    return web.Response(body=body, content_type=JSON, headers={"Cache-Control": "no-store"})


async def _stream(
    request: web.Request,
    settings: Settings,
    pool: asyncpg.Pool,
    client: Client,
    query: ReadingsQuery,
    media: str,
) -> web.StreamResponse:
    csv = media == CSV
    content_type = "text/csv; charset=utf-8; header=present" if csv else NDJSON
    response = web.StreamResponse(
        headers={"Content-Type": content_type, "Cache-Control": "no-store"}
    )
    tracker = EanTracker(b"" if csv else b'{"ean":"', skip_header=csv)
    gas_pad = readings_query.has_gas_pad(query.granularity)
    carry = b""
    #: why the stream stopped early (the client went away, or a bug), None while all is well
    failure: Exception | None = None

    async def send(chunk: bytes, conn: asyncpg.Connection) -> None:
        nonlocal carry, failure
        if failure is not None:
            return
        # COPY hands over whole rows; should a chunk ever end inside one, hold the rest back so
        # the encoder never sees half a timestamp
        if carry:
            chunk = carry + chunk
            carry = b""
        cut = chunk.rfind(b"\n") + 1
        if cut != len(chunk):
            carry = chunk[cut:]
            chunk = chunk[:cut]
        if not chunk:
            return
        try:
            out = (
                readings_query.encode_csv_chunk(chunk)
                if csv
                else readings_query.encode_chunk(chunk, gas_pad)
            )
            # counted before the write: a chunk that may have reached the client is logged
            tracker.feed(out)
            if not response.prepared:
                await response.prepare(request)
            await response.write(out)
        except Exception as exc:
            # Not raised from here: asyncpg 0.32 hangs the connection when a COPY sink raises
            # on the last chunk. Closing the connection stops the query at once (the pool
            # replaces it); the error is raised below, once COPY has returned.
            failure = exc
            conn.terminate()

    complete = False
    rows: int | None = None  # unknown unless COPY finished
    try:
        async with acquire(pool, settings.pool_acquire_timeout_s) as conn:
            try:
                rows = await _copy(
                    conn,
                    client,
                    query,
                    "csv" if csv else "json",
                    lambda chunk: send(chunk, conn),
                    paged=False,
                )
            except asyncpg.InterfaceError:
                if failure is None:
                    raise
                # the connection we closed on purpose, see send()
        if failure is not None:
            raise failure
        if carry:
            raise RuntimeError("COPY output ended inside a row")  # not reached: rows end in \n
        complete = True
    except ConnectionResetError:
        # the client went away: nothing to answer, but what was sent is logged below
        log.info("readings stream aborted by the client")
    finally:
        # shielded: a cancelled request must not skip the access log
        await asyncio.shield(
            _log_read_pooled(pool, settings, client, query, tracker, rows, media, complete)
        )
    if complete:
        if not response.prepared:  # no reading at all (CSV always has its header line)
            await response.prepare(request)
        await response.write_eof()
    return response


async def _log_read_pooled(
    pool: asyncpg.Pool,
    settings: Settings,
    client: Client,
    query: ReadingsQuery,
    tracker: EanTracker,
    rows: int | None,
    media: str,
    complete: bool,
) -> None:
    async with acquire(pool, settings.pool_acquire_timeout_s) as conn:
        await _log_read(conn, client, query, tracker.eans(), rows, media, complete=complete)


async def _log_read(
    conn: asyncpg.Connection,
    client: Client,
    query: ReadingsQuery,
    eans: list[str],
    readings: int | None,
    media: str,
    *,
    complete: bool,
) -> None:
    """The access-log row of one request (its own short transaction); ``readings`` is None
    for a stream that stopped early (its EANs are those of every chunk handed over)."""
    await _audit_read(
        conn,
        client,
        {
            "granularity": query.granularity,
            "from": query.start,
            "to": query.end,
            "eans": eans,
            "readings": readings,
            "format": media,
            "complete": complete,
        },
    )


async def _audit_read(conn: asyncpg.Connection, client: Client, detail: dict[str, Any]) -> None:
    """One ``data.read`` access-log row for a client request (its own short transaction when
    ``conn`` is in none): who read, and ``detail`` (with ``eans``) what."""
    await audit.append(
        conn,
        kind=audit.KIND_READ,
        actor=client.actor,
        subject=None,
        ean=None,
        detail={"client_id": client.client_id, "client_name": client.name, **detail},
    )


# ---------------------------------------------------------------------------------------------
# GET /v1/consents


_CHANGES_SQL: Final = """
SELECT * FROM (
    SELECT e.event_id, e.kind, e.at, e.recorded_at AS changed_at,
           c.consent_id, c.ean, c.purpose, c.granted_at, c.expires_at, c.ended_at, c.end_reason
    FROM consent_events e JOIN consents c ON c.ean = e.ean AND c.consent_id = e.consent_id
    WHERE e.recorded_at >= $1 AND c.purpose = ANY($2::text[]) AND c.data_class = 'interval'
    UNION ALL
    -- an expiry is no event: it happens by itself at expires_at, which is then its change time
    SELECT md5(c.consent_id::text || ':expired')::uuid, 'expired', c.expires_at, c.expires_at,
           c.consent_id, c.ean, c.purpose, c.granted_at, c.expires_at, c.ended_at, c.end_reason
    FROM consents c
    WHERE c.expires_at >= $1 AND c.expires_at <= now() AND c.ended_at IS NULL
      AND c.purpose = ANY($2::text[]) AND c.data_class = 'interval'
) AS changes
ORDER BY changed_at, event_id
LIMIT $3
"""

_SAME_TIME_SQL: Final = """
SELECT e.event_id, e.kind, e.at, e.recorded_at AS changed_at,
       c.consent_id, c.ean, c.purpose, c.granted_at, c.expires_at, c.ended_at, c.end_reason
FROM consent_events e JOIN consents c ON c.ean = e.ean AND c.consent_id = e.consent_id
WHERE e.recorded_at = $1 AND e.event_id > $3 AND c.purpose = ANY($2::text[])
  AND c.data_class = 'interval'
ORDER BY e.event_id
"""


def _state(row: Mapping[str, Any], now: dt.datetime) -> str:
    if row["ended_at"] is not None:
        return "ended"
    if row["expires_at"] is not None and row["expires_at"] <= now:
        return "expired"
    return "active"


async def get_consents(request: web.Request) -> web.Response:
    """GET /v1/consents?changed_since=: consent changes for the client's purposes."""
    settings = request.app[SETTINGS_KEY]
    pool = request.app[POOL_KEY]
    client = await authenticate_client(request, pool)
    raw = request.rel_url.query
    params = _single_params(raw)
    errors: list[FieldError] = []
    for name in sorted(set(params) - {"changed_since", "limit"}):
        errors.append(FieldError(("query", name), "unknown parameter; known: changed_since, limit"))
    since: dt.datetime | None = None
    value = params.get("changed_since")
    if not value:
        errors.append(FieldError(("query", "changed_since"), "required: an RFC 3339 time"))
    else:
        try:
            since = readings_query.parse_time(value, ZoneInfo(settings.tz))
        except ValueError as exc:
            errors.append(FieldError(("query", "changed_since"), str(exc)))
    limit = CONSENT_PAGE_DEFAULT
    raw_limit = params.get("limit")
    if raw_limit is not None:
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= CONSENT_PAGE_MAX:
            errors.append(
                FieldError(("query", "limit"), f"an integer from 1 to {CONSENT_PAGE_MAX}")
            )
        else:
            limit = int(raw_limit)
    if errors:
        names = ", ".join(dict.fromkeys(str(e.loc[1]) for e in errors))
        raise ValidationError(f"invalid query parameters: {names}", errors)
    assert since is not None
    purposes = sorted(client.purposes)
    async with acquire(pool, settings.pool_acquire_timeout_s) as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            now: dt.datetime = await conn.fetchval("SELECT now()")
            rows = list(await conn.fetch(_CHANGES_SQL, since, purposes, limit))
            full = len(rows) == limit
            if full:
                # never split the changes of one instant over two pages
                last = rows[-1]
                rows.extend(
                    await conn.fetch(_SAME_TIME_SQL, last["changed_at"], purposes, last["event_id"])
                )
        # consents are personal data too: one access-log row per request, like a readings pull
        await _audit_read(
            conn,
            client,
            {
                "data": "consents",
                "changed_since": since,
                "eans": sorted({r["ean"] for r in rows}),
                "changes": len(rows),
            },
        )
    horizon = now - COMMIT_LAG
    if full:
        upto = rows[-1]["changed_at"] + dt.timedelta(microseconds=1)
        next_since = max(since, min(upto, horizon))
    else:
        next_since = max(since, horizon)
    changes = [
        {
            "event_id": str(r["event_id"]),
            "kind": r["kind"],
            "at": r["at"],
            "changed_at": r["changed_at"],
            "consent": {
                "consent_id": str(r["consent_id"]),
                "ean": r["ean"],
                "purpose": r["purpose"],
                "granted_at": r["granted_at"],
                "expires_at": r["expires_at"],
                "ended_at": r["ended_at"],
                "end_reason": r["end_reason"],
                "state": _state(r, now),
            },
        }
        for r in rows
    ]
    return json_response({"changes": changes, "next_changed_since": rfc3339(next_since)})


# ---------------------------------------------------------------------------------------------
# wiring


def setup_routes(app: web.Application, settings: Settings) -> None:
    """Register ``GET /v1/readings`` and ``GET /v1/consents``; the cursor key is derived from the
    installation's signing key (loaded or generated by gateway.keys)."""
    ring = setup_keys(app, settings)
    material = ring.signing_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    app[CURSOR_CODEC_KEY] = CursorCodec(readings_query.cursor_key(material))
    app.router.add_get("/v1/readings", get_readings)
    app.router.add_get("/v1/consents", get_consents)


_PROBLEM = {
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
}


def _problems(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "problem", **_PROBLEM} for c in codes}


_READING = {
    "type": "object",
    "properties": {
        "ean": {"type": "string", "pattern": "^[0-9]{18}$"},
        "commodity": {"enum": ["electricity", "gas"]},
        "granularity": {"enum": ["P1M", "P1D", "PT1H", "PT15M"]},
        "period_start": {"type": "string", "format": "date-time"},
        "measured_at": {"type": "string", "format": "date-time"},
        "registers": {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {
                        k: {"type": ["integer", "null"]}
                        for k in ("import_t1_wh", "import_t2_wh", "export_t1_wh", "export_t2_wh")
                    },
                },
                {"type": "object", "properties": {"volume_dm3": {"type": "integer"}}},
            ]
        },
    },
    "required": ["ean", "commodity", "granularity", "period_start", "measured_at", "registers"],
}


def _q(name: str, description: str, *, required: bool = False, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema or {"type": "string"},
    }


OPENAPI_PATHS: dict[str, Any] = {
    "/v1/readings": {
        "get": {
            "summary": "Readings this client may see (billing pull)",
            "description": (
                "Daily and monthly readings of every connection; interval readings only where an "
                "interval consent for one of the client's purposes covered the measurement (after "
                "the consent ended: only for purposes that keep their data). Half-open range "
                "[from, to) on period_start; a bare date is local midnight (Europe/Amsterdam). "
                "`Accept: application/x-ndjson` or `text/csv` streams everything; JSON (default) "
                "answers in pages with `next_cursor`. Every request is in the customers' access "
                "logs."
            ),
            "security": [{"clientToken": []}],
            "parameters": [
                _q(
                    "granularity",
                    "P1M, P1D, PT1H or PT15M",
                    required=True,
                    enum=["P1M", "P1D", "PT1H", "PT15M"],
                ),
                _q("from", "RFC 3339 time or YYYY-MM-DD (inclusive)", required=True),
                _q("to", "RFC 3339 time or YYYY-MM-DD (exclusive)", required=True),
                {
                    "name": "ean",
                    "in": "query",
                    "required": False,
                    "description": "only these connections (repeatable)",
                    "schema": {"type": "array", "items": {"type": "string"}},
                    "style": "form",
                    "explode": True,
                },
                _q("cursor", "JSON pages: next_cursor of the previous page, same parameters"),
                _q(
                    "limit",
                    "JSON pages: page size",
                    type="integer",
                    minimum=1,
                    maximum=readings_query.MAX_LIMIT,
                    default=readings_query.DEFAULT_LIMIT,
                ),
            ],
            "responses": {
                "200": {
                    "description": "readings ordered by (ean, period_start)",
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "readings": {"type": "array", "items": _READING},
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                            }
                        },
                        NDJSON: {"schema": _READING},
                        CSV: {"schema": {"type": "string"}},
                    },
                },
                **_problems(400, 401, 403, 406, 422, 503),
            },
        }
    },
    "/v1/consents": {
        "get": {
            "summary": "Consent changes for this client's purposes (reconciliation)",
            "security": [{"clientToken": []}],
            "parameters": [
                _q(
                    "changed_since",
                    "RFC 3339; pass next_changed_since of the previous answer",
                    required=True,
                ),
                _q(
                    "limit",
                    "most changes per answer",
                    type="integer",
                    minimum=1,
                    maximum=CONSENT_PAGE_MAX,
                    default=CONSENT_PAGE_DEFAULT,
                ),
            ],
            "responses": {
                "200": {
                    "description": "changes ordered by change time; may repeat (event_id)",
                    "content": {JSON: {"schema": {"type": "object"}}},
                },
                **_problems(401, 422, 503),
            },
        }
    },
}
