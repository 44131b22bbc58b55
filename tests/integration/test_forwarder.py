"""Forwarder ↔ gateway over real HTTP on 127.0.0.1 (the fake gateway of tests/support)."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from p1_reader.forwarder import Forwarder, ForwarderConfig
from p1_reader.gateway_client import parse_retry_after
from p1_reader.parser import parse_telegram
from p1_reader.simulate import batches, generate, make_meters, push
from p1_reader.spool import Spool
from p1_reader.telegram import Telegram
from p1_reader.thinning import mark_telegram
from p1_reader.timestamps import LOCAL_TZ
from tests.support.fake_gateway import FakeGateway

START = datetime(2026, 3, 28, 22, 0, tzinfo=LOCAL_TZ)


def telegrams(count: int, *, meters: int = 1, interval: int = 10, seed: int = 1) -> list[bytes]:
    fleet = make_meters(meters, seed=seed, interval=interval)
    out: list[bytes] = []
    for telegram in generate(fleet, START, None):
        out.append(telegram)
        if len(out) == count:
            return out
    raise AssertionError("unreachable: the generator is endless")


async def source(
    items: Iterable[bytes], *, hold: asyncio.Event | None = None
) -> AsyncIterator[tuple[bytes, Telegram | None]]:
    """A telegram source; with ``hold`` it stays open (like a serial port) until set."""
    for item in items:
        yield item, None
        await asyncio.sleep(0)
    if hold is not None:
        await hold.wait()


async def eventually(predicate: Callable[[], bool], *, limit: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``limit`` seconds."""
    step = 0.02
    for _ in range(int(limit / step)):
        if predicate():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {limit} s")


def config(gw: FakeGateway, **changes: object) -> ForwarderConfig:
    base = ForwarderConfig(
        gateway=gw.url,
        token="test-token",
        batch_size=100,
        batch_interval=0.05,
        send_all=True,
        request_timeout=5.0,
        backoff_initial=0.01,
        backoff_max=0.05,
        auth_retry=0.2,
        stats_interval=0.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def gw() -> AsyncIterator[FakeGateway]:
    async with FakeGateway() as gateway:
        yield gateway


async def forward(
    cfg: ForwarderConfig, spool: Spool, items: Iterable[bytes], *, limit: float = 30.0
) -> Forwarder:
    forwarder = Forwarder(cfg, spool)
    async with asyncio.timeout(limit):
        await forwarder.run(source(items), exit_when_drained=True)
    return forwarder


async def test_batches_deliver_everything_in_order(gw: FakeGateway, tmp_path: Path) -> None:
    items = telegrams(250)
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        fwd = await forward(config(gw), spool, items)
        assert spool.pending == 0
    assert gw.received == items
    assert all(0 < r.telegrams <= 100 for r in gw.requests)
    assert len(gw.requests) >= 3
    assert fwd.stats.delivered == fwd.stats.accepted == 250


async def test_rejected_telegrams_are_acknowledged_and_logged_without_content(
    gw: FakeGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="p1_reader.forwarder")
    items = telegrams(30)
    bad = {items[3], items[17]}
    gw.reject_if = lambda t: ("meter-not-bound", "meter not bound") if t in bad else None
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        fwd = await forward(config(gw, batch_size=10), spool, items)
        assert spool.pending == 0
    assert gw.received == [t for t in items if t not in bad]
    assert [t for t, _ in gw.rejected] == [items[3], items[17]]
    assert fwd.stats.rejected == 2 and fwd.stats.rejected_reasons == {"meter-not-bound": 2}
    # each telegram was sent once: a rejection is final, not a reason to resend
    assert sum(r.telegrams for r in gw.requests) == 30
    rejections = [r.getMessage() for r in caplog.records if "rejected telegram" in r.getMessage()]
    assert len(rejections) == 2 and all("meter-not-bound" in m for m in rejections)
    messages = [r.getMessage() for r in caplog.records]
    assert not any("0-0:96.1.1" in m or "/ISK5" in m for m in messages)


@pytest.mark.parametrize("status", [503, 429])
async def test_retry_after_seconds_is_honoured(
    gw: FakeGateway, tmp_path: Path, status: int
) -> None:
    items = telegrams(5)
    gw.fail_next(status, retry_after=1)
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        await forward(config(gw), spool, items)
    assert gw.received == items
    failed, ok = gw.requests[0], gw.requests[1]
    assert failed.status == status and ok.status == 200
    # the backoff alone would have retried after at most 0.05 s
    assert ok.at - failed.at >= 0.95


def test_retry_after_http_date_and_garbage() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC).timestamp()
    date = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(90)
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now=now) == 0
    assert parse_retry_after("120", now=now) == 120
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None, now=now) is None


async def test_gateway_down_then_back_delivers_everything_once_in_order(
    tmp_path: Path,
) -> None:
    gw = FakeGateway()
    await gw.start()
    await gw.stop()  # a port nobody listens on: connection refused
    items = telegrams(300)
    hold = asyncio.Event()
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        fwd = Forwarder(config(gw), spool)
        task = asyncio.create_task(fwd.run(source(items, hold=hold), exit_when_drained=True))
        await eventually(lambda: spool.pending == 300 and fwd.stats.failures >= 5)
        assert gw.received == []
        await gw.start()
        hold.set()
        async with asyncio.timeout(20):
            await task
        assert spool.pending == 0
    await gw.stop()
    # no response was lost, so not even an at-least-once duplicate
    assert gw.received == items


