"""Field devices (P1 dongles, Raspberry Pis): registration with a token shown once, rebinding to
other meters after a meter exchange, revocation of a stolen or retired dongle, the list.

The admin API (gateway.api.handlers.admin) and the CLI (gateway.cli.registry) call these. A
rebind or revocation NOTIFYs ``meterpoort_device`` (a trigger on ``devices``, migration 0011), so
every gateway process forgets its cached device look-ups at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from gateway import metrics
from gateway.errors import ConflictError, FieldError, NotFoundError, ValidationError
from gateway.services.registry import MeterId
from gateway.storage import audit
from gateway.tokens import generate_token, hash_token


class DeviceIn(BaseModel):
    """A field device to register (or rebind), bound to the meter equipment ids it reads."""

    model_config = ConfigDict(extra="forbid")

    meter_ids: list[MeterId] = Field(min_length=1, max_length=32)


@dataclass(frozen=True, slots=True)
class NewDevice:
    """A device just registered; ``token`` exists only here (the database keeps its hash)."""

    device_id: uuid.UUID
    token: str
    meter_ids: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "device_id": str(self.device_id),
            "token": self.token,
            "meter_ids": list(self.meter_ids),
        }


async def add_device(
    conn: asyncpg.Connection, meter_ids: Iterable[str], *, actor: str = "admin"
) -> NewDevice:
    """Register a device bound to ``meter_ids``; the returned token is shown once."""
    ids = tuple(dict.fromkeys(meter_ids))  # de-duplicated, order kept
    if not ids:
        raise ValidationError(
            "a device needs at least one meter id", [FieldError(("meter_ids",), "empty")]
        )
    token = generate_token()
    async with conn.transaction():
        device_id: uuid.UUID = await conn.fetchval(
            "INSERT INTO devices (token_hash, meter_ids) VALUES ($1, $2) RETURNING device_id",
            hash_token(token),
            list(ids),
        )
        # the token itself is never recorded, only that one was issued and for what
        await audit.append(
            conn,
            kind=audit.KIND_TOKEN_CREATE,
            actor=actor,
            subject=None,
            ean=None,
            detail={"token": "device", "device_id": device_id, "meter_ids": list(ids)},
        )
    metrics.DEVICES_REGISTERED.inc()
    return NewDevice(device_id, token, ids)


def device_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A device as the admin API shows it (never its token)."""
    return {
        "device_id": row["device_id"],
        "meter_ids": list(row["meter_ids"]),
        "created_at": row["created_at"],
        "revoked_at": row["revoked_at"],
    }


_DEVICE_COLUMNS = "device_id, meter_ids, created_at, revoked_at"


async def list_devices(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every registered device, oldest first."""
    rows = await conn.fetch(f"SELECT {_DEVICE_COLUMNS} FROM devices ORDER BY created_at, device_id")
    return [device_json(r) for r in rows]


async def rebind_device(
    conn: asyncpg.Connection,
    device_id: uuid.UUID,
    meter_ids: Iterable[str],
    *,
    actor: str = "admin",
) -> dict[str, Any]:
    """Bind a device to other meter ids (after a meter exchange); its token stays valid.
    Every gateway process drops the device from its credential cache (NOTIFY from the devices
    trigger, migration 0011)."""
    ids = list(dict.fromkeys(meter_ids))
    async with conn.transaction():
        row = await conn.fetchrow(
            f"UPDATE devices SET meter_ids = $2 WHERE device_id = $1 RETURNING {_DEVICE_COLUMNS}",
            device_id,
            ids,
        )
        if row is None:
            raise NotFoundError(f"no device {device_id}")
        if row["revoked_at"] is not None:
            raise ConflictError(f"device {device_id} is revoked; register a new one")
        await audit.append(
            conn,
            kind=audit.KIND_REGISTRY_CHANGE,
            actor=actor,
            subject=None,
            ean=None,
            detail={"change": "device-rebound", "device_id": device_id, "meter_ids": ids},
        )
    return device_json(row)


async def revoke_device(
    conn: asyncpg.Connection, device_id: uuid.UUID, *, actor: str = "admin"
) -> dict[str, Any]:
    """Revoke a device's token (a stolen or retired dongle): refused from now on in every
    gateway process (NOTIFY from the devices trigger). Revoking twice changes nothing."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE devices SET revoked_at = coalesce(revoked_at, now()) WHERE device_id = $1"
            f" RETURNING {_DEVICE_COLUMNS}",
            device_id,
        )
        if row is None:
            raise NotFoundError(f"no device {device_id}")
        await audit.append(
            conn,
            kind=audit.KIND_TOKEN_REVOKE,
            actor=actor,
            subject=None,
            ean=None,
            detail={"change": "device-revoked", "device_id": device_id},
        )
    return device_json(row)
