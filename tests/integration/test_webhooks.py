"""Consent-change notifications end to end: the outbox in PostgreSQL, the delivery worker, and a
real HTTP receiver on 127.0.0.1 that fails, hangs past the timeout and recovers.

Timings are shrunk through ``WebhookSettings`` (timeouts of tenths of a second, backoff of tens of
milliseconds), never by patching the worker.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway import metrics
from gateway.api.appkeys import WEBHOOK_WORKER_KEY
from gateway.jobs.webhooks import WebhookWorker, verify
from gateway.jsonenc import rfc3339
from gateway.keys import KeyRing
from gateway.services import registry
from gateway.settings import Settings, WebhookSettings
from gateway.storage import db, outbox
from gateway.tokens import generate_token, hash_token

PURPOSE = "dynamic-tariff-billing"
OTHER_PURPOSE = "energy-insights"

FAST = WebhookSettings(
    timeout_s=0.4,
    backoff_base_s=0.05,
    backoff_cap_s=0.2,
    poll_interval_s=0.02,
    lease_margin_s=0.6,
    gauge_interval_s=0.05,
    error_pause_s=0.1,
)


def make_ean(n: int) -> str:
    return f"8716871400{n:08d}"


# --- a real receiver -------------------------------------------------------------------------


@dataclass
class Received:
    event_id: str
    ean: str
    body: bytes
    headers: dict[str, str]
    behaviour: str
    #: every earlier event of the same EAN (in enqueue order) had been answered 2xx on arrival
    in_order: bool


@dataclass
class Receiver:
    """An HTTP server whose answer per request is chosen by ``script(event_id, nth_time)``."""

    url: str = ""
    script: Callable[[str, int], str] = lambda event_id, n: "ok"
    hang_s: float = 1.0
    slow_s: float = 0.0
    #: event ids in the order the test enqueued them, per EAN
    expected: dict[str, list[str]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    in_flight: collections.Counter[str] = field(default_factory=collections.Counter)
    max_in_flight_per_ean: int = 0

    def seen(self, event_id: str) -> int:
        return sum(1 for r in self.received if r.event_id == event_id)

    def acked_all(self, ids: Iterable[str]) -> bool:
        return set(ids) <= self.acked

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        event = json.loads(body)
        event_id, ean = event["event_id"], event["ean"]
        order = self.expected.get(ean, [])
        earlier = order[: order.index(event_id)] if event_id in order else []
        behaviour = self.script(event_id, self.seen(event_id) + 1)
        self.received.append(
            Received(
                event_id,
                ean,
                body,
                dict(request.headers),
                behaviour,
                in_order=set(earlier) <= self.acked,
            )
        )
        self.in_flight[ean] += 1
        self.max_in_flight_per_ean = max(self.max_in_flight_per_ean, self.in_flight[ean])
        try:
            if self.slow_s:
                await asyncio.sleep(self.slow_s)
            if behaviour == "fail":
                return web.Response(status=500, text="receiver is down")
            if behaviour == "hang":
                await asyncio.sleep(self.hang_s)  # beyond the sender's timeout
                return web.Response(status=204)
            self.acked.add(event_id)
            return web.Response(status=204)
        finally:
            self.in_flight[ean] -= 1


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield rec
    finally:
        await runner.cleanup()


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing(Ed25519PrivateKey.generate())


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# --- helpers --------------------------------------------------------------------------------


async def add_client(
    pool: asyncpg.Pool,
    url: str | None,
    purposes: list[str],
    *,
    revoked: bool = False,
) -> uuid.UUID:
    client_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO clients (name, token_hash, granularities, purposes, webhook_url, revoked_at)"
        " VALUES ($1, $2, '{P1D}', $3, $4, CASE WHEN $5 THEN now() END) RETURNING client_id",
        f"client-{uuid.uuid4().hex[:6]}",
        hash_token(generate_token()),
        purposes,
        url,
        revoked,
    )
    return client_id


async def notify(
    pool: asyncpg.Pool, ean: str, kind: str = outbox.KIND_CONSENT_ENDED, purpose: str = PURPOSE
) -> str:
    """One event, enqueued as consent_store does: inside the changing transaction."""
    async with pool.acquire() as conn, conn.transaction():
        if kind == outbox.KIND_LEVEL_CHANGED:
            payload = outbox.level_payload("monthly", "daily")
        else:
            payload = {
                "consent_id": uuid.uuid4(),
                "purpose": purpose,
                "end_reason": "revoked",
                "ended_at": await conn.fetchval("SELECT now()"),
            }
        event_id = await outbox.enqueue(conn, ean=ean, kind=kind, payload=payload)
    return str(event_id)


async def wait_until(check: Callable[[], Awaitable[bool] | bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


class Running:
    """A worker's loop as a task, cancelled on exit."""

    def __init__(self, worker: WebhookWorker) -> None:
        self.worker = worker
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WebhookWorker:
        self.task = asyncio.create_task(self.worker.run())
        return self.worker

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            if not self.task.cancelled():
                raise


