"""GET /v1/readings?changed_since= (incremental sync for billing) and the readings.changed
webhook, against a real gateway over real HTTP, a real PostgreSQL and a real webhook receiver.

* the round trip of issue 12: pull everything, then ingest more telegrams, replay a late spool
  that improves an earlier period, revoke a delete-purpose consent; a pull since the token
  returns exactly those changes (new readings, the improved one, the tombstone), in JSON pages,
  NDJSON and CSV; a pull since the new token returns nothing;
* concurrency: a writing transaction that draws its id before a pull and commits after it is in
  the next pull; readings stored while a client pages are in its next sync;
* bad, altered and foreign tokens are 400 problem+json;
* readings.changed: one event per interval per client, listing the EANs and periods it may see.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from consent.model import EndReason
from consent.retention import RetentionPolicy
from gateway.api.appkeys import CLOCK_KEY
from gateway.ingest import sql as ingest_sql
from gateway.jobs import readings_changed
from gateway.services import clients, erasure, registry
from gateway.services import consents as consent_store
from gateway.settings import RetentionSettings, Settings, WebhookSettings
from gateway.storage import tombstones
from tests.conftest import ADMIN_TOKEN
from tests.support import make_ean
from tests.support.telegram_builder import build_telegram

HttpClient = TestClient[web.Request, web.Application]
NDJSON = "application/x-ndjson"
CSV = "text/csv"
PROBLEM = "application/problem+json"
TOKEN_HEADER = "Meterpoort-Changed-Token"
KEEP = "dynamic-tariff-billing"  # keeps its data when the consent ends
DELETE = "energy-insights"  # its data is deleted at revocation
MINUTE = dt.timedelta(minutes=1)
#: a recent whole hour: telegrams are measured around it (the ingest accepts the past hours)
BASE = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=6)


class Clock:
    def __init__(self) -> None:
        self.now = (BASE + dt.timedelta(hours=3)).timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def gateway_settings(database_url: str, tmp_path: Path) -> Settings:
    """The conftest settings, with a readings.changed interval of one second."""
    return Settings(
        database_url=SecretStr(database_url),
        data_dir=tmp_path / "var",
        admin_token=SecretStr(ADMIN_TOKEN),
        pool_min_size=1,
        pool_max_size=6,
        retention=RetentionSettings(enabled=False),
        webhook=WebhookSettings(poll_interval_s=0.05, readings_changed_interval_s=1.0),
    )


@dataclass
class World:
    http: HttpClient
    pool: asyncpg.Pool
    #: meter A: consent for the keep purpose; meter B: for the delete purpose
    ean_a: str
    ean_b: str
    consent_b: str
    device: dict[str, str]
    token: str
    other_token: str


@pytest.fixture
async def world(gateway_app: web.Application, pool: asyncpg.Pool) -> AsyncIterator[World]:
    gateway_app[CLOCK_KEY] = Clock()
    http: HttpClient = TestClient(TestServer(gateway_app, host="127.0.0.1", port=0))
    await http.start_server()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        consents = []
        for n, (meter, purpose) in enumerate((("A1", KEEP), ("B1", DELETE)), start=1):
            resp = await http.post(
                "/v1/admin/meters",
                json={
                    "ean": make_ean(n),
                    "commodity": "electricity",
                    "meter_id": meter,
                    "customer_id": f"cust-{n}",
                    "contract_start": (BASE - dt.timedelta(days=30)).isoformat(),
                },
                headers=admin,
            )
            assert resp.status == 201, await resp.text()
            resp = await http.post(
                "/v1/admin/consents",
                json={
                    "ean": make_ean(n),
                    "customer_id": f"cust-{n}",
                    "purpose": purpose,
                    "notice_version": "v1",
                    "granted_at": (BASE - dt.timedelta(hours=1)).isoformat(),
                },
                headers=admin,
            )
            assert resp.status == 201, await resp.text()
            consents.append((await resp.json())["consent_id"])
        resp = await http.post("/v1/admin/devices", json={"meter_ids": ["A1", "B1"]}, headers=admin)
        assert resp.status == 201, await resp.text()
        device = {
            "Authorization": f"Bearer {(await resp.json())['token']}",
            "Content-Type": "text/plain",
        }
        async with pool.acquire() as conn:
            billing = await clients.add_client(
                conn,
                clients.ClientIn(
                    name="billing", granularities=["PT15M", "P1D"], purposes=[KEEP, DELETE]
                ),
            )
            other = await clients.add_client(
                conn,
                clients.ClientIn(name="other", granularities=["PT15M"], purposes=[KEEP, DELETE]),
            )
        yield World(
            http, pool, make_ean(1), make_ean(2), consents[1], device, billing.token, other.token
        )
    finally:
        await http.close()


def _wh(t: dt.datetime) -> int:
    """The import register of a telegram at ``t``: tells every telegram apart."""
    return 1_000_000 + int((t - BASE).total_seconds())


async def _send(w: World, meter: str, times: list[dt.datetime]) -> None:
    body = b"".join(build_telegram(meter, t, import_wh=(_wh(t), 2_000_000)) for t in times)
    resp = await w.http.post("/v1/telegrams", data=body, headers=w.device)
    assert resp.status == 200, await resp.text()


def _z(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _period(t: dt.datetime) -> dt.datetime:
    return t.replace(minute=t.minute - t.minute % 15, second=0)


def _expected(ean: str, times: list[dt.datetime]) -> set[tuple[str, str, str, int]]:
    """(ean, period_start, measured_at, import_t1_wh) of the earliest telegram per period."""
    best: dict[dt.datetime, dt.datetime] = {}
    for t in times:
        p = _period(t)
        if p not in best or t < best[p]:
            best[p] = t
    return {(ean, _z(p), _z(t), _wh(t)) for p, t in best.items()}


def _key(r: dict[str, Any]) -> tuple[str, str, str, int]:
    return (r["ean"], r["period_start"], r["measured_at"], r["registers"]["import_t1_wh"])


@dataclass
class Pull:
    readings: list[dict[str, Any]]
    deleted: list[dict[str, Any]]
    token: str


async def _get(w: World, params: dict[str, Any], accept: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token or w.token}", "Accept": accept}
    return await w.http.get("/v1/readings", params=params, headers=headers)


async def pull(w: World, fmt: str, since: str, **extra: Any) -> Pull:
    """One sync pull in ``fmt`` (json pages of 2, ndjson, csv): readings, tombstones, token."""
    params = {"granularity": "PT15M", "changed_since": since, **extra}
    if fmt == "json":
        readings: list[dict[str, Any]] = []
        deleted: list[dict[str, Any]] = []
        cursor = None
        while True:
            page_params = {**params, "limit": "2", **({"cursor": cursor} if cursor else {})}
            resp = await _get(w, page_params, "application/json")
            assert resp.status == 200, await resp.text()
            page = await resp.json()
            readings += page["readings"]
            deleted += page["deleted"]
            cursor = page["next_cursor"]
            if cursor is None:
                assert page["next_changed_since"]
                return Pull(readings, deleted, page["next_changed_since"])
            assert page["next_changed_since"] is None
            # tombstones come with the first page only
            assert not page["deleted"] or len(readings) == len(page["readings"])
    resp = await _get(w, params, NDJSON if fmt == "ndjson" else CSV)
    assert resp.status == 200, await resp.text()
    token = resp.headers[TOKEN_HEADER]
    text = await resp.text()
    if fmt == "ndjson":
        lines = [json.loads(line) for line in text.splitlines()]
        deleted = [x for x in lines if x.get("deleted")]
        readings = [x for x in lines if not x.get("deleted")]
        # tombstones first: applying the feed in order never deletes a newer reading
        assert lines[: len(deleted)] == deleted
        return Pull(readings, deleted, token)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0].endswith(",deleted,last_period_start,reason")
    readings, deleted = [], []
    for r in rows:
        if r["deleted"] == "true":
            assert not readings  # tombstones first
            deleted.append(
                {
                    "deleted": True,
                    "ean": r["ean"],
                    "commodity": r["commodity"],
                    "granularity": r["granularity"],
                    "first_period_start": r["period_start"],
                    "last_period_start": r["last_period_start"],
                    "reason": r["reason"],
                }
            )
        else:
            assert r["deleted"] == "false" and r["reason"] == ""
            readings.append({**r, "registers": {"import_t1_wh": int(r["import_t1_wh"])}})
    return Pull(readings, deleted, token)


FORMATS = ("json", "ndjson", "csv")


async def test_changed_since_round_trip(world: World) -> None:
    w = world
    first = [BASE + dt.timedelta(seconds=30) + i * MINUTE for i in range(60)]
    await _send(w, "A1", first)
    await _send(w, "B1", first)

    # 1. pull everything, once per format (each keeps its own token)
    everything = _expected(w.ean_a, first) | _expected(w.ean_b, first)
    tokens = {}
    for fmt in FORMATS:
        got = await pull(w, fmt, "0")
        assert {_key(r) for r in got.readings} == everything and len(got.readings) == 8
        assert got.deleted == []
        tokens[fmt] = got.token

    # 2. more telegrams; a late spool: one telegram measured before the stored reading of the
    # first period (improves it), others measured after stored ones (change nothing); the
    # delete-purpose consent of meter B is revoked
    more = [BASE + dt.timedelta(minutes=60, seconds=30) + i * MINUTE for i in range(30)]
    await _send(w, "A1", more)
    spool = [BASE + dt.timedelta(seconds=5), BASE + dt.timedelta(seconds=40)]
    spool += [BASE + dt.timedelta(minutes=15, seconds=50)]
    await _send(w, "A1", spool)
    async with w.pool.acquire() as conn:
        ended = await consent_store.end_consent(conn, w.consent_b, EndReason.REVOKED)
    assert ended["deleted_readings"] == 4

    # 3. exactly the changes, in every format
    improved = (w.ean_a, _z(BASE), _z(spool[0]), _wh(spool[0]))
    changes = _expected(w.ean_a, more) | {improved}
    tombstone = {
        "deleted": True,
        "ean": w.ean_b,
        "commodity": "electricity",
        "granularity": "PT15M",
        "first_period_start": _z(BASE),
        "last_period_start": _z(BASE + dt.timedelta(minutes=45)),
        "reason": "revoked",
    }
    for fmt in FORMATS:
        got = await pull(w, fmt, tokens[fmt])
        assert sorted(_key(r) for r in got.readings) == sorted(changes), fmt
        assert got.deleted == [tombstone], fmt
        if fmt != "json":
            # the access log names the EANs of readings and of tombstones
            detail = await w.pool.fetchval(
                "SELECT detail FROM audit_log WHERE kind = 'data.read' ORDER BY seq DESC LIMIT 1"
            )
            assert detail["eans"] == [w.ean_a, w.ean_b]
        # and since the new token: nothing
        again = await pull(w, fmt, got.token)
        assert again.readings == [] and again.deleted == [], fmt

    # a window narrows a sync pull
    got = await pull(w, "ndjson", tokens["ndjson"], **{"from": _z(BASE + dt.timedelta(hours=1))})
    assert {_key(r) for r in got.readings} == _expected(w.ean_a, more)
    assert got.deleted == []


async def test_a_transaction_that_commits_after_a_pull_is_in_the_next_one(world: World) -> None:
    w = world
    at = [BASE + dt.timedelta(minutes=m, seconds=10) for m in (0, 15, 30)]
    key = [(w.ean_a, _z(_period(t)), _z(t), _wh(t)) for t in at]
    await _send(w, "A1", [at[0]])
    statement = ingest_sql.flush_sql((ingest_sql.E_PT15M,))
    async with w.pool.acquire() as slow:
        tx = slow.transaction()
        await tx.start()
        # the real ingest statement: its transaction draws its id now and commits last
        stored = await slow.fetchval(
            statement,
            [int(w.ean_a)],
            [int(_period(at[1]).timestamp())],
            [int(at[1].timestamp())],
            [_wh(at[1])],
            [2_000_000],
            [0],
            [0],
        )
        assert stored == 1
        # a later transaction (a higher id) commits first: a watermark taken from ids or
        # times (the highest seen, the snapshot's xmax) would now jump past the slow one
        await _send(w, "A1", [at[2]])
        first = await pull(w, "ndjson", "0")
        assert [_key(r) for r in first.readings] == [key[0], key[2]]
        await tx.commit()
    got = await pull(w, "ndjson", first.token)
    assert [_key(r) for r in got.readings] == [key[1]]


async def test_readings_stored_while_a_client_pages_are_in_its_next_sync(world: World) -> None:
    w = world
    await _send(w, "A1", [BASE + i * 15 * MINUTE + dt.timedelta(seconds=9) for i in range(4)])
    params = {"granularity": "PT15M", "changed_since": "0", "limit": "2"}
    resp = await _get(w, params, "application/json")
    page = await resp.json()
    assert len(page["readings"]) == 2 and page["next_cursor"]
    # stored between the pages, before the cursor's position: this pull will not return it
    earlier = BASE - dt.timedelta(minutes=15) + dt.timedelta(seconds=7)
    await _send(w, "A1", [earlier])
    resp = await _get(w, {**params, "cursor": page["next_cursor"]}, "application/json")
    page = await resp.json()
    assert len(page["readings"]) == 2 and page["next_cursor"] is None
    got = await pull(w, "json", page["next_changed_since"])
    assert [_key(r) for r in got.readings] == [
        (w.ean_a, _z(_period(earlier)), _z(earlier), _wh(earlier))
    ]


async def test_erasure_and_other_deletions_come_back_as_tombstones(world: World) -> None:
    w = world
    times = [BASE + i * 15 * MINUTE + dt.timedelta(seconds=20) for i in range(4)]
    await _send(w, "A1", times)
    await _send(w, "B1", times)
    token = (await pull(w, "ndjson", "0")).token
    async with w.pool.acquire() as conn:
        result = await erasure.erase(conn, "cust-1", actor="admin", retention=RetentionPolicy())
        assert result["erased"]["readings_e_pt15m"] == 4
        async with conn.transaction():
            # retention deletes by published rule: no tombstone
            await tombstones.label(conn, tombstones.RETENTION)
            await conn.execute(
                "DELETE FROM readings_e_pt15m WHERE ean = $1 AND period_start = $2",
                int(w.ean_b),
                _period(times[3]),
            )
            # a deletion that names no reason; the period between the two deleted ones stays,
            # so they are two ranges (a tombstone never covers a reading that still exists)
            await conn.execute(
                "DELETE FROM readings_e_pt15m WHERE ean = $1 AND period_start = ANY($2)",
                int(w.ean_b),
                [_period(times[0]), _period(times[2])],
            )
    got = await pull(w, "csv", token)
    assert got.readings == []

    def stone(ean: str, first: int, last: int, reason: str) -> dict[str, Any]:
        return {
            "deleted": True,
            "ean": ean,
            "commodity": "electricity",
            "granularity": "PT15M",
            "first_period_start": _z(_period(times[first])),
            "last_period_start": _z(_period(times[last])),
            "reason": reason,
        }

    assert got.deleted == [
        stone(w.ean_a, 0, 3, "erasure"),
        stone(w.ean_b, 0, 0, "deleted"),
        stone(w.ean_b, 2, 2, "deleted"),
    ]


async def _problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    data: dict[str, Any] = await resp.json(content_type=PROBLEM)
    return data


async def test_bad_and_foreign_tokens_are_refused(world: World) -> None:
    w = world
    token = (await pull(w, "ndjson", "0")).token
    body, _, mac = token.partition(".")
    tampered = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + mac
    for bad in ("garbage", "a.b", tampered, token + "x", "é" * 10, "1"):
        for accept in ("application/json", NDJSON, CSV):
            data = await _problem(
                await _get(w, {"granularity": "PT15M", "changed_since": bad}, accept), 400
            )
            assert "changed_since" in data["detail"]
    # another client's token, a token of another granularity
    await _problem(
        await _get(w, {"granularity": "PT15M", "changed_since": token}, NDJSON, w.other_token),
        400,
    )
    await _problem(await _get(w, {"granularity": "P1D", "changed_since": token}, NDJSON), 400)
    # a cursor of a sync pull does not continue another sync pull
    await _send(w, "A1", [BASE + dt.timedelta(seconds=3), BASE + dt.timedelta(minutes=20)])
    resp = await _get(w, {"granularity": "PT15M", "changed_since": "0", "limit": "1"}, "*/*")
    cursor = (await resp.json())["next_cursor"]
    assert cursor
    await _problem(
        await _get(
            w,
            {"granularity": "PT15M", "changed_since": token, "limit": "1", "cursor": cursor},
            "application/json",
        ),
        400,
    )
    # not combinable: customer/contract filters
    await _problem(
        await _get(
            w, {"granularity": "PT15M", "changed_since": "0", "customer_id": "cust-1"}, NDJSON
        ),
        422,
    )


# --- readings.changed ---------------------------------------------------------------------------


@dataclass
class Inbox:
    """A real webhook receiver: (arrival time, body + ``to``: the URL's query) per request."""

    url: str
    events: list[tuple[float, dict[str, Any]]]
    arrived: asyncio.Event

    async def wait_for(self, n: int) -> None:
        async with asyncio.timeout(15):
            while len(self.events) < n:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def inbox() -> AsyncIterator[Inbox]:
    events: list[tuple[float, dict[str, Any]]] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        body["to"] = request.query_string
        events.append((asyncio.get_running_loop().time(), body))
        arrived.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield Inbox(f"http://127.0.0.1:{runner.addresses[0][1]}/hook", events, arrived)
    finally:
        await runner.cleanup()


async def test_readings_changed_webhook(world: World, inbox: Inbox) -> None:
    w = world
    url, events = inbox.url, inbox.events
    async with w.pool.acquire() as conn:
        await clients.add_client(
            conn,
            clients.ClientIn(
                name="hooked", granularities=["PT15M"], purposes=[KEEP], webhook_url=url
            ),
        )
        # a client of the other purpose, subscribed too: it may not see meter A's readings
        await clients.add_client(
            conn,
            clients.ClientIn(
                name="insights", granularities=["PT15M"], purposes=[DELETE], webhook_url=url + "?b"
            ),
        )
    times = [BASE + dt.timedelta(seconds=30) + i * 5 * MINUTE for i in range(6)]
    await _send(w, "A1", times)
    await inbox.wait_for(1)
    await asyncio.sleep(1.5)  # a second event for the same changes would arrive by now
    assert len(events) == 1
    first = events[0][1]
    assert first["kind"] == "readings.changed" and first["ean"] is None and first["to"] == ""
    assert first["data"]["truncated"] is False
    assert first["data"]["changes"] == [
        {
            "ean": w.ean_a,
            "granularity": "PT15M",
            "first_period_start": _z(BASE),
            "last_period_start": _z(BASE + dt.timedelta(minutes=15)),
        }
    ]
    # more changes, in two bursts within one interval: one event (the next window)
    await _send(w, "A1", [BASE + dt.timedelta(minutes=50)])
    await _send(w, "B1", [BASE + dt.timedelta(minutes=40)])
    await inbox.wait_for(3)
    await asyncio.sleep(1.5)
    assert len(events) == 3
    # each client learns only what it may see: meter A's readings (keep purpose) go to the
    # first, meter B's (delete purpose) to the second
    got = {e[1]["to"]: e[1]["data"]["changes"] for e in events[1:]}
    p45, p30 = _z(BASE + dt.timedelta(minutes=45)), _z(BASE + dt.timedelta(minutes=30))
    assert got == {
        "": [
            {
                "ean": w.ean_a,
                "granularity": "PT15M",
                "first_period_start": p45,
                "last_period_start": p45,
            }
        ],
        "b": [
            {
                "ean": w.ean_b,
                "granularity": "PT15M",
                "first_period_start": p30,
                "last_period_start": p30,
            }
        ],
    }
    # at most one per interval and client: the hooked client's two events are an interval apart
    hooked = [t for t, e in events if e["to"] == ""]
    assert hooked[1] - hooked[0] >= 0.9


async def test_one_process_runs_the_readings_changed_job(pool: asyncpg.Pool) -> None:
    """Several gateway processes run the job; one of them announces each window's changes."""
    ean = make_ean(7)
    async with pool.acquire() as conn:
        await registry.add_connection(
            conn,
            registry.ConnectionIn(
                ean=ean,
                commodity="electricity",
                meter_id="M7",
                customer_id="cust-7",
                contract_start=BASE - dt.timedelta(days=30),
            ),
        )
        await clients.add_client(
            conn,
            clients.ClientIn(
                name="hooked", granularities=["P1D"], webhook_url="http://127.0.0.1:9/hook"
            ),
        )
        await conn.execute(
            "INSERT INTO readings_e_p1d (ean, period_start, measured_at, import_t1_wh)"
            " VALUES ($1, $2, $2, 1)",
            int(ean),
            BASE - dt.timedelta(days=2),
        )
    config = WebhookSettings(readings_changed_interval_s=3600)
    # the last run (the migration's mark) was long ago
    await pool.execute("UPDATE readings_changed_mark SET at = at - interval '2 hours'")

    async def run() -> int | None:
        async with pool.acquire() as conn:
            return await readings_changed.run_once(conn, config)

    results = await asyncio.gather(*(run() for _ in range(4)))
    assert sorted(results, key=str) == [1, None, None, None]
    # within the interval nothing runs again, even with new changes
    await pool.execute("UPDATE readings_e_p1d SET import_t1_wh = 2, changed_xid = DEFAULT")
    assert await run() is None
    events = await pool.fetch("SELECT ean, payload FROM outbox_events")
    assert [(e["ean"], e["payload"]["changes"]) for e in events] == [
        (
            "",
            [
                {
                    "ean": ean,
                    "granularity": "P1D",
                    "first_period_start": _z(BASE - dt.timedelta(days=2)),
                    "last_period_start": _z(BASE - dt.timedelta(days=2)),
                }
            ],
        )
    ]
    # the next window has the change made in between, and only the client's own recipients
    await pool.execute("UPDATE readings_changed_mark SET at = at - interval '2 hours'")
    assert await run() == 1
    assert await pool.fetchval("SELECT count(*) FROM webhook_deliveries") == 2
