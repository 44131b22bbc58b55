"""The forwarder (in-process) delivering to the REAL gateway over HTTP on 127.0.0.1, into a real
PostgreSQL: what the gateway stores, what it rejects and how the forwarder accounts for it.

* a mixed stream (good telegrams, one with a bad CRC, one of a meter not bound to the device):
  every telegram is acknowledged (the spool drains), the two rejections are counted with their
  reasons, and exactly the expected P1D/P1M rows are stored;
* a batch whose telegrams are ALL rejected: the gateway answers 422 problem+json carrying
  ``{accepted, rejected}``; the forwarder treats it as answered (no retry, no halving, nothing
  given up as "refused") and still delivers the batch after it;
* ``file_source`` (``--input``): a telegram with a wrong CRC never leaves the house.

Expected rows come from ``tests.support.forward_world`` (local wall-clock arithmetic, not
gateway.ingest.periods).
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import asyncpg
import pytest

from p1_reader.forwarder import file_source
from p1_reader.spool import Spool
from tests.support.forward_world import (
    OTHER_ID,
    PROBLEM,
    UTC,
    Client,
    World,
    config,
    expected,
    forward,
    items_of,
    make_world,
    reading,
    recent_times,
    stored,
    telegram_of,
    with_bad_crc,
)


@pytest.fixture
async def world(gateway_client: Client, pool: asyncpg.Pool, admin_headers: dict[str, str]) -> World:
    return await make_world(gateway_client, pool, admin_headers)


# --- tests ---------------------------------------------------------------------------------------


async def test_mixed_stream_is_acknowledged_and_stored(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p1_reader.forwarder")
    times = recent_times(12)
    readings = [reading(i, t) for i, t in enumerate(times)]
    # the EARLIEST telegram has a bad CRC and the second earliest comes from a meter bound to
    # another device: storing either would change the day and month rows checked below
    data = [with_bad_crc(telegram_of(readings[0])), telegram_of(readings[1], OTHER_ID)]
    data += [telegram_of(r) for r in readings[2:]]

    with Spool(tmp_path / "spool", full_policy="drop-newest") as spool:
        fwd = await forward(config(world), spool, items_of(data))
        assert spool.pending == 0

    s = fwd.stats
    assert (s.read, s.spooled, s.delivered) == (12, 12, 12)
    assert (s.accepted, s.rejected, s.refused) == (10, 2, 0)
    assert s.rejected_reasons == {"bad-crc": 1, "meter-not-bound": 1}
    assert s.failures == 0
    # batches of at most 4: at least 3 requests, none of them retried or split
    assert 3 <= s.requests <= 12

    assert await stored(world.pool) == expected(readings[2:])
    rejections = [r.getMessage() for r in caplog.records if "rejected telegram" in r.getMessage()]
    assert len(rejections) == 2
    assert any("bad-crc" in m for m in rejections)
    assert any("meter-not-bound" in m for m in rejections)
    # privacy: the forwarder's log never carries telegram content
    messages = [r.getMessage() for r in caplog.records]
    assert not any("96.1.1" in m or "/XMX5" in m or "kWh" in m for m in messages)


async def test_all_rejected_batch_is_answered_not_retried(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p1_reader.forwarder")
    times = recent_times(6)
    readings = [reading(i, t) for i, t in enumerate(times)]
    future = dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(hours=2)
    doomed = [
        with_bad_crc(telegram_of(readings[0])),
        telegram_of(readings[1], OTHER_ID),
        telegram_of(reading(99, future)),
    ]
    good = [telegram_of(r) for r in readings[3:]]

    # the premise: the gateway answers such a batch with 422 problem+json and the outcome
    resp = await world.client.post(
        "/v1/telegrams",
        data=b"".join(doomed),
        headers={"Authorization": f"Bearer {world.token}", "Content-Type": "text/plain"},
    )
    assert resp.status == 422 and resp.content_type == PROBLEM
    problem = await resp.json(content_type=PROBLEM)
    assert problem["accepted"] == 0
    assert [(r["index"], r["reason"]) for r in problem["rejected"]] == [
        (0, "bad-crc"),
        (1, "meter-not-bound"),
        (2, "future-timestamp"),
    ]
    assert await stored(world.pool) == expected([])

    # spooled before the forwarder starts, so that the first batch is exactly the doomed three
    with Spool(tmp_path / "spool", full_policy="drop-newest") as spool:
        assert spool.append_batch(doomed + good) == 6
        fwd = await forward(config(world, batch_size=3), spool, items_of(()))
        assert spool.pending == 0

    s = fwd.stats
    # two requests: the 422 batch was neither retried nor split into smaller ones
    assert s.requests == 2
    assert (s.delivered, s.accepted, s.rejected, s.refused, s.failures) == (6, 3, 3, 0, 0)
    assert s.rejected_reasons == {"bad-crc": 1, "meter-not-bound": 1, "future-timestamp": 1}
    assert await stored(world.pool) == expected(readings[3:])
    messages = [r.getMessage() for r in caplog.records]
    assert not any("giving it up" in m or "retrying in batches" in m for m in messages)


async def test_last_batch_all_rejected_does_not_block_exit(world: World, tmp_path: Path) -> None:
    # the 422 batch is the last one: the forwarder must acknowledge it and exit, not loop
    times = recent_times(3)
    readings = [reading(i, t) for i, t in enumerate(times)]
    data = [telegram_of(readings[0]), telegram_of(readings[1], OTHER_ID)]
    data.append(with_bad_crc(telegram_of(readings[2])))
    with Spool(tmp_path / "spool", full_policy="drop-newest") as spool:
        spool.append_batch(data)
        fwd = await forward(config(world, batch_size=1), spool, items_of(()))
        assert spool.pending == 0
    s = fwd.stats
    assert (s.requests, s.accepted, s.rejected, s.refused) == (3, 1, 2, 0)
    assert await stored(world.pool) == expected(readings[:1])


async def test_input_file_with_a_bad_crc_telegram(world: World, tmp_path: Path) -> None:
    # --input reads through the framer, which drops a telegram whose CRC does not match: it is
    # never sent, so the gateway sees (and stores) only the good ones
    times = recent_times(5)
    readings = [reading(i, t) for i, t in enumerate(times)]
    stream = with_bad_crc(telegram_of(readings[0])) + b"".join(telegram_of(r) for r in readings[1:])
    source = tmp_path / "p1.txt"
    source.write_bytes(stream)
    with Spool(tmp_path / "spool", full_policy="drop-newest") as spool:
        fwd = await forward(config(world), spool, file_source(str(source), chunk_size=97))
        assert spool.pending == 0
    s = fwd.stats
    assert (s.read, s.delivered, s.accepted, s.rejected) == (4, 4, 4, 0)
    assert await stored(world.pool) == expected(readings[1:])


async def test_input_file_without_its_final_line_end(world: World, tmp_path: Path) -> None:
    # a capture that stops right after the last '!CRC' (as files are often stored): the end of
    # the input completes the last telegram, which is delivered like the others
    times = recent_times(4)
    readings = [reading(i, t) for i, t in enumerate(times)]
    source = tmp_path / "p1.txt"
    source.write_bytes(b"".join(telegram_of(r) for r in readings).rstrip(b"\r\n"))
    with Spool(tmp_path / "spool", full_policy="drop-newest") as spool:
        fwd = await forward(config(world), spool, file_source(str(source), chunk_size=97))
        assert spool.pending == 0
    s = fwd.stats
    assert (s.read, s.delivered, s.accepted, s.rejected) == (4, 4, 4, 0)
    assert await stored(world.pool) == expected(readings)