def counter(outcome: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "meterpoort_webhook_deliveries_total", {"outcome": outcome}
    )
    assert value is not None
    return value


async def states(pool: asyncpg.Pool) -> dict[str, asyncpg.Record]:
    rows = await pool.fetch(
        "SELECT event_id::text AS id, state, attempts, last_status, last_error, delivered_at"
        " FROM webhook_deliveries"
    )
    return {r["id"]: r for r in rows}


async def settled(pool: asyncpg.Pool) -> bool:
    """No delivery is pending any more (every outcome is recorded)."""
    pending: int = await pool.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'"
    )
    return pending == 0


# --- tests ------------------------------------------------------------------------------------


async def test_enqueue_addresses_subscribed_clients_in_the_changing_transaction(
    pool: asyncpg.Pool,
) -> None:
    billing = await add_client(pool, "https://billing.example/hook", [PURPOSE])
    insights = await add_client(pool, "https://insights.example/hook", [OTHER_PURPOSE])
    await add_client(pool, None, [PURPOSE])  # reads, no webhook
    await add_client(pool, "https://old.example/hook", [PURPOSE], revoked=True)
    ean = make_ean(1)

    consent_event = await notify(pool, ean, outbox.KIND_CONSENT_GRANTED)
    level_event = await notify(pool, ean, outbox.KIND_LEVEL_CHANGED)
    rows = await pool.fetch(
        "SELECT event_id::text AS id, client_id, state, seq FROM webhook_deliveries"
        " ORDER BY seq, client_id"
    )
    addressed = {(r["id"], r["client_id"]) for r in rows}
    assert addressed == {
        (consent_event, billing),
        (level_event, billing),
        (level_event, insights),
    }
    assert {r["state"] for r in rows} == {"pending"}
    seqs = await pool.fetch("SELECT event_id::text AS id, seq FROM outbox_events ORDER BY seq")
    assert [r["id"] for r in seqs] == [consent_event, level_event]

    # a change that rolls back is never announced
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await outbox.enqueue(
            conn, ean=ean, kind=outbox.KIND_CONSENT_ENDED, payload={"purpose": PURPOSE}
        )
        await tx.rollback()
        with pytest.raises(RuntimeError, match="in the transaction"):
            await outbox.enqueue(
                conn, ean=ean, kind=outbox.KIND_CONSENT_ENDED, payload={"purpose": PURPOSE}
            )
        async with conn.transaction():
            with pytest.raises(ValueError, match="purpose"):
                await outbox.enqueue(
                    conn, ean=ean, kind=outbox.KIND_CONSENT_GRANTED, payload={"purpose": ""}
                )
            with pytest.raises(ValueError, match="unknown outbox event kind"):
                await outbox.enqueue(conn, ean=ean, kind="consent.paused", payload={})
    assert await pool.fetchval("SELECT count(*) FROM outbox_events") == 2


