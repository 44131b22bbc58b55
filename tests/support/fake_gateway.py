"""A small aiohttp gateway implementing ``POST /v1/telegrams`` (SPEC §5) for forwarder tests.

It is faithful to the contract the field device sees — bearer token, ``text/plain`` body of
telegrams back to back, ``200 {accepted, rejected: [{index, reason, detail}]}``, problem+json
errors, ``Retry-After`` on 429/503 — and it can be told to misbehave: reject telegrams, answer
with an error status a number of times, drop the connection before or after processing (a lost
response), be slow, or stop listening altogether (``stop()``/``start()`` on the same port).

It stores nothing but the telegrams it accepted, in arrival order (duplicates included, so tests
can see at-least-once redelivery); the real gateway is idempotent, this one only records.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from fastcrc import crc16

PROBLEM_JSON = "application/problem+json"
_TELEGRAM = re.compile(rb"/[^\r\n]*\r?\n.*?!([0-9A-Fa-f]{0,4})\r?\n", re.S)
_METER_ID = re.compile(rb"^0-0:96\.1\.1\(([0-9A-Fa-f]*)\)", re.M)

FaultKind = Literal["status", "drop", "lose-response"]


@dataclass(slots=True)
class _Fault:
    kind: FaultKind
    status: int = 503
    retry_after: str | None = None


@dataclass(slots=True)
class RequestLog:
    """One request as the fake saw it."""

    at: float  # event loop time
    status: int  # 0 when the connection was dropped
    telegrams: int
    body_bytes: int


@dataclass
class FakeGateway:
    """The fake; ``async with FakeGateway() as gw:`` listens on 127.0.0.1 on a free port."""

    tokens: frozenset[str] = frozenset({"test-token"})
    #: token → meter ids the device may send for (absent token: any meter)
    bound_meters: dict[str, frozenset[str]] = field(default_factory=dict)
    max_body_bytes: int = 1024 * 1024
    #: seconds to wait before answering (a slow gateway)
    delay: float = 0.0
    #: telegram → (reason, detail) to reject it, None to accept
    reject_if: Callable[[bytes], tuple[str, str] | None] | None = None

    received: list[bytes] = field(default_factory=list)
    rejected: list[tuple[bytes, str]] = field(default_factory=list)
    requests: list[RequestLog] = field(default_factory=list)
    port: int = 0
    _faults: deque[_Fault] = field(default_factory=deque)
    _runner: web.AppRunner | None = None
    _sock: socket.socket | None = None
    _arrived: asyncio.Condition | None = None

    # ------------------------------------------------------------------ control

    @property
    def url(self) -> str:
        """Base URL (the forwarder appends ``/v1/telegrams``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    def fail_next(
        self, status: int, *, times: int = 1, retry_after: str | int | None = None
    ) -> None:
        """Answer the next ``times`` requests with ``status`` (problem+json), before reading."""
        ra = None if retry_after is None else str(retry_after)
        self._faults.extend(_Fault("status", status, ra) for _ in range(times))

    def drop_next(self, *, times: int = 1) -> None:
        """Close the connection of the next ``times`` requests without processing them."""
        self._faults.extend(_Fault("drop") for _ in range(times))

    def lose_response_next(self, *, times: int = 1) -> None:
        """Process (record) the next ``times`` requests, then drop the connection unanswered."""
        self._faults.extend(_Fault("lose-response") for _ in range(times))

    def unique(self) -> list[bytes]:
        """Accepted telegrams in first-arrival order, duplicates removed."""
        seen: set[bytes] = set()
        out: list[bytes] = []
        for telegram in self.received:
            if telegram not in seen:
                seen.add(telegram)
                out.append(telegram)
        return out

    async def wait_for(self, count: int, limit: float = 10.0) -> None:
        """Wait until ``count`` distinct telegrams were accepted or rejected (``limit`` s)."""
        assert self._arrived is not None, "start the fake gateway first"

        def done() -> bool:
            return len(set(self.received)) + len({t for t, _ in self.rejected}) >= count

        async with asyncio.timeout(limit), self._arrived:
            await self._arrived.wait_for(done)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen (again) on 127.0.0.1, on ``port`` or a free port when it is 0."""
        if self._arrived is None:
            self._arrived = asyncio.Condition()
        app = web.Application(client_max_size=self.max_body_bytes * 2)
        app.router.add_post("/v1/telegrams", self._telegrams)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening and close open connections (the gateway died)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ handler

    async def _telegrams(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault.kind == "drop":
            self.requests.append(RequestLog(loop.time(), 0, 0, 0))
            return _drop(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        token = _bearer(request)
        if token is None or token not in self.tokens:
            self.requests.append(RequestLog(loop.time(), 401, 0, 0))
            return _problem(
                401,
                "unauthorized",
                "missing or unknown device token",
                headers={"WWW-Authenticate": 'Bearer realm="meterpoort"'},
            )
        if fault is not None and fault.kind == "status":
            self.requests.append(RequestLog(loop.time(), fault.status, 0, 0))
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return _problem(fault.status, "injected", "injected failure", headers=headers)
        if request.content_type != "text/plain":
            self.requests.append(RequestLog(loop.time(), 415, 0, 0))
            return _problem(415, "unsupported-media-type", "the body must be text/plain")
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            self.requests.append(RequestLog(loop.time(), 413, 0, request.content_length))
            return _problem(
                413, "body-too-large", f"the body exceeds {self.max_body_bytes} bytes"
            )
        body = await request.read()
        if len(body) > self.max_body_bytes:
            self.requests.append(RequestLog(loop.time(), 413, 0, len(body)))
            return _problem(413, "body-too-large", f"the body exceeds {self.max_body_bytes} bytes")
        if not body.strip():
            self.requests.append(RequestLog(loop.time(), 400, 0, 0))
            return _problem(400, "empty-body", "the body holds no telegram")
        accepted, rejected = self._ingest(token, body)
        assert self._arrived is not None
        async with self._arrived:
            self._arrived.notify_all()
        self.requests.append(
            RequestLog(loop.time(), 0 if fault else 200, accepted + len(rejected), len(body))
        )
        if fault is not None and fault.kind == "lose-response":
            return _drop(request)
        return web.json_response({"accepted": accepted, "rejected": rejected})

    def _ingest(self, token: str, body: bytes) -> tuple[int, list[dict[str, object]]]:
        accepted = 0
        rejected: list[dict[str, object]] = []
        index = 0
        pos = 0
        allowed = self.bound_meters.get(token)
        for match in _TELEGRAM.finditer(body):
            if body[pos : match.start()].strip():
                # bytes between telegrams that are not one: a rejected item of their own
                rejected.append(
                    {"index": index, "reason": "bad-frame", "detail": "not a telegram"}
                )
                index += 1
            pos = match.end()
            telegram = match.group(0)
            outcome = _check(telegram, match.group(1), allowed)
            if outcome is None and self.reject_if is not None:
                outcome = self.reject_if(telegram)
            if outcome is None:
                self.received.append(telegram)
                accepted += 1
            else:
                reason, detail = outcome
                self.rejected.append((telegram, reason))
                rejected.append({"index": index, "reason": reason, "detail": detail})
            index += 1
        if body[pos:].strip():
            rejected.append({"index": index, "reason": "bad-frame", "detail": "not a telegram"})
        return accepted, rejected


def _check(
    telegram: bytes, crc_digits: bytes, allowed: frozenset[str] | None
) -> tuple[str, str] | None:
    if crc_digits:
        bang = telegram.rindex(b"!")
        if crc16.arc(telegram[: bang + 1]) != int(crc_digits, 16):
            return "bad-crc", "the CRC does not match"
    if allowed is not None:
        found = _METER_ID.search(telegram)
        meter = bytes.fromhex(found.group(1).decode()).decode("ascii", "replace") if found else ""
        if meter not in allowed:
            return "meter-not-bound", "the meter is not bound to this device"
    return None


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _problem(
    status: int, slug: str, detail: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    body = {
        "type": f"https://meterpoort.example/problems/{slug}",
        "title": slug.replace("-", " "),
        "status": status,
        "detail": detail,
    }
    response = web.json_response(body, status=status, headers=headers)
    response.content_type = PROBLEM_JSON
    return response


def _drop(request: web.Request) -> web.StreamResponse:
    """Abort the TCP connection: the client sees a disconnect, never a response."""
    transport = request.transport
    assert transport is not None
    transport.abort()
    # aiohttp cannot write this on an aborted transport; the client only sees the disconnect
    return web.Response(status=500)
