"""Sustained batched ingest for fault tests: one pusher per household, each posting its next
batch of telegrams as soon as the previous one is answered, and a ``/readyz`` prober.

Every answer is recorded with the test's current ``phase``; a batch answered ``200`` counts as
acknowledged (its telegrams must be stored), any other outcome — a status, a reset, a timeout —
leaves it unacknowledged, to be retried by :meth:`Load.retry_unacknowledged` as a device would.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

from tests.support.fleet import Household

#: status recorded when no HTTP answer came (connection refused or reset, client timeout)
NO_ANSWER = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: when it was answered (monotonic), in which phase, how, and how fast."""

    kind: str  # "push" or "ready"
    phase: str
    status: int
    seconds: float
    retry_after: str | None
    at: float


@dataclass(slots=True)
class Batch:
    household: Household
    times: list[dt.datetime]

    def body(self) -> bytes:
        return b"".join(self.household.telegram(t) for t in self.times)


@dataclass
class Load:
    """Pushers for ``households`` (device tokens by household number) against ``base``."""

    base: str
    households: Sequence[Household]
    tokens: Mapping[int, str]
    start: dt.datetime
    batch_size: int = 100
    step_s: int = 10
    #: pause between one pusher's requests (keeps a shared 2-core machine responsive)
    pause_s: float = 0.01
    request_timeout_s: float = 30.0
    phase: str = "healthy"
    outcomes: list[Outcome] = field(default_factory=list)
    acknowledged: list[tuple[Household, dt.datetime]] = field(default_factory=list)
    unacknowledged: list[Batch] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def begin(self, *, probe_ready: bool = True) -> None:
        """Start pushing (and probing ``/readyz`` every 100 ms)."""
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._push(h)) for h in self.households]
        if probe_ready:
            self._tasks.append(asyncio.create_task(self._probe()))

    async def end(self) -> None:
        """Stop after the requests in flight are answered."""
        self._stop.set()
        await asyncio.gather(*self._tasks)

    @property
    def sent(self) -> list[tuple[Household, dt.datetime]]:
        """Every telegram pushed so far, acknowledged or not."""
        return self.acknowledged + [(b.household, t) for b in self.unacknowledged for t in b.times]

    def pushes(self, phase: str | None = None) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == "push" and phase in (None, o.phase)]

    def probes(self, phase: str | None = None) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == "ready" and phase in (None, o.phase)]

    async def retry_unacknowledged(self, *, limit_s: float = 60.0) -> int:
        """Post every unacknowledged batch again until each is acknowledged; how many there
        were."""
        pending, self.unacknowledged = self.unacknowledged, []
        async with self._session() as http, asyncio.timeout(limit_s):
            for batch in pending:
                while True:
                    if await self._post(http, batch):
                        break
                    await asyncio.sleep(0.2)
        return len(pending)

    # ---------------------------------------------------------------- internals

    def _session(self) -> aiohttp.ClientSession:
        # a fresh connection per request: a kept-alive socket to a killed process would turn
        # the next request into a reset that says nothing about the gateway that replaced it
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
            connector=aiohttp.TCPConnector(force_close=True),
        )

    async def _push(self, household: Household) -> None:
        first = self.start
        async with self._session() as http:
            while not self._stop.is_set():
                times = [
                    first + dt.timedelta(seconds=self.step_s * i) for i in range(self.batch_size)
                ]
                first = times[-1] + dt.timedelta(seconds=self.step_s)
                batch = Batch(household, times)
                if not await self._post(http, batch):
                    self.unacknowledged.append(batch)
                await asyncio.sleep(self.pause_s)

    async def _post(self, http: aiohttp.ClientSession, batch: Batch) -> bool:
        token = self.tokens[batch.household.n]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
        status, retry_after, took = await self._request(
            http, "POST", "/v1/telegrams", batch.body(), headers
        )
        self._record("push", status, retry_after, took)
        if status == 200:
            self.acknowledged.extend((batch.household, t) for t in batch.times)
            return True
        return False

    async def _probe(self) -> None:
        async with self._session() as http:
            while not self._stop.is_set():
                status, retry_after, took = await self._request(http, "GET", "/readyz")
                self._record("ready", status, retry_after, took)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.1)

    async def _request(
        self,
        http: aiohttp.ClientSession,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, str | None, float]:
        started = time.monotonic()
        try:
            async with http.request(method, self.base + path, data=body, headers=headers) as r:
                await r.read()
                return r.status, r.headers.get("Retry-After"), time.monotonic() - started
        except (aiohttp.ClientError, TimeoutError):
            return NO_ANSWER, None, time.monotonic() - started

    def _record(self, kind: str, status: int, retry_after: str | None, took: float) -> None:
        self.outcomes.append(Outcome(kind, self.phase, status, took, retry_after, time.monotonic()))
