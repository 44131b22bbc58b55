"""A committed consent or level change never fails its answer because the index reload cannot
get a connection: the reload is left to the background instead."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, cast

import asyncpg
import pytest

from gateway.ingest.consent_index import ConsentIndex, IndexMaintainer
from gateway.ingest.state import IngestState


class BusyMaintainer:
    """Our maintainer's interface, with a pool that never frees a connection."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.scheduled: list[str] = []

    async def reload_eans(self, eans: Iterable[str]) -> None:
        raise self.error

    def notify(self, ean: str) -> None:
        self.scheduled.append(ean)


def state_with(maintainer: Any) -> IngestState:
    unused: Any = None
    return IngestState(unused, unused, ConsentIndex(), cast(IndexMaintainer, maintainer), time.time)


@pytest.mark.parametrize(
    "error",
    [
        TimeoutError(),
        ConnectionResetError(),
        # what asyncpg raises for a kept connection the server ended mid-way (a restart)
        asyncpg.InternalClientError(
            "cannot switch to state 11; another operation (2) is in progress"
        ),
    ],
)
async def test_a_reload_that_cannot_run_now_is_scheduled(error: BaseException) -> None:
    maintainer = BusyMaintainer(error)
    await state_with(maintainer).refresh(["871234567890123451", "871234567890123468"])
    assert maintainer.scheduled == ["871234567890123451", "871234567890123468"]


async def test_a_bug_in_the_reload_is_not_hidden() -> None:
    maintainer = BusyMaintainer(RuntimeError("bug"))
    with pytest.raises(RuntimeError):
        await state_with(maintainer).refresh(["871234567890123451"])
    assert maintainer.scheduled == []
