"""Hostile and broken HTTP at the socket: requests aiohttp cannot parse, slow clients, clients
that hang up mid-upload, and secrets in headers that must never reach a log.

Everything goes over raw sockets (``asyncio.open_connection``) to the gateway served on real
TCP, because an HTTP client library refuses to send most of these requests."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import metrics
from gateway.settings import Settings
from tests.support import free_port, make_ean
from tests.support.serving import get, wait_ready

Client = TestClient[web.Request, web.Application]

PROBLEM = "application/problem+json"
PROBLEMS = "https://meterpoort.nl/problems/"
#: a device-token-like secret planted in every hostile request; no log line may ever hold it
SECRET = "mpt_PLANTED-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
ABORTS = "meterpoort_http_client_aborts_total"
OUTAGES = "meterpoort_db_unavailable_total"
HEADER_TIMEOUT_S = 0.6
BODY_TIMEOUT_S = 0.6


@pytest.fixture
def gateway_settings(gateway_settings: Settings) -> Settings:
    return gateway_settings.model_copy(
        update={"header_read_timeout_s": HEADER_TIMEOUT_S, "body_read_timeout_s": BODY_TIMEOUT_S}
    )


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def sample(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name) or 0.0


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record as a handler would write it: message, arguments, traceback."""
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    return "\n".join(formatter.format(r) for r in caplog.records)


class Raw:
    """One raw TCP connection to the served gateway."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, client: Client) -> Raw:
        assert client.port is not None
        return cls(*await asyncio.open_connection("127.0.0.1", client.port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, within_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lower-case names), body."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), within_s)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in filter(None, lines):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await asyncio.wait_for(
            self.reader.readexactly(int(headers.get("content-length", "0"))), within_s
        )
        return int(status_line.split()[1]), headers, body

    async def closed_by_server(self, within_s: float) -> bool:
        """True once the server closed the connection (EOF or reset) within ``within_s``."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), within_s):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.writer.close()


def assert_problem(
    response: tuple[int, dict[str, str], bytes], status: int, slug: str
) -> dict[str, Any]:
    code, headers, body = response
    assert code == status, body
    assert headers["content-type"].startswith(PROBLEM)
    problem: dict[str, Any] = json.loads(body)
    assert problem["type"] == PROBLEMS + slug
    assert problem["status"] == status and problem["title"] and problem["detail"]
    return problem


GOOD_HEAD = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n"
AUTH = b"Authorization: Bearer " + SECRET.encode()

