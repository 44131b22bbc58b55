"""The consent index catches up from the change log (migration 0013) instead of reloading
everything, and the result equals a full build (issue 14).

A seeded random sequence of changes (connections added, grants, revokes, level changes, contract
moves, meter exchanges, device rebinding, deletions) is made with SQL while a maintainer runs
without LISTEN and without a timer; it catches up now and then, some changes sit in a
transaction that is still open across a catch-up and commits after it (a lower transaction id
committed after higher ones: what a sequence watermark would skip), and after every catch-up the
index must answer exactly as one freshly loaded from the database does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from consent.levels import Commodity, Granularity
from gateway.ingest.consent_index import (
    EVERYTHING,
    FULL_RELOAD_THRESHOLD,
    ConsentIndex,
    IndexMaintainer,
    load_all,
    prune_change_log,
)
from tests.support import make_ean
from tests.support.index_view import differences, index_view

UTC = dt.UTC
NOW = dt.datetime.now(UTC).replace(microsecond=0)
T0 = NOW - dt.timedelta(days=60)
METERS = [f"CU{n:03d}" for n in range(14)]
EANS = [make_ean(700 + n) for n in range(9)]
#: every day of the changes' span and the hours between: where routes start and end
PROBES = [T0 + dt.timedelta(hours=12 * h) for h in range(-2, 2 * 130)]
Change = Callable[[asyncpg.Connection, random.Random], Awaitable[None]]


def day(rng: random.Random) -> dt.datetime:
    return T0 + dt.timedelta(days=rng.randrange(0, 120))


async def add_connection(
    conn: asyncpg.Connection, rng: random.Random, ean: str | None = None, meter: str | None = None
) -> None:
    ean = ean or rng.choice(EANS)
    await conn.execute(
        "INSERT INTO connections (ean, commodity) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        ean,
        rng.choice(("electricity", "gas")),
    )
    start = day(rng)
    await conn.execute(
        "INSERT INTO contracts (ean, customer_id, contract_start, level) VALUES ($1, $2, $3, $4)",
        ean,
        f"cust-{rng.randrange(5)}",
        start,
        rng.choice(("none", "monthly", "daily")),
    )
    await conn.execute(
        "INSERT INTO meter_installations (ean, commodity, meter_id, installed_from)"
        " SELECT $1, commodity, $2, $3 FROM connections WHERE ean = $1",
        ean,
        meter or rng.choice(METERS),
        start,
    )


async def a_contract(conn: asyncpg.Connection, rng: random.Random) -> asyncpg.Record | None:
    rows = await conn.fetch("SELECT * FROM contracts ORDER BY ean, contract_start")
    return rng.choice(rows) if rows else None


async def grant(conn: asyncpg.Connection, rng: random.Random) -> None:
    k = await a_contract(conn, rng)
    if k is None:
        return
    granted = k["contract_start"] + dt.timedelta(days=rng.randrange(0, 30))
    expires = granted + dt.timedelta(days=rng.choice((5, 400))) if rng.random() < 0.4 else None
    await conn.execute(
        "INSERT INTO consents (ean, consent_id, contract_id, customer_id, purpose,"
        " notice_version, channel, granted_at, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, 'v1', 'api', $6, $7)",
        k["ean"],
        uuid.uuid4(),
        k["contract_id"],
        k["customer_id"],
        rng.choice(("dynamic-tariff-billing", "energy-insights")),
        granted,
        expires,
    )


async def revoke(conn: asyncpg.Connection, rng: random.Random) -> None:
    rows = await conn.fetch(
        "SELECT ean, consent_id, granted_at FROM consents WHERE ended_at IS NULL"
    )
    if rows:
        c = rng.choice(rows)
        await conn.execute(
            "UPDATE consents SET ended_at = $3, end_reason = 'revoked'"
            " WHERE ean = $1 AND consent_id = $2",
            c["ean"],
            c["consent_id"],
            c["granted_at"] + dt.timedelta(days=rng.randrange(1, 90)),
        )


async def set_level(conn: asyncpg.Connection, rng: random.Random) -> None:
    k = await a_contract(conn, rng)
    if k is not None:
        await conn.execute(
            "UPDATE contracts SET level = $2 WHERE contract_id = $1",
            k["contract_id"],
            rng.choice(("none", "monthly", "daily")),
        )


async def move(conn: asyncpg.Connection, rng: random.Random) -> None:
    """The open contract of an EAN ends (move-out) and the next tenant's starts then."""
    rows = await conn.fetch("SELECT * FROM contracts WHERE contract_end IS NULL")
    if not rows:
        return
    k = rng.choice(rows)
    at = k["contract_start"] + dt.timedelta(days=rng.randrange(1, 40))
    await conn.execute(
        "UPDATE contracts SET contract_end = $2, end_reason = 'move-out' WHERE contract_id = $1",
        k["contract_id"],
        at,
    )
    await conn.execute(
        "UPDATE consents SET ended_at = greatest($2, granted_at + interval '1 second'),"
        " end_reason = 'move-out' WHERE contract_id = $1 AND ended_at IS NULL",
        k["contract_id"],
        at,
    )
    if rng.random() < 0.7:
        await conn.execute(
            "INSERT INTO contracts (ean, customer_id, contract_start) VALUES ($1, $2, $3)",
            k["ean"],
            f"cust-{rng.randrange(5)}",
            at + dt.timedelta(days=rng.choice((0, 0, 3))),
        )


