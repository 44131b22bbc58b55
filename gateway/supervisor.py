"""One way to run a background task beside a service: started, watched and stopped alike.

Every long-running job of a gateway process (partition upkeep, retention, webhook delivery, pool
gauges) runs through ``background``: a crash is logged when it happens, not at shutdown, and the
task is cancelled and awaited when the block ends, so no job outlives the resources it uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def background(
    name: str, job: Coroutine[Any, Any, None]
) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``job`` as a task named ``name`` for the duration of the block."""
    task = asyncio.create_task(job, name=name)
    task.add_done_callback(_report_crash)
    try:
        yield task
    finally:
        await stop(task)


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it; re-raise what it died of, unless that was the cancel."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        # our own cancellation arriving while we wait must propagate; the task's must not
        if not task.cancelled():
            raise


def _report_crash(task: asyncio.Task[Any]) -> None:
    # jobs survive database trouble themselves; anything else is a bug that stopped the job:
    # say so now (the exception is raised again when the block ends)
    if not task.cancelled() and task.exception() is not None:
        log.error("background job %s stopped", task.get_name(), exc_info=task.exception())