#: one request of each class aiohttp refuses before any handler runs → (status, problem slug)
MALFORMED: dict[str, tuple[bytes, int, str]] = {
    "request line too long": (
        b"GET /v1/" + SECRET.encode() + b"a" * 9000 + b" HTTP/1.1\r\nHost: g\r\n\r\n",
        431,
        "header-too-large",
    ),
    "header too long": (
        GOOD_HEAD + AUTH + b"x" * 9000 + b"\r\n\r\n",
        431,
        "header-too-large",
    ),
    "bad request line": (
        b"GET /v1/" + SECRET.encode() + b" HTTP/1.1 extra\r\nHost: g\r\n\r\n",
        400,
        "bad-request-line",
    ),
    "bad method": (
        b"G\x01T /" + SECRET.encode() + b" HTTP/1.1\r\nHost: g\r\n\r\n",
        400,
        "bad-request-line",
    ),
    "control byte in a header value": (
        GOOD_HEAD + AUTH + b"\x01\r\n\r\n",
        400,
        "malformed-request",
    ),
    "space in a header name": (
        GOOD_HEAD + b"Auth orization: Bearer " + SECRET.encode() + b"\r\n\r\n",
        400,
        "malformed-request",
    ),
    "conflicting Content-Length and Transfer-Encoding": (
        b"POST /v1/telegrams HTTP/1.1\r\nHost: g\r\n"
        + AUTH
        + b"\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "malformed-request",
    ),
    "a content coding aiohttp cannot decode": (
        b"POST /v1/telegrams HTTP/1.1\r\nHost: g\r\n"
        + AUTH
        + b"\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
        415,
        "unsupported-media-type",
    ),
    "bad chunk size": (
        b"POST /v1/telegrams HTTP/1.1\r\nHost: g\r\n"
        + AUTH
        + b"\r\nTransfer-Encoding: chunked\r\n\r\nzz"
        + SECRET.encode()
        + b"\r\n\r\n",
        400,
        "malformed-request",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_request_aiohttp_cannot_parse_gets_a_problem_that_quotes_nothing(
    case: str, gateway_client: Client, all_logs: pytest.LogCaptureFixture
) -> None:
    request, status, slug = MALFORMED[case]
    conn = await Raw.open(gateway_client)
    try:
        await conn.send(request)
        response = await conn.response()
        assert await conn.closed_by_server(5.0)
    finally:
        conn.close()
    problem = assert_problem(response, status, slug)
    assert "instance" not in problem  # the target could not be parsed
    assert SECRET.encode() not in response[2] and b"aaaa" not in response[2]
    refused = [r for r in all_logs.records if r.name == "gateway.api.protocol"]
    assert [(r.levelno, r.exc_info) for r in refused] == [(logging.INFO, None)]
    assert slug in refused[0].getMessage()
    assert not [r for r in all_logs.records if r.levelno >= logging.WARNING]
    assert SECRET not in logged_text(all_logs)


async def test_a_broken_chunk_after_the_handler_started_is_a_400_on_a_closed_connection(
    gateway_client: Client, all_logs: pytest.LogCaptureFixture
) -> None:
    """The head arrives first and the request reaches its handler; then the chunked body
    breaks: the handler's read fails, the answer is a 400 problem and the connection closes
    (no second answer, no error log quoting the chunk)."""
    conn = await Raw.open(gateway_client)
    try:
        await conn.send(
            b"POST /v1/admin/meters HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer test-admin-token-0123456789abcdef\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        await asyncio.sleep(0.1)
        await conn.send(b'4\r\n{"a"\r\nzz' + SECRET.encode() + b"\r\n")
        response = await conn.response()
        assert await conn.closed_by_server(5.0)
    finally:
        conn.close()
    assert_problem(response, 400, "invalid-body-framing")
    assert not [r for r in all_logs.records if r.levelno >= logging.WARNING]
    assert SECRET not in logged_text(all_logs)


async def healthz_ms(client: Client) -> float:
    started = time.perf_counter()
    resp = await client.get("/healthz")
    assert resp.status == 200
    return (time.perf_counter() - started) * 1000


async def test_a_slowloris_head_is_cut_off_while_others_are_served(
    gateway_client: Client, all_logs: pytest.LogCaptureFixture
) -> None:
    conn = await Raw.open(gateway_client)
    started = time.monotonic()
    try:
        await conn.send(GOOD_HEAD)

        async def trickle() -> None:
            # a header line every 100 ms: always progress, never an end
            for n in range(100):
                await conn.send(b"X-Slow-%d: %s\r\n" % (n, SECRET.encode()))
                await asyncio.sleep(0.1)

        trickling = asyncio.create_task(trickle())
        # others are served at once meanwhile
        assert max([await healthz_ms(gateway_client) for _ in range(5)]) < 200
        response = await conn.response(within_s=HEADER_TIMEOUT_S + 5)
        elapsed = time.monotonic() - started
        assert await conn.closed_by_server(2.0)
        trickling.cancel()
        await asyncio.gather(trickling, return_exceptions=True)
    finally:
        conn.close()
    assert HEADER_TIMEOUT_S <= elapsed < HEADER_TIMEOUT_S + 1.0
    problem = assert_problem(response, 408, "request-timeout")
    assert "instance" not in problem
    assert SECRET not in logged_text(all_logs)


async def test_an_idle_keep_alive_connection_is_not_a_slow_request(gateway_client: Client) -> None:
    """The header clock starts with a request's first byte, not when the previous answer
    was sent: an idle keep-alive connection stays open and usable."""
    conn = await Raw.open(gateway_client)
    try:
        await conn.send(GOOD_HEAD + b"\r\n")
        assert (await conn.response())[0] == 200
        assert not await conn.closed_by_server(HEADER_TIMEOUT_S * 3)
        await conn.send(GOOD_HEAD + b"\r\n")
        assert (await conn.response())[0] == 200
    finally:
        conn.close()


async def test_a_stalled_body_is_answered_408_and_closed_while_others_are_served(
    gateway_client: Client, admin_headers: dict[str, str], all_logs: pytest.LogCaptureFixture
) -> None:
    conn = await Raw.open(gateway_client)
    try:
        await conn.send(
            b"POST /v1/admin/meters HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\n"
            + f"Authorization: {admin_headers['Authorization']}\r\n".encode()
            + b"Content-Length: 1000\r\n\r\n"
            + b'{"ean": "'
            + SECRET.encode()
        )
        started = time.monotonic()
        assert max([await healthz_ms(gateway_client) for _ in range(5)]) < 200
        response = await conn.response(within_s=BODY_TIMEOUT_S + 5)
        elapsed = time.monotonic() - started
        assert await conn.closed_by_server(2.0)
    finally:
        conn.close()
    assert BODY_TIMEOUT_S <= elapsed < BODY_TIMEOUT_S + 1.0
    problem = assert_problem(response, 408, "request-timeout")
    assert problem["instance"] == "/v1/admin/meters"
    assert not [r for r in all_logs.records if r.levelno >= logging.WARNING]
    assert SECRET not in logged_text(all_logs)


async def test_a_body_that_keeps_coming_is_not_cut_off(
    gateway_client: Client, admin_headers: dict[str, str]
) -> None:
    """The body clock measures pauses, not the whole upload: a slow but steady body that takes
    longer than the timeout in total is read to its end."""
    body = json.dumps({"meter_ids": ["NOSUCHMETER"]}).encode()
    conn = await Raw.open(gateway_client)
    try:
        await conn.send(
            b"POST /v1/admin/devices HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\n"
            + f"Authorization: {admin_headers['Authorization']}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        step = BODY_TIMEOUT_S / 3
        pieces = [body[i : i + 4] for i in range(0, len(body), 4)]
        assert len(pieces) * step > BODY_TIMEOUT_S * 2
        for piece in pieces:
            await asyncio.sleep(step)
            await conn.send(piece)
        status, _, answer = await conn.response()
    finally:
        conn.close()
    assert status != 408, answer


async def test_a_client_hanging_up_mid_upload_is_a_client_abort_not_a_database_outage(
    gateway_client: Client, admin_headers: dict[str, str], all_logs: pytest.LogCaptureFixture
) -> None:
    ean = make_ean(7)
    resp = await gateway_client.post(
        "/v1/admin/meters",
        json={
            "ean": ean,
            "commodity": "electricity",
            "meter_id": "E0000000000000007",
            "customer_id": "cust-7",
            "contract_start": "2026-01-01T00:00:00+00:00",
        },
        headers=admin_headers,
    )
    assert resp.status == 201, await resp.text()
    resp = await gateway_client.post(
        "/v1/admin/devices", json={"meter_ids": ["E0000000000000007"]}, headers=admin_headers
    )
    assert resp.status == 201, await resp.text()
    token = (await resp.json())["token"]

    aborts, outages = sample(ABORTS), sample(OUTAGES)
    conn = await Raw.open(gateway_client)
    await conn.send(
        b"POST /v1/telegrams HTTP/1.1\r\nHost: g\r\nContent-Type: text/plain\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Length: 100000\r\n\r\n".encode()
        + b"/ISK5\\2M550T-1012\r\n\r\n1-3:0.2.8(50)\r\n"
    )
    await asyncio.sleep(0.2)  # the handler is reading the body now
    conn.writer.transport.abort()  # a reset, as a device losing its link

    for _ in range(250):
        if sample(ABORTS) != aborts:
            break
        await asyncio.sleep(0.02)
    assert sample(ABORTS) == aborts + 1
    assert sample(OUTAGES) == outages
    assert not [r for r in all_logs.records if r.levelno >= logging.WARNING]
    assert token not in logged_text(all_logs)
    # the gateway is fine: the next request is answered
    assert await healthz_ms(gateway_client) < 1000


@pytest.fixture
def served(database_url: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``python -m gateway serve`` on this test's database, logging at DEBUG to stderr."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "METERPOORT_LOG_LEVEL": "DEBUG",
        "METERPOORT_RETENTION_ENABLED": "false",
        "METERPOORT_SHUTDOWN_DRAIN_S": "0",  # no load balancer to wait for
        "METERPOORT_WEBHOOK_ENABLED": "false",
        "METERPOORT_HEADER_READ_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=30)


async def test_serve_answers_protocol_errors_as_problems_and_logs_no_secret(
    served: tuple[subprocess.Popen[str], str],
) -> None:
    proc, base = served
    port = int(base.rsplit(":", 1)[1])
    answers = []
    for case in sorted(MALFORMED):
        request, status, slug = MALFORMED[case]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = Raw(reader, writer)
        try:
            await conn.send(request)
            answers.append((await conn.response(), status, slug))
        finally:
            conn.close()
    slow = await asyncio.open_connection("127.0.0.1", port)
    conn = Raw(*slow)
    try:
        await conn.send(GOOD_HEAD + AUTH + b"\r\n")
        answers.append((await conn.response(within_s=HEADER_TIMEOUT_S + 5), 408, "request-timeout"))
    finally:
        conn.close()
    for response, status, slug in answers:
        assert_problem(response, status, slug)
    assert (await asyncio.to_thread(get, base + "/healthz"))[0] == 200
    proc.terminate()
    _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    refused = [e for e in lines if e["logger"] == "gateway.api.protocol"]
    assert len(refused) == len(MALFORMED) + 1
    assert {e["level"] for e in refused} == {"INFO"}
    assert not [e for e in lines if e["level"] in ("WARNING", "ERROR", "CRITICAL")], stderr
    assert SECRET not in stderr


async def test_a_broken_body_that_no_handler_reads_is_no_error(
    gateway_client: Client, all_logs: pytest.LogCaptureFixture
) -> None:
    """A request refused before its body is read (here: a wrong token) whose gzip body is
    garbage: aiohttp drains the body after the answer and meets the broken encoding there. That
    is the client's fault: an INFO line, not an ERROR with a traceback."""
    body = b"\x1f\x8b\x08\x00garbage" + SECRET.encode() * 10
    conn = await Raw.open(gateway_client)
    try:
        await conn.send(
            b"POST /v1/telegrams HTTP/1.1\r\nHost: g\r\nContent-Type: text/plain\r\n"
            b"Authorization: Bearer wrong\r\nContent-Encoding: gzip\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        await asyncio.sleep(0.2)  # the handler has answered 401 before the body came
        await conn.send(body)
        assert_problem(await conn.response(), 401, "unauthorized")
        assert await conn.closed_by_server(5.0)
    finally:
        conn.close()
    assert not [r for r in all_logs.records if r.levelno >= logging.WARNING]
    assert SECRET not in logged_text(all_logs)