async def exchange_meter(conn: asyncpg.Connection, rng: random.Random) -> None:
    rows = await conn.fetch("SELECT * FROM meter_installations WHERE installed_until IS NULL")
    if not rows:
        return
    i = rng.choice(rows)
    at = i["installed_from"] + dt.timedelta(days=rng.randrange(1, 40))
    await conn.execute(
        "UPDATE meter_installations SET installed_until = $2 WHERE installation_id = $1",
        i["installation_id"],
        at,
    )
    await conn.execute(
        "INSERT INTO meter_installations (ean, commodity, meter_id, installed_from)"
        " VALUES ($1, $2, $3, $4)",
        i["ean"],
        i["commodity"],
        rng.choice(METERS),
        at,
    )


async def rebind_device(conn: asyncpg.Connection, rng: random.Random) -> None:
    meters = rng.sample(METERS, rng.randrange(1, 4))
    device = await conn.fetchval("SELECT device_id FROM devices ORDER BY random() LIMIT 1")
    if device is None or rng.random() < 0.3:
        await conn.execute(
            "INSERT INTO devices (token_hash, meter_ids) VALUES ($1, $2)", rng.randbytes(32), meters
        )
    else:
        await conn.execute("UPDATE devices SET meter_ids = $2 WHERE device_id = $1", device, meters)


async def delete_something(conn: asyncpg.Connection, rng: random.Random) -> None:
    table, key = rng.choice(
        (
            ("consents", "consent_id"),
            ("meter_installations", "installation_id"),
            ("contracts", "contract_id"),
            ("devices", "device_id"),
        )
    )
    await conn.execute(
        f"DELETE FROM {table} WHERE {key} = (SELECT {key} FROM {table} ORDER BY random() LIMIT 1)"
    )


CHANGES: list[Change] = [
    add_connection,
    add_connection,
    grant,
    grant,
    revoke,
    set_level,
    move,
    exchange_meter,
    rebind_device,
    delete_something,
]


async def change(conn: asyncpg.Connection, rng: random.Random) -> None:
    """One random change in its own savepoint; one the schema refuses (overlapping windows, a
    meter on two EANs), or that waits for a row the straddling transaction holds, is simply not
    made."""
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '100ms'")
            await rng.choice(CHANGES)(conn, rng)
    except (
        asyncpg.IntegrityConstraintViolationError,
        asyncpg.ExclusionViolationError,
        asyncpg.LockNotAvailableError,
    ):
        pass


async def assert_equals_full_build(pool: asyncpg.Pool, index: ConsentIndex) -> None:
    fresh = ConsentIndex()
    async with pool.acquire() as conn:
        await load_all(conn, fresh)
    diff = differences(
        index_view(index, METERS, PROBES, NOW), index_view(fresh, METERS, PROBES, NOW)
    )
    assert not diff, "\n".join(diff[:20])
    assert len(index) == len(fresh)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_catch_up_equals_a_full_build(pool: asyncpg.Pool, seed: int) -> None:
    rng = random.Random(seed)
    maintainer = IndexMaintainer(pool, ConsentIndex(), listen=False, catch_up_interval_s=None)
    await maintainer.start()
    try:
        async with pool.acquire() as conn, pool.acquire() as slow:
            routed_somewhere = 0
            for _round in range(25):
                # a transaction that has written (so holds a transaction id) before the
                # catch-up's snapshot and commits only after it
                straddling = slow.transaction() if rng.random() < 0.4 else None
                if straddling is not None:
                    await straddling.start()
                    await change(slow, rng)
                for _ in range(rng.randrange(1, 8)):
                    await change(conn, rng)
                await maintainer.catch_up()
                if straddling is not None:
                    await straddling.commit()
                    await change(conn, rng)
                    await maintainer.catch_up()
                await assert_equals_full_build(pool, maintainer.index)
                routed_somewhere = max(routed_somewhere, len(maintainer.index))
        assert routed_somewhere >= 3  # the sequence did build something worth comparing
        assert maintainer.full_reloads == 1  # the start; everything else incrementally
        assert maintainer.catch_ups >= 25
    finally:
        await maintainer.stop()


