"""SPEC §6: consents granted and revoked every few milliseconds while two gateway processes run
batched ingest at full rate → zero interval readings at or after any consent's end, and the
propagation latency of each change to the other process (printed, p50/p99).

Two real ``python -m gateway serve`` processes on the test's database. Devices push 100-telegram
bodies (10 s of telegram time between a meter's telegrams) for meters with a standing interval
consent; meanwhile one customer grants and revokes two consents (two purposes) on her connection
through both processes' ``/v1/me`` API, and her meter pushes telegrams measured around now to both
processes. Each process's consent index is stale for a moment after a change made through the
other; the database has to refuse (or the revocation delete) whatever a stale index lets through.

Propagation: each process publishes the time of the newest consent grant or end its index has
loaded and when its latest reload was applied (``meterpoort_consent_index_*_timestamp_seconds``).
A change recorded at ``T`` (its ``granted_at``/``ended_at``, the instant the consent starts or
ends) has reached the other process once that process shows a newest change at or after ``T``;
the latency is then its applied time minus ``T``. Only the customer's one EAN changes during the
run, so a reload that loaded a change at or after ``T`` also loaded the one at ``T``. Sampling
/metrics every few milliseconds bounds the error of each figure by the sampling interval.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from gateway.cli.token import mint_dev_token
from gateway.tokens import generate_token, hash_token
from p1_reader.simulate import SimulatedMeter, make_meters
from tests.support import free_port, leak_audit, make_ean
from tests.support.telegram_builder import build_telegram

pytestmark = pytest.mark.slow

UTC = dt.UTC
REPO = Path(__file__).resolve().parents[2]
ADMIN = "race-admin-token-0123456789abcdef"
DEVICES = 4
METERS_PER_DEVICE = 20
TELEGRAMS_PER_METER = 5  # 20 × 5 = 100 telegrams per request
LOAD_S = 20.0
RACE_METER = "RACE0001"
PURPOSES = ("dynamic-tariff-billing", "energy-insights")
METRIC_POLL_S = 0.01


@dataclass
class Gateway:
    """One ``serve`` process and what it printed."""

    process: asyncio.subprocess.Process
    base: str
    err: list[str] = field(default_factory=list)
    pump: asyncio.Task[None] | None = None
    #: (newest change loaded, applied at) of each distinct index reload seen on /metrics
    reloads: list[tuple[float, float]] = field(default_factory=list)


async def start_gateway(env: dict[str, str], http: aiohttp.ClientSession) -> Gateway:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--port",
        str(port),
        env=env,
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    gw = Gateway(process, f"http://127.0.0.1:{port}")
    assert process.stderr is not None
    gw.pump = asyncio.create_task(_pump(process.stderr, gw.err))
    for _ in range(600):
        assert process.returncode is None, "".join(gw.err)
        try:
            async with http.get(f"{gw.base}/readyz") as resp:
                if resp.status == 200:
                    return gw
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("gateway not ready within 30 s:\n" + "".join(gw.err))


async def _pump(stream: asyncio.StreamReader, into: list[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode("utf-8", errors="replace"))


async def stop_gateway(gw: Gateway) -> None:
    if gw.process.returncode is None:
        gw.process.terminate()
    async with asyncio.timeout(30):
        await gw.process.wait()
        if gw.pump is not None:
            await gw.pump
    leak_audit.add_output(f"serve {gw.base}", "".join(gw.err))


async def seed(pool: asyncpg.Pool) -> tuple[list[tuple[str, list[SimulatedMeter]]], str]:
    """Meters with a standing interval consent on devices of 20, and the customer's connection
    (no consent yet) on a device of its own: (device token, meters) pairs and her device token."""
    start = dt.datetime.now(UTC) - dt.timedelta(days=10)
    granted = start + dt.timedelta(days=1)
    meters = make_meters(DEVICES * METERS_PER_DEVICE, gas_fraction=0.0)
    connections = [(make_ean(500 + m.index), m.meter_id, f"load-{m.index}") for m in meters]
    connections.append((make_ean(499), RACE_METER, "racer"))
    async with pool.acquire() as conn, conn.transaction():
        await conn.copy_records_to_table(
            "connections",
            records=[(e, "electricity") for e, _, _ in connections],
            columns=["ean", "commodity"],
        )
        await conn.copy_records_to_table(
            "contracts",
            records=[(e, who, start) for e, _, who in connections],
            columns=["ean", "customer_id", "contract_start"],
        )
        await conn.copy_records_to_table(
            "meter_installations",
            records=[(e, "electricity", m, start) for e, m, _ in connections],
            columns=["ean", "commodity", "meter_id", "installed_from"],
        )
        await conn.execute(
            "INSERT INTO consents (ean, consent_id, customer_id, purpose, notice_version,"
            " channel, granted_at, contract_id)"
            " SELECT ean, gen_random_uuid(), customer_id, 'dynamic-tariff-billing', 'v1', 'api',"
            " $1, contract_id FROM contracts WHERE customer_id LIKE 'load-%'",
            granted,
        )
        devices: list[tuple[str, list[SimulatedMeter]]] = []
        for d in range(DEVICES):
            group = meters[d * METERS_PER_DEVICE : (d + 1) * METERS_PER_DEVICE]
            devices.append((generate_token(), group))
        race_token = generate_token()
        await conn.executemany(
            "INSERT INTO devices (token_hash, meter_ids) VALUES ($1, $2)",
            [(hash_token(t), [m.meter_id for m in g]) for t, g in devices]
            + [(hash_token(race_token), [RACE_METER])],
        )
    return devices, race_token


@pytest.fixture
async def gateways(
    database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[list[Gateway], aiohttp.ClientSession]]:
    data_dir = tmp_path / "var"
    # the dev key exists before either process looks for it (both trust the same one)
    mint_dev_token(data_dir, "warm-up", "meterpoort", dt.timedelta(minutes=1))
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "METERPOORT_DATA_DIR": str(data_dir),
        "METERPOORT_ADMIN_TOKEN": ADMIN,
        "METERPOORT_DEV_MODE": "1",
        "METERPOORT_RETENTION_ENABLED": "false",
        "METERPOORT_SHUTDOWN_DRAIN_S": "0",  # no load balancer to wait for
        "METERPOORT_WEBHOOK_ENABLED": "false",
        "METERPOORT_MAX_BODY_BYTES": str(4 * 1024 * 1024),
        "PYTHONPATH": str(REPO),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    leak_audit.add_secret(ADMIN)
    procs: list[Gateway] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        try:
            for _ in range(2):  # one after the other: both migrate at start-up
                procs.append(await start_gateway(env, http))
            yield procs, http
        finally:
            for gw in procs:
                await stop_gateway(gw)


async def until_known(
    procs: list[Gateway], http: aiohttp.ClientSession, devices: list[tuple[str, str]]
) -> None:
    """Wait until both processes have loaded the seeded meters (they learn of them by NOTIFY):
    a telegram of each (device token, meter id) is accepted by each process."""
    t = dt.datetime.now(UTC) - dt.timedelta(hours=2)
    for gw in procs:
        for token, meter_id in devices:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
            for _ in range(500):
                async with http.post(
                    f"{gw.base}/v1/telegrams",
                    data=build_telegram(meter_id, t),
                    headers=headers,
                ) as resp:
                    if resp.status == 200:
                        break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError(f"{gw.base} did not learn of the seeded meters in 5 s")


async def poll_reloads(gw: Gateway, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
    names = (
        "meterpoort_consent_index_newest_change_timestamp_seconds ",
        "meterpoort_consent_index_applied_timestamp_seconds ",
    )
    while not stop.is_set():
        async with http.get(f"{gw.base}/metrics") as resp:
            text = await resp.text()
        values = {
            name: float(line[len(name) :])
            for line in text.splitlines()
            for name in names
            if line.startswith(name)
        }
        sample = (values[names[0]], values[names[1]])
        if not gw.reloads or gw.reloads[-1] != sample:
            gw.reloads.append(sample)
        await asyncio.sleep(METRIC_POLL_S)


async def load(
    gw: Gateway,
    http: aiohttp.ClientSession,
    token: str,
    meters: list[SimulatedMeter],
    deadline: float,
    t0: int,
) -> list[float]:
    """Push 100-telegram bodies until the deadline; request latencies."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
    latencies: list[float] = []
    step = 0
    while time.monotonic() < deadline:
        body = b"".join(
            m.telegram_at(t0 + m.phase + 10 * (step + k))
            for k in range(TELEGRAMS_PER_METER)
            for m in meters
        )
        step += TELEGRAMS_PER_METER
        started = time.perf_counter()
        async with http.post(f"{gw.base}/v1/telegrams", data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["rejected"] == []
        latencies.append(time.perf_counter() - started)
    return latencies


def recorded(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def churn(
    procs: list[Gateway],
    http: aiohttp.ClientSession,
    who: dict[str, str],
    ean: str,
    purpose: str,
    deadline: float,
    changes: list[tuple[float, float, int]],
) -> None:
    """Grant and revoke ``purpose`` back to back, each change through the next process;
    records (the change's recorded time, its answer's arrival, the OTHER process) per change."""
    turn = itertools.count()
    while time.monotonic() < deadline:
        via = next(turn) % 2
        async with http.post(
            f"{procs[via].base}/v1/me/consents",
            json={"ean": ean, "purpose": purpose, "notice_version": "v1"},
            headers=who,
        ) as resp:
            assert resp.status == 201, await resp.text()
            consent = (await resp.json())["consent"]
        changes.append((recorded(consent["granted_at"]), time.time(), 1 - via))
        via = next(turn) % 2
        async with http.post(
            f"{procs[via].base}/v1/me/consents/{consent['consent_id']}/revoke", headers=who
        ) as resp:
            assert resp.status == 200, await resp.text()
            ended = (await resp.json())["consent"]
        changes.append((recorded(ended["ended_at"]), time.time(), 1 - via))


async def race_pushes(
    gw: Gateway, http: aiohttp.ClientSession, token: str, until: asyncio.Event, seed: int
) -> int:
    """The customer's meter, one telegram per request to one process until told to stop: every
    other one measured in the last seconds, the others ahead of now (a meter clock running fast)
    and each earlier than the one before, so that it improves its 15-minute period (the earliest
    reading of a period is kept) and is written, not skipped as a reading that cannot improve."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
    rng = random.Random(seed)
    pushed = 0
    ahead = 0
    while not until.is_set():
        now = int(time.time())
        if pushed % 2:
            t = now - rng.randrange(3)
        else:
            ahead = ahead - 1 if ahead > 1 else 290
            t = now + ahead
        body = build_telegram(RACE_METER, dt.datetime.fromtimestamp(t, UTC), import_wh=(t, t))
        async with http.post(f"{gw.base}/v1/telegrams", data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        pushed += 1
    return pushed


#: interval readings outside every consent window of their EAN: [granted_at, end)
OUTSIDE = (
    "SELECT count(*) FROM readings_e_pt15m r WHERE NOT EXISTS (SELECT 1 FROM consents c"
    " WHERE c.ean::int8 = r.ean AND c.data_class = 'interval'"
    " AND c.granted_at <= r.measured_at"
    " AND r.measured_at < coalesce(least(c.ended_at, c.expires_at), 'infinity'))"
)


async def watch(pool: asyncpg.Pool, ean: str, until: asyncio.Event) -> int:
    """The most readings of ``ean`` outside every consent window at any moment of the run.

    Every committed state must have none (a revocation deletes what its end excludes in its
    own transaction), not only the last one: a reading measured ahead of now that a stale
    process stores after an end is covered again by the next grant, so only a look in between
    sees it."""
    worst = 0
    while not until.is_set():
        worst = max(worst, await pool.fetchval(OUTSIDE + " AND r.ean = $1", int(ean)))
        await asyncio.sleep(0.002)
    return worst


def propagation(changes: list[tuple[float, float, int]], procs: list[Gateway]) -> list[float]:
    """Per change: seconds from its recorded time until the other process applied it."""
    out = []
    for at, _answered, other in changes:
        applied = next((a for newest, a in procs[other].reloads if newest >= at), None)
        assert applied is not None, f"a change recorded at {at} never reached process {other}"
        out.append(applied - at)
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def test_no_interval_reading_after_an_end_with_two_processes_racing(
    gateways: tuple[list[Gateway], aiohttp.ClientSession], pool: asyncpg.Pool, tmp_path: Path
) -> None:
    procs, http = gateways
    devices, race_token = await seed(pool)
    await until_known(
        procs, http, [(t, m[0].meter_id) for t, m in devices] + [(race_token, RACE_METER)]
    )
    ean = make_ean(499)
    jwt = mint_dev_token(tmp_path / "var", "racer", "meterpoort", dt.timedelta(minutes=10))
    who = {"Authorization": f"Bearer {jwt}"}
    stop = asyncio.Event()
    pollers = [asyncio.create_task(poll_reloads(gw, http, stop)) for gw in procs]
    t0 = int(time.time()) - 3 * 86400  # far enough back for the whole run at full rate
    changes: list[tuple[float, float, int]] = []
    deadline = time.monotonic() + LOAD_S
    started = time.perf_counter()
    loads = [
        load(procs[i % 2], http, token, meters, deadline, t0)
        for i, (token, meters) in enumerate(devices)
    ]
    churners = [churn(procs, http, who, ean, p, deadline, changes) for p in PURPOSES]
    # the racing meter goes on for a second after the last revocations: the moment when a
    # stale index would still store interval readings that no later grant covers
    racing_done = asyncio.Event()
    racers = [
        asyncio.create_task(race_pushes(gw, http, race_token, racing_done, seed))
        for seed, gw in enumerate(procs)
    ]
    watcher = asyncio.create_task(watch(pool, ean, stop))
    try:
        latencies, _ = await asyncio.gather(asyncio.gather(*loads), asyncio.gather(*churners))
        elapsed = time.perf_counter() - started
        await asyncio.sleep(1.0)
    finally:
        racing_done.set()
        raced = await asyncio.gather(*racers, return_exceptions=True)
        await asyncio.sleep(1.0)  # the last changes reach the other process
        stop.set()
        polled = await asyncio.gather(*pollers, watcher, return_exceptions=True)
    for result in (*raced, *polled):
        if isinstance(result, BaseException):
            raise result
    assert polled[-1] == 0, f"{polled[-1]} interval readings outside every consent at one moment"
    pushed = sum(r for r in raced if isinstance(r, int))

    # in the end, too: no interval reading of any EAN outside a consent window
    outside = await pool.fetchval(OUTSIDE)
    assert outside == 0
    # every consent of the customer has ended: nothing of hers measured at or after an end
    last_end = await pool.fetchval("SELECT max(ended_at) FROM consents WHERE customer_id = 'racer'")
    assert (
        await pool.fetchval("SELECT count(*) FROM consents WHERE customer_id = 'racer'")
        == len(changes) // 2
    )
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM consents WHERE customer_id = 'racer' AND ended_at IS NULL"
        )
        == 0
    )
    after = await pool.fetchval(
        "SELECT count(*) FROM readings_e_pt15m WHERE ean = $1 AND measured_at >= $2",
        int(ean),
        last_end,
    )
    assert after == 0

    telegrams = sum(len(x) for x in latencies) * METERS_PER_DEVICE * TELEGRAMS_PER_METER
    request_latencies = [x for batch in latencies for x in batch]
    load_rows = await pool.fetchval(
        "SELECT count(*) FROM readings_e_pt15m WHERE ean <> $1", int(ean)
    )
    assert load_rows > 0, "the load stored no interval readings: not a full-ingest race"
    assert len(changes) >= 20, f"only {len(changes)} consent changes in {LOAD_S} s"
    delays = propagation(changes, procs)
    answers = [answered - at for at, answered, _ in changes]
    after_answer = [d - a for d, a in zip(delays, answers, strict=True)]
    print(
        f"\nconsent race, 2 serve processes, {elapsed:.1f} s: {telegrams:,} load telegrams"
        f" ({telegrams / elapsed:,.0f}/s, request p50 {pct(request_latencies, 0.5) * 1000:.0f} ms,"
        f" p99 {pct(request_latencies, 0.99) * 1000:.0f} ms), {load_rows} interval rows;"
        f" {len(changes)} consent changes ({len(changes) / elapsed:.0f}/s), {pushed} telegrams"
        f" of the racing meter; interval rows outside a consent: {outside}\n"
        f"propagation to the other process: p50 {pct(delays, 0.5) * 1000:.1f} ms,"
        f" p99 {pct(delays, 0.99) * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms"
        f" (sampled every {METRIC_POLL_S * 1000:.0f} ms); the change's own answer came"
        f" p50 {pct(answers, 0.5) * 1000:.1f} ms, p99 {pct(answers, 0.99) * 1000:.1f} ms"
        f" after its recorded time, so the other process had it p50"
        f" {pct(after_answer, 0.5) * 1000:.1f} ms, p99 {pct(after_answer, 0.99) * 1000:.1f} ms"
        f" after the customer's answer (negative: before)"
    )
    for gw in procs:
        assert "Traceback" not in "".join(gw.err)
