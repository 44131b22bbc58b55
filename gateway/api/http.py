"""Request and response helpers shared by the HTTP handlers.

Handlers raise gateway errors; ``gateway.api.middleware`` turns them into problem+json.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, TypeVar

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

#: Content-Encoding values whose bodies aiohttp has decoded before ``request.read()`` answers;
#: any other value (br and zstd need optional packages, lists and unknown codings are passed
#: through undecoded) would hand the raw coded bytes to a handler as if they were the body
DECODED_CODINGS: Final = frozenset(("", "identity", "gzip", "deflate"))

#: text PostgreSQL cannot store: U+0000, and lone surrogates (not encodable as UTF-8)
UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")
# JSON can only spell those as \u escapes: a body without one needs no walk over its values
_UNSTORABLE_ESCAPE: Final = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


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


async def read_body(request: web.Request) -> bytes:
    """The request body, decoded from its Content-Encoding; 415 for a coding the gateway does
    not decode (400 for a body its coding cannot decode, 413 past the size limit: both raised
    by aiohttp while reading)."""
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding not in DECODED_CODINGS:
        raise UnsupportedMediaTypeError(
            f"content coding {coding[:32]!r} is not supported; send identity, gzip or deflate"
        )
    # a body its coding or chunking cannot decode raises web.RequestPayloadError here: the
    # middleware answers it (invalid-body-framing) and closes the connection
    return await request.read()


def unstorable_text(value: Any) -> bool:
    """True when a string anywhere in ``value`` (a decoded JSON document, member names
    included) holds text PostgreSQL refuses (``UNSTORABLE``)."""
    # iterative: the document may be nested as deep as json.loads allows
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if UNSTORABLE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; 415 for another media type, 400 for unreadable JSON, JSON
    nested too deep to parse, or strings PostgreSQL cannot store (U+0000, lone surrogates)."""
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaTypeError(f"expected a JSON body (application/json), got {ctype!r}")
    try:
        # RFC 8259 §8.1: JSON on the wire is UTF-8 (json.loads would also guess UTF-16/32)
        text = (await read_body(request)).decode("utf-8-sig")
        data = json.loads(text)
    except ValueError as exc:
        # JSONDecodeError, UnicodeDecodeError, and the plain ValueError of an integer literal
        # beyond Python's 4,300-digit conversion limit
        raise BadRequestError(f"the body is not valid JSON: {exc}") from exc
    except RecursionError:
        raise BadRequestError("the body is JSON nested too deeply") from None
    if _UNSTORABLE_ESCAPE.search(text) and unstorable_text(data):
        raise BadRequestError(
            "the body holds a NUL character (\\u0000) or a lone surrogate (\\ud800-\\udfff)"
        )
    return data


async def read_model(request: web.Request, model: type[M]) -> M:
    """The request body validated as ``model``; ValidationError (422) lists every bad field."""
    data = await read_json(request)
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise validation_error(exc) from exc


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response; datetimes become RFC 3339 UTC strings, UUIDs strings."""
    return json_body_response(dumps(data).encode("utf-8"), status)


def json_body_response(body: bytes, status: int = 200) -> web.Response:
    """A JSON response of an already encoded ``body``."""
    return web.Response(status=status, body=body, content_type="application/json")