async def test_delivered_event_verifies_with_the_served_key_and_shows_in_metrics(
    gateway_settings: Settings, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    from gateway.api.app import create_app

    app = create_app(gateway_settings.model_copy(update={"webhook": FAST}))
    client_id = await add_client(pool, receiver.url, [PURPOSE])
    delivered_before = counter("delivered")
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as gateway:
        assert isinstance(app[WEBHOOK_WORKER_KEY], WebhookWorker)
        jwks = await (await gateway.get("/v1/keys")).json()
        ean = make_ean(2)
        event_id = await notify(pool, ean)
        await wait_until(lambda: receiver.acked_all([event_id]))

        got = receiver.received[0]
        headers = got.headers
        assert headers["Meterpoort-Event-Id"] == event_id
        assert headers["Content-Type"] == "application/json"
        timestamp = headers["Meterpoort-Timestamp"]
        assert abs(int(timestamp) - time.time()) < 60
        # what the recipient does with nothing but GET /v1/keys: pick the JWK by kid, check
        (jwk,) = [k for k in jwks["keys"] if k["kid"] == headers["Meterpoort-Key-Id"]]
        public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(jwk["x"] + "=="))
        scheme, _, value = headers["Meterpoort-Signature"].partition("=")
        assert scheme == "ed25519"
        signature = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        public.verify(signature, timestamp.encode() + b"." + got.body)
        with pytest.raises(InvalidSignature):
            public.verify(signature, timestamp.encode() + b"." + got.body.replace(b"}", b" }"))
        verify(
            public,
            timestamp=timestamp,
            signature=headers["Meterpoort-Signature"],
            body=got.body,
            now=time.time(),
        )
        event = json.loads(got.body)
        assert event["event_id"] == event_id
        assert event["kind"] == "consent.ended"
        assert event["ean"] == ean
        assert event["occurred_at"].endswith("Z")
        assert event["data"]["purpose"] == PURPOSE
        assert event["data"]["end_reason"] == "revoked"

        row = (await states(pool))[event_id]
        await wait_until(lambda: counter("delivered") >= delivered_before + 1)

        async def pending_gauge_is_zero() -> bool:
            text = await (await gateway.get("/metrics")).text()
            return "\nmeterpoort_webhook_pending 0.0\n" in text

        await wait_until(pending_gauge_is_zero)
        text = await (await gateway.get("/metrics")).text()
        assert 'meterpoort_webhook_deliveries_total{outcome="delivered"}' in text
        assert "meterpoort_webhook_delivery_seconds_count" in text
    assert (
        await pool.fetchval(
            "SELECT client_id FROM webhook_deliveries WHERE event_id = $1", uuid.UUID(event_id)
        )
        == client_id
    )
    row = (await states(pool))[event_id]
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 1, 204)
    assert row["delivered_at"] is not None


async def test_failures_and_timeouts_are_retried_in_order_per_ean_with_the_same_event_id(
    pool: asyncpg.Pool, receiver: Receiver, ring: KeyRing, http: aiohttp.ClientSession
) -> None:
    await add_client(pool, receiver.url, [PURPOSE])
    a, b = make_ean(3), make_ean(4)
    a_events = [await notify(pool, a) for _ in range(3)]
    b_events = [await notify(pool, b) for _ in range(2)]
    receiver.expected = {a: a_events, b: b_events}
    first = a_events[0]

    # A's first event: 500, then no answer within the timeout, then accepted; A's later events
    # must wait for it. B's first event fails once; B is not held up by A.
    def script(event_id: str, nth: int) -> str:
        if event_id == first:
            return {1: "fail", 2: "hang"}.get(nth, "ok")
        if event_id == b_events[0] and nth == 1:
            return "fail"
        return "ok"

    receiver.script = script
    receiver.hang_s = FAST.timeout_s + 0.5
    retries_before = counter("retry")
    worker = WebhookWorker(pool, ring, FAST, http)
    async with Running(worker):
        await wait_until(lambda: receiver.acked_all(a_events + b_events))
        await wait_until(lambda: settled(pool))

    assert [r.in_order for r in receiver.received] == [True] * len(receiver.received)
    assert receiver.seen(first) == 3
    assert [r.behaviour for r in receiver.received if r.event_id == first] == [
        "fail",
        "hang",
        "ok",
    ]
    # duplicates carry the same id and the same body: a recipient can dedupe on the id
    bodies = {r.body for r in receiver.received if r.event_id == first}
    assert len(bodies) == 1
    assert {r.headers["Meterpoort-Event-Id"] for r in receiver.received if r.event_id == first} == {
        first
    }
    attempts = [
        r.headers["Meterpoort-Delivery-Attempt"] for r in receiver.received if r.event_id == first
    ]
    assert attempts == ["1", "2", "3"]
    # the first answer accepted for each event comes in enqueue order per EAN
    for ean, order in receiver.expected.items():
        accepted = [r.event_id for r in receiver.received if r.ean == ean and r.behaviour == "ok"]
        assert list(dict.fromkeys(accepted)) == order
    # B was delivered while A's first event was still being retried
    b_done = max(i for i, r in enumerate(receiver.received) if r.event_id == b_events[-1])
    a_ok = next(
        i for i, r in enumerate(receiver.received) if r.event_id == first and r.behaviour == "ok"
    )
    assert b_done < a_ok

    rows = await states(pool)
    assert rows[first]["state"] == "delivered"
    assert rows[first]["attempts"] == 3
    assert rows[b_events[0]]["attempts"] == 2
    assert {rows[e]["attempts"] for e in a_events[1:] + b_events[1:]} == {1}
    assert worker.outcomes["retry"] == 3
    assert worker.outcomes["delivered"] == 5
    assert counter("retry") >= retries_before + 3


