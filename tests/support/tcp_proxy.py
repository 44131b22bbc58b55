"""A local TCP proxy that breaks the link to PostgreSQL on demand (fault tests).

The gateway connects to ``127.0.0.1:<port>``; each connection is piped to an upstream (a TCP
address or PostgreSQL's Unix socket). Faults, switched on and healed while connections live:

``drop()``     abort every connection (both sides see a reset) and, with ``refuse=True``, close
               new ones at once until ``heal()`` — a server or network that went away;
``stall()``    half-open: connections stay up but no byte moves in either direction, new
               connections included; ``heal()`` lets the held bytes through (TCP retransmission
               after a partition heals);
``slow(s)``    each chunk waits ``s`` seconds before it is forwarded, in order.

Hand-written rather than a dependency: a few dozen lines of asyncio streams, and the faults need
to reach into the pipe between chunks, which off-the-shelf proxies (toxiproxy) do from another
process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def unix_upstream(path: str) -> Connect:
    """Connect to a Unix socket (the embedded PostgreSQL listens on one only)."""

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(path)

    return connect


class TcpProxy:
    """Listens on 127.0.0.1 (a free port) and pipes every connection to ``upstream``."""

    def __init__(self, upstream: Connect) -> None:
        self._upstream = upstream
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self.delay_s = 0.0
        self.accepted = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()
        self._abort_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # ---------------------------------------------------------------- faults

    def drop(self, *, refuse: bool = False) -> None:
        """Reset every open connection; with ``refuse``, also new ones until ``heal()``."""
        self._refusing = refuse
        self._abort_all()

    def stall(self) -> None:
        """Stop moving bytes, closing nothing (a half-open link)."""
        self._flowing.clear()

    def slow(self, delay_s: float) -> None:
        """Hold every chunk ``delay_s`` seconds before forwarding it."""
        self.delay_s = delay_s

    def heal(self) -> None:
        """Back to a healthy link."""
        self._refusing = False
        self.delay_s = 0.0
        self._flowing.set()

    # ---------------------------------------------------------------- piping

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._refusing:
            client_w.transport.abort()
            return
        self.accepted += 1
        try:
            upstream_r, upstream_w = await self._upstream()
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, upstream_w}
        pipes = [
            asyncio.create_task(self._pipe(client_r, upstream_w)),
            asyncio.create_task(self._pipe(upstream_r, client_w)),
        ]
        self._tasks.update(pipes)
        try:
            # either side ending ends the connection, as a real link would
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._tasks.difference_update(pipes)
            for writer in (client_w, upstream_w):
                self._writers.discard(writer)
                writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                await self._flowing.wait()
                writer.write(chunk)
                await writer.drain()
