"""Who holds a bearer token: the active device or data client stored under its hash.

Look-ups are cached per application (``Credentials``, one per app instance, never a module
global), keyed by the token's hash, never the token. Misses are cached too, so a device retrying
with a wrong token does not cost a query per request; a new token is never looked up before it
exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from gateway.storage.db import acquire
from gateway.tokens import TtlCache, hash_token

#: Seconds a device look-up (or a miss) is trusted when no change is heard of: a rebind or
#: revocation NOTIFYs every process, which then forgets its cached devices at once.
DEVICE_CACHE_TTL_S = 30.0
#: Seconds a client look-up (or a miss) is trusted in a process; other processes see a rotation
#: or revocation within this (clients make few, large requests, so a short TTL costs little).
CLIENT_CACHE_TTL_S = 5.0

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Device:
    """A registered field device and the meter equipment ids it may push telegrams for."""

    device_id: uuid.UUID
    meter_ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class Client:
    """An active data client and what it may read."""

    client_id: uuid.UUID
    name: str
    granularities: frozenset[str]
    purposes: frozenset[str]
    webhook_url: str | None

    @property
    def actor(self) -> str:
        """The audit actor of this client's actions."""
        return f"client:{self.client_id}"


async def device_by_token_hash(conn: asyncpg.Connection, digest: bytes) -> Device | None:
    """The active (not revoked) device whose token hashes to ``digest``, or None."""
    row = await conn.fetchrow(
        "SELECT device_id, meter_ids FROM devices WHERE token_hash = $1 AND revoked_at IS NULL",
        digest,
    )
    return None if row is None else Device(row["device_id"], frozenset(row["meter_ids"]))


async def client_by_token_hash(conn: asyncpg.Connection, digest: bytes) -> Client | None:
    """The active (not revoked) client whose token hashes to ``digest``, or None."""
    row = await conn.fetchrow(
        "SELECT client_id, name, granularities, purposes, webhook_url FROM clients"
        " WHERE token_hash = $1 AND revoked_at IS NULL",
        digest,
    )
    if row is None:
        return None
    return Client(
        row["client_id"],
        row["name"],
        frozenset(row["granularities"]),
        frozenset(row["purposes"]),
        row["webhook_url"],
    )


class Credentials:
    """The device and client token look-ups of one application, each behind its own cache.

    A look-up waits at most ``acquire_timeout_s`` for a pooled connection (then
    DatabaseUnavailableError, a 503): an exhausted pool never leaves a request hanging.
    """

    def __init__(self, pool: asyncpg.Pool, acquire_timeout_s: float = 5.0) -> None:
        self._pool = pool
        self._wait_s = acquire_timeout_s
        self._devices: TtlCache[bytes, Device | None] = TtlCache(100_000, DEVICE_CACHE_TTL_S)
        self._clients: TtlCache[bytes, Client | None] = TtlCache(10_000, CLIENT_CACHE_TTL_S)

    async def device(self, token: str) -> Device | None:
        """The active device holding ``token``, or None."""
        return await self._cached(self._devices, device_by_token_hash, token)

    async def client(self, token: str) -> Client | None:
        """The active client holding ``token``, or None."""
        return await self._cached(self._clients, client_by_token_hash, token)

    def forget_clients(self) -> None:
        """Drop cached client look-ups: a rotation or revocation here takes effect at once."""
        self._clients.clear()

    def forget_devices(self) -> None:
        """Drop cached device look-ups."""
        self._devices.clear()

    async def _cached(
        self,
        cache: TtlCache[bytes, _T | None],
        lookup: Callable[[asyncpg.Connection, bytes], Awaitable[_T | None]],
        token: str,
    ) -> _T | None:
        digest = hash_token(token)
        hit, value = cache.get(digest)
        if hit:
            return value
        async with acquire(self._pool, self._wait_s) as conn:
            value = await lookup(conn, digest)
        cache.put(digest, value)
        return value