async def test_a_delivery_is_given_up_after_max_attempts_and_the_next_event_goes_out(
    pool: asyncpg.Pool, receiver: Receiver, ring: KeyRing, http: aiohttp.ClientSession
) -> None:
    await add_client(pool, receiver.url, [PURPOSE])
    ean = make_ean(5)
    doomed, later = await notify(pool, ean), await notify(pool, ean)
    receiver.script = lambda event_id, nth: "fail" if event_id == doomed else "ok"
    failed_before = counter("failed")
    config = FAST.model_copy(update={"max_attempts": 3})
    worker = WebhookWorker(pool, ring, config, http)
    async with Running(worker):
        await wait_until(lambda: receiver.acked_all([later]))
        await wait_until(lambda: settled(pool))
    rows = await states(pool)
    assert (rows[doomed]["state"], rows[doomed]["attempts"]) == ("failed", 3)
    assert (rows[doomed]["last_status"], rows[doomed]["last_error"]) == (500, "HTTP 500")
    assert rows[later]["state"] == "delivered"
    assert receiver.seen(doomed) == 3
    assert worker.outcomes["failed"] == 1 and worker.outcomes["retry"] == 2
    assert counter("failed") == failed_before + 1


async def test_a_delivery_older_than_the_give_up_age_fails_at_its_next_error(
    pool: asyncpg.Pool, ring: KeyRing, http: aiohttp.ClientSession
) -> None:
    # nothing listens on this port: connection refused
    with_socket = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = with_socket.sockets[0].getsockname()[1]
    with_socket.close()
    await with_socket.wait_closed()
    await add_client(pool, f"http://127.0.0.1:{port}/gone", [PURPOSE])
    event_id = await notify(pool, make_ean(6))
    worker = WebhookWorker(pool, ring, FAST.model_copy(update={"give_up_after_s": 0.01}), http)
    assert await worker.run_once() == 1
    row = (await states(pool))[event_id]
    assert (row["state"], row["attempts"], row["last_status"]) == ("failed", 1, None)
    assert "ClientConnectorError" in row["last_error"]
    assert await worker.run_once() == 0