async def test_lost_responses_cause_duplicates_only_of_those_batches(
    gw: FakeGateway, tmp_path: Path
) -> None:
    items = telegrams(40)
    gw.lose_response_next(times=2)
    gw.drop_next()
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        await forward(config(gw, batch_size=10), spool, items)
    assert gw.unique() == items
    # the two batches whose answers were lost arrived twice, nothing else
    lost = [r.telegrams for r in gw.requests if r.status == 0 and r.telegrams]
    assert len(lost) == 2
    assert len(gw.received) == 40 + sum(lost)
    # a resend repeats the batch right away: the first lost batch arrives twice in a row
    first = lost[0]
    assert gw.received[:first] == gw.received[first : 2 * first] == items[:first]


async def test_refused_token_keeps_spooling_and_recovers(
    gw: FakeGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p1_reader.forwarder")
    gw.tokens = frozenset({"other"})
    items = telegrams(20)
    hold = asyncio.Event()
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        fwd = Forwarder(config(gw, auth_retry=0.3), spool)
        task = asyncio.create_task(fwd.run(source(items, hold=hold), exit_when_drained=True))
        await eventually(lambda: fwd.stats.failures >= 2)
        assert spool.pending == 20 and gw.received == []
        gw.tokens = frozenset({"test-token"})  # the operator fixes the token
        hold.set()
        async with asyncio.timeout(10):
            await task
    assert gw.received == items
    errors = [r for r in caplog.records if "refused the device token" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    # retried rarely: at most one request per auth_retry interval
    refused = [r for r in gw.requests if r.status == 401]
    assert all(b.at - a.at >= 0.25 for a, b in itertools.pairwise(refused))


async def test_too_large_batches_are_split(gw: FakeGateway, tmp_path: Path) -> None:
    items = telegrams(50)
    gw.max_body_bytes = 4 * max(len(t) for t in items)
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        fwd = await forward(config(gw, batch_size=50), spool, items)
    assert gw.received == items
    assert any(r.status == 413 for r in gw.requests)
    assert fwd.stats.refused == 0


async def test_a_single_telegram_too_large_is_given_up(gw: FakeGateway, tmp_path: Path) -> None:
    items = telegrams(6)
    big = items[2].replace(b"0-0:96.13.0()", b"0-0:96.13.0(" + b"41" * 2000 + b")")
    gw.max_body_bytes = 3000
    items = [*items[:2], big, *items[3:]]
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        fwd = await forward(config(gw, batch_size=4), spool, items)
        assert spool.pending == 0
    assert gw.received == [t for t in items if t is not big]
    assert fwd.stats.refused == 1


async def test_server_errors_back_off_and_recover(gw: FakeGateway, tmp_path: Path) -> None:
    items = telegrams(10)
    gw.fail_next(500, times=3)
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        fwd = await forward(config(gw), spool, items)
    assert gw.received == items
    assert fwd.stats.failures == 3


async def test_default_thinning_sends_first_of_quarter_and_minute(
    gw: FakeGateway, tmp_path: Path
) -> None:
    items = telegrams(6 * 60, meters=1, interval=10)  # one hour at a 10-s cadence
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        fwd = await forward(config(gw, send_all=False), spool, items)
    marks = [mark_telegram(t) for t in items]
    minutes = {m.timestamp // 60 for m in marks if m is not None and m.timestamp is not None}
    assert len(gw.received) == len(minutes) == 60
    assert fwd.stats.thinned == len(items) - 60
    # the first telegram of every quarter is among those sent
    firsts: dict[int, bytes] = {}
    for t in items:
        p = parse_telegram(t)
        assert p.timestamp is not None
        firsts.setdefault(int(p.timestamp.timestamp()) // 900, t)
    assert set(firsts.values()) <= set(gw.received)


@pytest.mark.slow
async def test_gateway_down_for_24h_spool_keeps_everything_across_reboot(
    tmp_path: Path,
) -> None:
    """A day of telegrams (10-s cadence, default thinning) while the gateway is down, a device
    reboot (the spool is closed and reopened), then the gateway comes back: every telegram that
    had to be delivered arrives, in order, once. Time is simulated, not waited for."""
    gw = FakeGateway()
    await gw.start()
    await gw.stop()
    day = telegrams(8_640, interval=10)  # a day at a 10-s cadence, across a DST change
    hold = asyncio.Event()
    # defaults: 256 MiB, thin when full
    spool = Spool(tmp_path, marker=mark_telegram)
    fwd = Forwarder(config(gw, send_all=False), spool)
    task = asyncio.create_task(fwd.run(source(day, hold=hold), exit_when_drained=True))
    await eventually(lambda: fwd.stats.read == len(day), limit=120)
    fwd.stop()
    await task
    spooled = [r.data for r in spool.peek(100_000)]
    spool.close()
    assert fwd.stats.spooled == len(spooled) and spool.stats.dropped == 0
    # the kept telegrams are the first of every minute (which includes every quarter opener)
    minutes = {}
    for t in day:
        mark = mark_telegram(t)
        assert mark is not None and mark.timestamp is not None
        minutes.setdefault(mark.timestamp // 60, t)
    assert spooled == list(minutes.values())

    # reboot: a new process opens the same spool, the gateway is back
    await gw.start()
    with Spool(tmp_path, marker=mark_telegram) as spool:
        assert spool.pending == len(spooled)
        await forward(config(gw, send_all=False), spool, [], limit=60)
        assert spool.pending == 0
    await gw.stop()
    assert gw.received == spooled


async def test_simulator_push_reports_rate_and_latency(gw: FakeGateway) -> None:
    meters = make_meters(20, seed=5)
    bodies = [(n, body, 0.0) for n, body in batches(generate(meters, START, 300), 50)]
    report = await push(gw.url, "test-token", bodies, concurrency=3)
    summary = report.summary()
    assert summary["telegrams"] == summary["accepted"] == 20 * 30 == len(gw.received)
    assert summary["requests"] == len(bodies)
    assert summary["latency_ms"]["p50"] is not None
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert summary["telegrams_per_second"] > 0
