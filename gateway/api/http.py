"""Request and response helpers shared by the HTTP handlers.

Handlers raise gateway errors; ``gateway.api.middleware`` turns them into problem+json.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import pydantic
from aiohttp import web

from gateway.errors import (
    AuthenticationError,
    BadRequestError,
    UnsupportedMediaTypeError,
    validation_error,
)
from gateway.jsonenc import dumps

M = TypeVar("M", bound=pydantic.BaseModel)


def bearer_token(request: web.Request) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; AuthenticationError otherwise."""
    header = request.headers.get("Authorization")
    if header is None:
        raise AuthenticationError("missing Authorization header (expected 'Bearer <token>')")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("malformed Authorization header (expected 'Bearer <token>')")
    return token


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; 415 for another media type, 400 for unreadable JSON."""
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaTypeError(f"expected a JSON body (application/json), got {ctype!r}")
    raw = await request.read()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from exc


async def read_model(request: web.Request, model: type[M]) -> M:
    """The request body validated as ``model``; ValidationError (422) lists every bad field."""
    data = await read_json(request)
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise validation_error(exc) from exc


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response; datetimes become RFC 3339 UTC strings, UUIDs strings."""
    return web.Response(
        status=status,
        body=dumps(data).encode("utf-8"),
        content_type="application/json",
    )
