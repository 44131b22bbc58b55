"""Bearer tokens: generation, hashing, the admin check and device look-up.

Tokens are 32 random bytes, URL-safe base64; only their SHA-256 is stored (a token is shown once,
at creation). SHA-256 without salt is enough because tokens are random, not passwords: there is no
dictionary to try. Comparisons of secrets are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg
from aiohttp import web

from gateway.errors import AuthenticationError
from gateway.settings import Settings

TOKEN_BYTES = 32

_K = TypeVar("_K")
_V = TypeVar("_V")


def generate_token() -> str:
    """A fresh random bearer token (32 bytes of entropy, URL-safe base64, 43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> bytes:
    """The SHA-256 digest under which a token is stored and looked up."""
    return hashlib.sha256(token.encode("utf-8")).digest()


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


def check_admin(request: web.Request, settings: Settings) -> None:
    """Raise AuthenticationError unless the request carries the configured admin token."""
    token = bearer_token(request)
    if settings.admin_token is None:
        raise AuthenticationError("the admin API is disabled: METERPOORT_ADMIN_TOKEN is not set")
    expected = settings.admin_token.get_secret_value().encode("utf-8")
    # compare digests so the comparison time depends on neither token's length
    if not hmac.compare_digest(hash_token(token), hashlib.sha256(expected).digest()):
        raise AuthenticationError("invalid admin token")


@dataclass(frozen=True, slots=True)
class Device:
    """A registered field device and the meter equipment ids it may push telegrams for."""

    device_id: uuid.UUID
    meter_ids: frozenset[str]


class TtlCache(Generic[_K, _V]):
    """A small bounded cache whose entries expire ``ttl`` seconds after they were stored.

    Not thread-safe; meant for one event loop. Oldest entries are evicted first when full.
    """

    def __init__(self, maxsize: int, ttl: float) -> None:
        self._maxsize = maxsize
        self._ttl = ttl
        self._data: OrderedDict[_K, tuple[float, _V]] = OrderedDict()

    def get(self, key: _K) -> tuple[bool, _V | None]:
        """``(True, value)`` for a live entry, ``(False, None)`` for a miss or an expired one."""
        item = self._data.get(key)
        if item is None:
            return False, None
        expires, value = item
        if expires < time.monotonic():
            del self._data[key]
            return False, None
        return True, value

    def put(self, key: _K, value: _V) -> None:
        self._data[key] = (time.monotonic() + self._ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self._maxsize:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


#: Seconds a device look-up (or a miss) is trusted; revoking a device takes effect within this.
DEVICE_CACHE_TTL_S = 30.0
# Keyed by the token hash (never the token). Misses are cached too, so a device retrying with a
# wrong token does not cost a query per request; a new token is never looked up before it exists.
_device_cache: TtlCache[bytes, Device | None] = TtlCache(maxsize=100_000, ttl=DEVICE_CACHE_TTL_S)


async def device_for_token(pool: asyncpg.Pool, token: str) -> Device | None:
    """The active device holding ``token``, or None; cached for ``DEVICE_CACHE_TTL_S`` seconds."""
    digest = hash_token(token)
    hit, device = _device_cache.get(digest)
    if hit:
        return device
    row = await pool.fetchrow(
        "SELECT device_id, meter_ids FROM devices WHERE token_hash = $1 AND revoked_at IS NULL",
        digest,
    )
    device = None if row is None else Device(row["device_id"], frozenset(row["meter_ids"]))
    _device_cache.put(digest, device)
    return device


def clear_device_cache() -> None:
    """Forget every cached device look-up (after a revocation in this process, and in tests)."""
    _device_cache.clear()
