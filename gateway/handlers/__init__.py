"""HTTP handlers, one module per audience; shared request helpers live here.

Handlers raise gateway errors; ``gateway.middleware`` turns them into problem+json.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any, TypeVar

import pydantic
from aiohttp import web

from gateway.errors import BadRequestError, FieldError, UnsupportedMediaTypeError, ValidationError

M = TypeVar("M", bound=pydantic.BaseModel)


def validation_error(exc: pydantic.ValidationError, where: str = "body") -> ValidationError:
    """A 422 listing every invalid field of a pydantic error (without echoing the input)."""
    fields = [FieldError((where, *e["loc"]), e["msg"]) for e in exc.errors(include_input=False)]
    names = ", ".join(".".join(str(p) for p in f.loc[1:]) or where for f in fields)
    return ValidationError(f"invalid {where}: {names}", fields)


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


def rfc3339(value: dt.datetime) -> str:
    """An aware datetime as RFC 3339 in UTC with a ``Z`` suffix."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return rfc3339(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response; datetimes become RFC 3339 UTC strings, UUIDs strings."""
    return web.Response(
        status=status,
        body=json.dumps(data, default=json_default).encode("utf-8"),
        content_type="application/json",
    )