async def test_deliveries_of_a_revoked_client_are_dropped(
    pool: asyncpg.Pool, receiver: Receiver, ring: KeyRing, http: aiohttp.ClientSession
) -> None:
    client_id = await add_client(pool, receiver.url, [PURPOSE])
    event_id = await notify(pool, make_ean(7))
    await pool.execute("UPDATE clients SET revoked_at = now() WHERE client_id = $1", client_id)
    worker = WebhookWorker(pool, ring, FAST, http)
    assert await worker.run_once() == 1
    row = (await states(pool))[event_id]
    assert (row["state"], row["last_error"]) == ("failed", "client revoked")
    assert worker.outcomes == {"dropped": 1}
    # a client that dropped its webhook URL, and one that is gone altogether
    no_url = await add_client(pool, receiver.url, [PURPOSE])
    gone = await add_client(pool, receiver.url, [PURPOSE])
    second = await notify(pool, make_ean(7))
    await pool.execute("UPDATE clients SET webhook_url = NULL WHERE client_id = $1", no_url)
    await pool.execute("DELETE FROM clients WHERE client_id = $1", gone)
    assert await worker.run_once() == 2
    errors = await pool.fetch(
        "SELECT last_error FROM webhook_deliveries WHERE event_id = $1 ORDER BY last_error",
        uuid.UUID(second),
    )
    assert [r["last_error"] for r in errors] == ["client has no webhook URL", "client not found"]
    assert worker.outcomes == {"dropped": 3}
    assert receiver.received == []


async def test_two_workers_share_the_work_without_sending_anything_twice(
    pool: asyncpg.Pool,
    database_url: str,
    gateway_settings: Settings,
    receiver: Receiver,
    ring: KeyRing,
    http: aiohttp.ClientSession,
) -> None:
    await add_client(pool, receiver.url, [PURPOSE])
    expected: dict[str, list[str]] = {}
    for n in range(12):
        ean = make_ean(100 + n)
        expected[ean] = [await notify(pool, ean) for _ in range(3)]
    receiver.expected = expected
    receiver.slow_s = 0.05  # keeps attempts in flight while the other worker polls
    everything = [e for events in expected.values() for e in events]
    config = FAST.model_copy(update={"batch_size": 4})
    # a second pool stands for a second gateway process
    other_pool = await db.create_pool(database_url, gateway_settings)
    try:
        one = WebhookWorker(pool, ring, config, http)
        two = WebhookWorker(other_pool, ring, config, http)
        async with Running(one), Running(two):
            await wait_until(lambda: receiver.acked_all(everything), within=30)
            # the outcome is recorded just after the answer
            await wait_until(
                lambda: one.outcomes["delivered"] + two.outcomes["delivered"] == len(everything)
            )
    finally:
        await other_pool.close()
    counts = collections.Counter(r.event_id for r in receiver.received)
    assert set(counts) == set(everything)
    assert set(counts.values()) == {1}  # every answer was 2xx: exactly once
    assert receiver.max_in_flight_per_ean == 1
    assert all(r.in_order for r in receiver.received)
    assert one.outcomes["delivered"] > 0 and two.outcomes["delivered"] > 0
    assert one.outcomes["delivered"] + two.outcomes["delivered"] == len(everything)


async def test_an_outcome_is_not_recorded_by_a_worker_whose_claim_was_taken_over(
    pool: asyncpg.Pool, receiver: Receiver, ring: KeyRing, http: aiohttp.ClientSession
) -> None:
    await add_client(pool, receiver.url, [PURPOSE])
    event_id = await notify(pool, make_ean(8))
    receiver.slow_s = 0.3
    worker = WebhookWorker(pool, ring, FAST, http)
    attempt = asyncio.create_task(worker.run_once())
    await wait_until(lambda: receiver.seen(event_id) == 1)
    # meanwhile the lease ran out and another worker claimed the delivery (attempt 2)
    await pool.execute(
        "UPDATE webhook_deliveries SET attempts = attempts + 1 WHERE event_id = $1",
        uuid.UUID(event_id),
    )
    assert await attempt == 1
    row = (await states(pool))[event_id]
    assert (row["state"], row["attempts"]) == ("pending", 2)


