"""The one error map: consent-domain refusals that reach the middleware become 4xx problems."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consent.errors import (
    ConsentEndedError,
    ConsentError,
    ConsentLifetimeError,
    UnknownPurposeError,
)
from gateway.api.middleware import make_problem_middleware


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ConsentEndedError("consent x already ended"), 409),
        (ConsentLifetimeError("expires_at is more than the maximum lifetime"), 422),
        (UnknownPurposeError("unknown purpose 'x'"), 422),
        (ConsentError("notice_version must not be empty"), 422),
    ],
)
async def test_domain_errors_are_problems_not_500s(error: ConsentError, status: int) -> None:
    async def refusing(request: web.Request) -> web.Response:
        raise error

    app = web.Application(middlewares=[make_problem_middleware(5, 1024)])
    app.router.add_post("/", refusing)
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        resp = await client.post("/")
        assert resp.status == status
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["detail"] == str(error)