async def test_a_transaction_committing_after_the_catch_up_is_not_skipped(
    pool: asyncpg.Pool,
) -> None:
    """The case a sequence or clock watermark gets wrong, on its own: T1 writes first (lower
    transaction id), T2 writes and commits, the index catches up, then T1 commits."""
    maintainer = IndexMaintainer(pool, ConsentIndex(), listen=False, catch_up_interval_s=None)
    await maintainer.start()
    try:
        async with pool.acquire() as first, pool.acquire() as second:
            t1 = first.transaction()
            await t1.start()
            await add_connection(first, random.Random(11), EANS[0], METERS[0])
            await add_connection(second, random.Random(12), EANS[1], METERS[1])
            await maintainer.catch_up()
            assert len(maintainer.index) == 1
            await t1.commit()
        await maintainer.catch_up()
        assert len(maintainer.index) == 2
        await assert_equals_full_build(pool, maintainer.index)
        assert maintainer.full_reloads == 1
    finally:
        await maintainer.stop()


async def test_a_watermark_behind_the_pruned_log_reloads_everything(pool: asyncpg.Pool) -> None:
    rng = random.Random(5)
    maintainer = IndexMaintainer(pool, ConsentIndex(), listen=False, catch_up_interval_s=None)
    await maintainer.start()
    try:
        async with pool.acquire() as conn:
            for _ in range(20):
                await change(conn, rng)
            # a current process loses nothing to a prune: it saw every pruned row
            await maintainer.catch_up()
            assert await prune_change_log(conn, 0) > 0
            await maintainer.catch_up()
            assert maintainer.full_reloads == 1
            # one that fell behind the pruned log cannot know what it missed
            for _ in range(20):
                await change(conn, rng)
            assert await prune_change_log(conn, 0) > 0
        await maintainer.catch_up()
        assert maintainer.full_reloads == 2
        await assert_equals_full_build(pool, maintainer.index)
    finally:
        await maintainer.stop()


async def test_a_huge_statement_is_one_full_reload_and_a_device_change_reaches_the_cache(
    pool: asyncpg.Pool,
) -> None:
    forgotten: list[bool] = []
    maintainer = IndexMaintainer(
        pool,
        ConsentIndex(),
        listen=False,
        catch_up_interval_s=None,
        on_devices_changed=lambda: forgotten.append(True),
    )
    await maintainer.start()
    try:
        await maintainer.catch_up()
        assert forgotten == [] and maintainer.full_reloads == 1
        async with pool.acquire() as conn:
            await rebind_device(conn, random.Random(3))
        await maintainer.catch_up()
        assert forgotten == [True] and maintainer.full_reloads == 1
        # what the trigger writes for a statement over more than 5000 EANs
        await pool.execute("INSERT INTO index_changes (ean) VALUES ($1)", EVERYTHING)
        await maintainer.catch_up()
        assert maintainer.full_reloads == 2
    finally:
        await maintainer.stop()


class CountingIndex(ConsentIndex):
    """The index, counting the calls of its EAN count (a scan of every route)."""

    counted = 0

    def __len__(self) -> int:
        self.counted += 1
        return super().__len__()


async def test_a_catch_up_counts_the_index_only_for_a_huge_change_set(pool: asyncpg.Pool) -> None:
    """Every process catches up every 5 s; counting the index's EANs scans all its routes (a
    second of CPU at 2 million, bench/registry.py's idle figure), so only a change set too big
    for an EAN reload may ask how many EANs there are."""
    index = CountingIndex()
    maintainer = IndexMaintainer(pool, index, listen=False, catch_up_interval_s=None)
    await maintainer.start()
    try:
        async with pool.acquire() as conn:
            for n in range(3):
                await add_connection(conn, random.Random(n), EANS[n], METERS[n])
        await maintainer.catch_up()  # a few changes
        await maintainer.catch_up()  # none: an idle round
        assert index.counted == 0 and maintainer.full_reloads == 1  # start's load only
        # more changed EANs than the threshold and than half the index: one full reload
        await pool.execute(
            "INSERT INTO index_changes (ean) SELECT 'X' || n FROM generate_series(0, $1) n",
            FULL_RELOAD_THRESHOLD,
        )
        await maintainer.catch_up()
        assert index.counted == 1 and maintainer.full_reloads == 2
        await assert_equals_full_build(pool, index)
    finally:
        await maintainer.stop()