async def test_pending_gauges_follow_the_database(
    pool: asyncpg.Pool, receiver: Receiver, ring: KeyRing, http: aiohttp.ClientSession
) -> None:
    await add_client(pool, receiver.url, [PURPOSE])
    await add_client(pool, receiver.url, [PURPOSE, OTHER_PURPOSE])
    events = [await notify(pool, make_ean(9)), await notify(pool, make_ean(10))]
    worker = WebhookWorker(pool, ring, FAST, http)
    await worker.refresh_gauges()
    assert metrics.REGISTRY.get_sample_value("meterpoort_webhook_pending") == 4
    oldest = metrics.REGISTRY.get_sample_value("meterpoort_webhook_oldest_pending_seconds")
    assert oldest is not None and oldest >= 0
    await asyncio.sleep(0.05)
    await worker.refresh_gauges()
    older = metrics.REGISTRY.get_sample_value("meterpoort_webhook_oldest_pending_seconds")
    assert older is not None and older > oldest
    while await worker.run_once():
        pass
    assert receiver.acked_all(events)
    await worker.refresh_gauges()
    assert metrics.REGISTRY.get_sample_value("meterpoort_webhook_pending") == 0
    assert metrics.REGISTRY.get_sample_value("meterpoort_webhook_oldest_pending_seconds") == 0


async def test_expiries_are_announced_once_by_the_sweep(
    pool: asyncpg.Pool, receiver: Receiver, ring: KeyRing, http: aiohttp.ClientSession
) -> None:
    await add_client(pool, receiver.url, [PURPOSE])
    ean = make_ean(11)
    async with pool.acquire() as conn:
        await registry.add_connection(
            conn,
            # this file's EANs are not check-digit valid; the registry's SQL does not care
            registry.ConnectionIn.model_construct(
                ean=ean,
                commodity="electricity",
                meter_id="E11",
                customer_id="cust-1",
                contract_start=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
            ),
        )
    ids: dict[str, uuid.UUID] = {}
    # expired a minute ago, expired 30 days ago (past the look-back), expires tomorrow
    for name, expires in (
        ("recent", dt.timedelta(minutes=-1)),
        ("ancient", dt.timedelta(days=-30)),
        ("open", dt.timedelta(days=1)),
    ):
        ids[name] = uuid.uuid4()
        await pool.execute(
            "INSERT INTO consents (ean, consent_id, customer_id, purpose, notice_version,"
            " channel, granted_at, expires_at, contract_id)"
            " VALUES ($1, $2, 'cust-1', $3, 'v1', 'api', now() - interval '60 days',"
            " now() + $4, (SELECT contract_id FROM contracts WHERE ean = $1))",
            ean,
            ids[name],
            PURPOSE,
            expires,
        )
    # one already recorded as expired by the retention job: still announced, once
    ids["recorded"] = uuid.uuid4()
    await pool.execute(
        "INSERT INTO consents (ean, consent_id, customer_id, purpose, notice_version,"
        " channel, granted_at, expires_at, ended_at, end_reason, contract_id)"
        " VALUES ($1, $2, 'cust-1', $3, 'v1', 'api', now() - interval '60 days',"
        " now() - interval '2 hours', now() - interval '2 hours', 'expired',"
        " (SELECT contract_id FROM contracts WHERE ean = $1))",
        ean,
        ids["recorded"],
        PURPOSE,
    )
    config = FAST.model_copy(update={"expiry_lookback_s": 7 * 86400.0})
    worker = WebhookWorker(pool, ring, config, http)
    other = WebhookWorker(pool, ring, config, http)
    swept = await asyncio.gather(worker.sweep_expiries(), other.sweep_expiries())
    assert sorted(swept) == [0, 2]  # one process sweeps at a time
    assert await worker.sweep_expiries() == 0  # announced once
    while await worker.run_once():
        pass
    events = [json.loads(r.body) for r in receiver.received]
    # in expiry order (the order of their seqs for the EAN)
    assert [e["data"]["consent_id"] for e in events] == [str(ids["recorded"]), str(ids["recent"])]
    for event, name in zip(events, ("recorded", "recent"), strict=True):
        assert event["kind"] == "consent.ended"
        assert event["data"]["end_reason"] == "expired"
        expires_at = await pool.fetchval(
            "SELECT expires_at FROM consents WHERE consent_id = $1", ids[name]
        )
        assert event["occurred_at"] == event["data"]["ended_at"]
        assert event["occurred_at"] == rfc3339(expires_at)
