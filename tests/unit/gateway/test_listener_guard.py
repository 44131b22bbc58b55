"""The consent index's LISTEN guard outlives every way a reconnect can fail while PostgreSQL
restarts: a guard that died would leave the index deaf to consent changes until the process
restarts (and its death surfaced only at shutdown, as the stop's error).

The pool here is a stand-in for asyncpg's: a real restart hits these errors only by timing."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import asyncpg
import pytest

from gateway.ingest.consent_index import ConsentIndex, IndexMaintainer


class Listening:
    def __init__(self, fault: BaseException | None) -> None:
        self.fault = fault
        self.channels: list[str] = []

    async def add_listener(self, channel: str, _callback: object) -> None:
        if self.fault is not None:
            raise self.fault
        self.channels.append(channel)

    async def remove_listener(self, channel: str, _callback: object) -> None:
        self.channels.remove(channel)

    def add_termination_listener(self, _callback: object) -> None:
        pass

    def remove_termination_listener(self, _callback: object) -> None:
        pass

    def is_closed(self) -> bool:
        return self.fault is not None


class RestartingPool:
    """Hands out connections that fail with ``faults`` in turn, then good ones."""

    def __init__(self, faults: list[BaseException]) -> None:
        self.faults = faults
        self.released: list[Listening] = []

    async def acquire(self) -> Listening:
        return Listening(self.faults.pop(0) if self.faults else None)

    async def release(self, conn: Listening) -> None:
        self.released.append(conn)


@pytest.mark.parametrize(
    "fault",
    [
        asyncpg.InternalClientError(
            "cannot switch to state 11; another operation (2) is in progress"
        ),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        ConnectionRefusedError(),
        asyncpg.InterfaceError("connection is closed"),
    ],
)
async def test_the_guard_reconnects_through_any_database_fault(fault: BaseException) -> None:
    pool = RestartingPool([fault, fault])
    maintainer = IndexMaintainer(cast(Any, pool), ConsentIndex(), reconnect_delay_s=0.01)
    guard = asyncio.create_task(maintainer._listener_guard())
    maintainer._lost.set()
    for _ in range(200):
        if maintainer._listen_conn is not None:
            break
        await asyncio.sleep(0.01)
    assert not guard.done(), guard.exception() if guard.done() else None
    assert maintainer._listen_conn is not None
    assert [c.fault for c in pool.released] == [fault, fault]  # each broken one went back
    guard.cancel()
    await maintainer.stop()


async def test_a_bug_still_stops_the_guard() -> None:
    pool = RestartingPool([RuntimeError("bug")])
    maintainer = IndexMaintainer(cast(Any, pool), ConsentIndex(), reconnect_delay_s=0.01)
    guard = asyncio.create_task(maintainer._listener_guard())
    maintainer._lost.set()
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(guard, 5)