async def test_an_older_snapshot_never_overwrites_a_newer_reload(pool: asyncpg.Pool) -> None:
    """A catch-up took its snapshot before a grant committed and is slow to finish; the grant's
    own reload (what the answering process does before it answers) must not be undone by it."""
    maintainer = IndexMaintainer(pool, ConsentIndex(), listen=False, catch_up_interval_s=None)
    async with pool.acquire() as conn:
        await add_connection(conn, random.Random(21), EANS[0], METERS[0])
        await conn.execute("UPDATE contracts SET level = 'daily', contract_start = $1", T0)
        await conn.execute("UPDATE meter_installations SET installed_from = $1", T0)
    await maintainer.start()
    try:
        async with pool.acquire() as blocker, pool.acquire() as conn:
            # a change the next catch-up will reload (so it re-reads this EAN, pre-grant)
            await conn.execute("UPDATE contracts SET customer_id = 'cust-9'")
            stall = blocker.transaction()
            await stall.start()
            # the catch-up takes its snapshot, then waits for this lock on its second relation
            await blocker.execute("LOCK TABLE index_changes_mark IN ACCESS EXCLUSIVE MODE")
            catching_up = asyncio.create_task(maintainer.catch_up())
            await asyncio.sleep(0.3)
            assert not catching_up.done()
            k = await conn.fetchrow("SELECT * FROM contracts")
            await conn.execute(
                "INSERT INTO consents (ean, consent_id, contract_id, customer_id, purpose,"
                " notice_version, channel, granted_at) VALUES ($1, $2, $3, $4,"
                " 'dynamic-tariff-billing', 'v1', 'api', $5)",
                EANS[0],
                uuid.uuid4(),
                k["contract_id"],
                k["customer_id"],
                NOW - dt.timedelta(days=1),
            )
            refreshing = asyncio.create_task(maintainer.reload_eans([EANS[0]]))
            await asyncio.sleep(0.3)
            await stall.rollback()
            await asyncio.gather(catching_up, refreshing)
        assert Granularity.PT15M in maintainer.index.granularities(
            METERS[0], Commodity.ELECTRICITY, NOW - dt.timedelta(hours=1), NOW
        )
    finally:
        await maintainer.stop()


async def test_the_timer_catches_up_and_prunes_without_any_notification(
    pool: asyncpg.Pool,
) -> None:
    maintainer = IndexMaintainer(
        pool,
        ConsentIndex(),
        listen=False,
        catch_up_interval_s=0.05,
        change_log_keep_s=0.0,
        prune_interval_s=0.0,
    )
    await maintainer.start()
    try:
        async with pool.acquire() as conn:
            await add_connection(conn, random.Random(31), EANS[2], METERS[2])
        for _ in range(200):
            if len(maintainer.index) == 1 and await pool.fetchval(
                "SELECT count(*) = 0 FROM index_changes"
            ):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the timer neither caught up nor pruned")
        # (with nothing kept, a prune may beat a catch-up to a change: then that catch-up is a
        # full reload, which is right, so the count of full reloads is not asserted here)
        await assert_equals_full_build(pool, maintainer.index)
    finally:
        await maintainer.stop()


async def test_catch_up_from_a_full_load_with_consent_windows_equals_a_full_build(
    pool: asyncpg.Pool,
) -> None:
    """A full load keeps the one window of a common consenting route in arrays (migration
    0016); the changes after it free such routes and reuse their slots, and the index still
    equals a full build after every catch-up."""
    rng = random.Random(21)
    async with pool.acquire() as conn:
        for n in range(6):
            await add_connection(conn, rng, EANS[n], METERS[n])
            await conn.execute("UPDATE contracts SET level = 'daily' WHERE ean = $1", EANS[n])
            await conn.execute(
                "INSERT INTO consents (ean, consent_id, contract_id, customer_id, purpose,"
                " notice_version, channel, granted_at)"
                " SELECT ean, $2, contract_id, customer_id, 'dynamic-tariff-billing', 'v1',"
                " 'api', contract_start + interval '1 day' FROM contracts WHERE ean = $1",
                EANS[n],
                uuid.uuid4(),
            )
    maintainer = IndexMaintainer(pool, ConsentIndex(), listen=False, catch_up_interval_s=None)
    await maintainer.start()
    try:
        # the load did take the bulk way for some routes
        assert len(maintainer.index._wstart) == 6
        await assert_equals_full_build(pool, maintainer.index)
        async with pool.acquire() as conn:
            for _round in range(20):
                for _ in range(rng.randrange(1, 6)):
                    await change(conn, rng)
                await maintainer.catch_up()
                await assert_equals_full_build(pool, maintainer.index)
        assert maintainer.full_reloads == 1
    finally:
        await maintainer.stop()
