"""The client API: ``GET /v1/readings`` (billing pull) and ``GET /v1/consents`` (reconciliation).

``GET /v1/readings?granularity=&from=&to=[&ean=…][&cursor=][&limit=]`` answers by ``Accept``:

* ``application/x-ndjson`` — one reading per line, streamed with constant memory: PostgreSQL's
  ``COPY … TO STDOUT`` output goes through ``readings_query.encode_chunk`` straight into the
  response, chunk by chunk, with asyncpg reading the next chunk only once the previous one is
  written (so a slow client slows the query, it does not fill memory);
* ``text/csv`` — the same rows as CSV with a header line, streamed the same way;
* ``application/json`` (the default) — ``{readings: […], next_cursor}`` pages of ``limit``
  (default 1000, at most 10 000) with an opaque, HMAC-signed keyset cursor.

What a client may see is decided in SQL (gateway.storage.readings_query). Every request that returns
data is recorded as ONE audit row (kind ``data.read``, actor ``client:<id>``) listing the EANs
returned, so each customer's access log shows who read their data: pages log before they answer;
streams log when they end, also when the client went away mid-stream (then listing the EANs of
every chunk handed to the transport — rather one too many than one too few).

``changed_since=<token>`` (or ``0`` for a first pull) makes it a sync pull: only readings stored
or replaced since the token's pull, deletions first as tombstones, and a new token (JSON: the
last page's ``next_changed_since``; streams: the ``Meterpoort-Changed-Token`` header, sent before
the body). README, "Billing: incremental sync".

``GET /v1/consents?changed_since=`` lists consent changes (grants, ends, expiries) for the
client's purposes, oldest first, with ``next_changed_since`` for the next poll.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import json
import logging
from collections.abc import Mapping
from typing import Any, Final
from zoneinfo import ZoneInfo

import asyncpg
from aiohttp import web
from multidict import MultiMapping

from gateway.api.appkeys import CURSOR_CODEC_KEY, POOL_KEY, SETTINGS_KEY
from gateway.api.auth import client_of
from gateway.api.http import json_response
from gateway.errors import FieldError, ForbiddenError, ValidationError
from gateway.jsonenc import rfc3339
from gateway.services import pulls
from gateway.settings import Settings
from gateway.storage import readings_query
from gateway.storage.credentials import Client
from gateway.storage.db import acquire
from gateway.storage.readings_query import EanTracker, ReadingsQuery
from gateway.times import parse_time

log = logging.getLogger(__name__)


NDJSON: Final = "application/x-ndjson"
CSV: Final = "text/csv"
JSON: Final = "application/json"
_OFFERED: Final = (JSON, NDJSON, CSV)
#: a ``changed_since`` stream's next token, sent before the body (README, billing section)
CHANGED_TOKEN_HEADER: Final = "Meterpoort-Changed-Token"

#: GET /v1/consents: default and largest page
CONSENT_PAGE_DEFAULT: Final = 1000
CONSENT_PAGE_MAX: Final = 10_000
#: how far behind now ``next_changed_since`` stays: a change recorded (now()) by a transaction
#: that commits later than a poll is still found by the next one. Changes inside this window
#: may be returned twice; ``event_id`` identifies them.
COMMIT_LAG: Final = dt.timedelta(seconds=10)


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
    client = await client_of(request)
    raw = request.rel_url.query
    params = _single_params(raw)
    query = readings_query.parse_params(params, raw.getall("ean", []), ZoneInfo(settings.tz))
    if query.granularity not in client.granularities:
        allowed = ", ".join(sorted(client.granularities))
        raise ForbiddenError(
            f"this client may not read {query.granularity} readings (it may read: {allowed})"
        )
    media = negotiate(request.headers.get("Accept"))
    codec = request.app[CURSOR_CODEC_KEY]
    if query.changed_since is not None:
        since = codec.decode_token(query.changed_since, client.client_id, query.granularity)
        query = dataclasses.replace(query, since_snapshot=since)
    cursor = params.get("cursor")
    if media != JSON:
        stray = [n for n in ("cursor", "limit") if n in params]
        if stray:
            raise ValidationError(
                f"{' and '.join(stray)} only apply to JSON pages; streams return every reading",
                [FieldError(("query", n), f"not used with Accept: {media}") for n in stray],
            )
        return await _stream(request, settings, pool, client, query, media)
    next_snapshot = None
    if cursor is not None:
        ean, period_start, next_snapshot = codec.decode(cursor, query.fingerprint(client.client_id))
        query = dataclasses.replace(query, after=(ean, period_start))
    if query.sync:
        return await _sync_page(request, settings, pool, client, query, next_snapshot)
    return await _page(request, settings, pool, client, query)


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
        await pulls.copy_readings(conn, client, query, "json", collect, paged=True)
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
        await pulls.log_read(conn, client, query, eans, len(lines), JSON, complete=True)
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


async def _sync_page(
    request: web.Request,
    settings: Settings,
    pool: asyncpg.Pool,
    client: Client,
    query: ReadingsQuery,
    carried: str | None,
) -> web.Response:
    """A JSON page of a ``changed_since`` pull: ``{readings, deleted, next_cursor,
    next_changed_since}``. Tombstones come on the first page; the token comes on the last, made
    from the FIRST page's snapshot (carried in the cursor), so whatever changed while the
    client paged is in the next sync (possibly twice: readings are idempotent by ean and
    period_start)."""
    codec = request.app[CURSOR_CODEC_KEY]
    chunks: list[bytes] = []
    started: list[str] = []
    deleted: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        chunks.append(chunk)

    async def on_start(snapshot: str, tombstones: list[asyncpg.Record]) -> None:
        started.append(snapshot)
        deleted.extend(readings_query.tombstone_json(t, query.granularity) for t in tombstones)
        tombstone_eans.update(t["ean"] for t in tombstones)

    tombstone_eans: set[str] = set()
    async with acquire(pool, settings.pool_acquire_timeout_s) as conn:
        await pulls.sync_readings(
            conn, client, query, "json", collect, paged=True, on_start=on_start
        )
        snapshot = carried if carried is not None else started[0]
        lines = readings_query.encode_chunk(
            b"".join(chunks), readings_query.has_gas_pad(query.granularity)
        ).split(b"\n")
        lines.pop()  # after the last newline
        more = len(lines) > query.limit
        del lines[query.limit :]
        next_cursor = None
        next_token = None
        if more:
            last = lines[-1]
            start = last.index(b'"period_start":"') + 16
            period_start = last[start : last.index(b'"', start)].decode("ascii")
            next_cursor = codec.encode(
                query.fingerprint(client.client_id), int(last[8:26]), period_start, snapshot
            )
        else:
            next_token = codec.encode_token(client.client_id, query.granularity, snapshot)
        eans = sorted({line[8:26].decode("ascii") for line in lines} | tombstone_eans)
        await pulls.log_read(conn, client, query, eans, len(lines), JSON, complete=True)
    body = b"".join(
        (
            b'{"readings":[',
            b",".join(lines),
            b'],"deleted":[',
            b",".join(deleted),
            b'],"next_cursor":',
            json.dumps(next_cursor).encode("ascii"),
            b',"next_changed_since":',
            json.dumps(next_token).encode("ascii"),
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
    tracker = EanTracker(b"" if csv else b'{"ean":"', skip_header=csv and not query.sync)
    tombstone_eans: set[str] = set()
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

    async def on_start(snapshot: str, tombstones: list[asyncpg.Record]) -> None:
        # the token goes out before the body: a client keeps it once the stream ENDED well
        response.headers[CHANGED_TOKEN_HEADER] = request.app[CURSOR_CODEC_KEY].encode_token(
            client.client_id, query.granularity, snapshot
        )
        await response.prepare(request)
        head = [(readings_query.CSV_SYNC_HEADER + "\n").encode("ascii")] if csv else []
        for t in tombstones:
            head.append(
                readings_query.tombstone_csv(t, query.granularity)
                if csv
                else readings_query.tombstone_json(t, query.granularity) + b"\n"
            )
            tombstone_eans.add(t["ean"])
        if head:
            await response.write(b"".join(head))

    complete = False
    rows: int | None = None  # unknown unless COPY finished
    try:
        async with acquire(pool, settings.pool_acquire_timeout_s) as conn:
            try:
                sink = functools.partial(send, conn=conn)
                output = "csv" if csv else "json"
                # a stream lasts as long as the client reads: its own, longer bound
                timeout = settings.db_stream_timeout_s
                if query.sync:
                    rows = await pulls.sync_readings(
                        conn,
                        client,
                        query,
                        output,
                        sink,
                        paged=False,
                        on_start=on_start,
                        copy_timeout_s=timeout,
                    )
                else:
                    rows = await pulls.copy_readings(
                        conn, client, query, output, sink, paged=False, copy_timeout_s=timeout
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
    except BaseException:
        if response.prepared and request.transport is not None:
            # The status line and part of the body are out, so no error answer can follow.
            # Closing the connection before the last chunk is how HTTP says "cut short": the
            # client neither waits for more nor takes the part for the whole (aiohttp would
            # otherwise end the body cleanly after the middleware's answer, or leave it open).
            request.transport.close()
        raise
    finally:
        # shielded: a cancelled request must not skip the access log
        await asyncio.shield(
            _log_read_pooled(
                pool, settings, client, query, tracker, tombstone_eans, rows, media, complete
            )
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
    tombstone_eans: set[str],
    rows: int | None,
    media: str,
    complete: bool,
) -> None:
    eans = sorted(set(tracker.eans()) | tombstone_eans)
    async with acquire(pool, settings.pool_acquire_timeout_s) as conn:
        await pulls.log_read(conn, client, query, eans, rows, media, complete=complete)


# ---------------------------------------------------------------------------------------------
# GET /v1/consents


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
    client = await client_of(request)
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
            since = parse_time(value, ZoneInfo(settings.tz))
        except ValueError as exc:
            errors.append(FieldError(("query", "changed_since"), str(exc)))
    limit = CONSENT_PAGE_DEFAULT
    raw_limit = params.get("limit")
    if raw_limit is not None:
        try:
            limit = readings_query.page_size(raw_limit, CONSENT_PAGE_MAX)
        except ValueError as exc:
            errors.append(FieldError(("query", "limit"), str(exc)))
    if errors:
        names = ", ".join(dict.fromkeys(str(e.loc[1]) for e in errors))
        raise ValidationError(f"invalid query parameters: {names}", errors)
    assert since is not None
    async with acquire(pool, settings.pool_acquire_timeout_s) as conn:
        now, rows, full = await pulls.consent_changes(conn, client, since, limit)
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
