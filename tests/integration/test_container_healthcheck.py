"""The container image's HEALTHCHECK command (deploy/Dockerfile), run as the engine runs it, with
the image's interpreter and no curl: healthy against a real gateway on a real database, unhealthy
when /readyz answers 503 or nothing listens."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]

DOCKERFILE = Path(__file__).resolve().parents[2] / "deploy" / "Dockerfile"


def healthcheck_command() -> list[str]:
    (check,) = [
        ins["value"]
        for ins in DockerfileParser(path=str(DOCKERFILE)).structure
        if ins["instruction"] == "HEALTHCHECK"
    ]
    command: list[str] = json.loads(check.split("CMD", 1)[1])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


async def run_healthcheck(port: int) -> int:
    # the image sets METERPOORT_PORT; the command must follow it
    env = {**os.environ, "METERPOORT_PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        *healthcheck_command(),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(proc.wait(), timeout=30)


async def test_healthcheck_passes_against_a_ready_gateway(
    gateway_client: TestClient[web.Request, web.Application],
) -> None:
    assert gateway_client.port is not None
    assert (await gateway_client.get("/readyz")).status == 200
    assert await run_healthcheck(gateway_client.port) == 0


async def test_healthcheck_fails_when_readyz_says_503() -> None:
    async def not_ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "draining"}, status=503)

    app = web.Application()
    app.router.add_get("/readyz", not_ready)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        assert server.port is not None
        assert await run_healthcheck(server.port) != 0
    finally:
        await server.close()


async def test_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    assert await run_healthcheck(port) != 0
