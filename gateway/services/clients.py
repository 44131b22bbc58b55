"""Data clients: the supplier's billing system and other recipients of readings.

A client has a name, the granularities it may read (``P1M``, ``P1D``, ``PT1H``, ``PT15M``), the
consent purposes it reads interval data for, and optionally a webhook URL for consent-end pushes.
Its bearer token is 32 random bytes shown once (at creation and at each rotation); the table
keeps only the SHA-256 (``gateway.tokens.hash_token``). Rotation replaces the hash, so the old
token stops working at once in the process that rotated it and within
``gateway.storage.credentials.CLIENT_CACHE_TTL_S`` in the others; so does revocation. Creation
and rotation are audited as ``token.create``, revocation as ``token.revoke``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import asyncpg
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from consent.model import DEFAULT_PURPOSES
from gateway.errors import ConflictError, NotFoundError
from gateway.storage import audit
from gateway.tokens import generate_token, hash_token

#: every granularity a client can be allowed to read
GRANULARITIES: Final = ("P1M", "P1D", "PT1H", "PT15M")
#: audit kind of a revoked token (creation and rotation are ``audit.KIND_TOKEN_CREATE``)
KIND_TOKEN_REVOKE: Final = "token.revoke"

Granularity = Literal["P1M", "P1D", "PT1H", "PT15M"]
#: a client's display name (API body and CLI argument)
ClientName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]


def _http_url(value: str) -> str:
    value = value.strip()
    scheme, sep, rest = value.partition("://")
    if sep == "" or scheme.lower() not in ("http", "https") or not rest or " " in value:
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


#: where a client's consent-change webhooks go (API body and CLI argument)
WebhookUrl = Annotated[str, StringConstraints(max_length=2048), AfterValidator(_http_url)]


class ClientIn(BaseModel):
    """``POST /v1/admin/clients`` body."""

    model_config = ConfigDict(extra="forbid")

    name: ClientName
    granularities: list[Granularity] = Field(min_length=1, max_length=4)
    purposes: list[str] = Field(default_factory=list, max_length=32)
    webhook_url: WebhookUrl | None = None

    @field_validator("granularities")
    @classmethod
    def _unique_granularities(cls, value: list[Granularity]) -> list[Granularity]:
        return sorted(set(value), key=GRANULARITIES.index)

    @field_validator("purposes")
    @classmethod
    def _known_purposes(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(DEFAULT_PURPOSES))
        if unknown:
            allowed = ", ".join(sorted(DEFAULT_PURPOSES))
            raise ValueError(f"unknown purpose(s) {', '.join(unknown)}; configured: {allowed}")
        return sorted(set(value))


@dataclass(frozen=True, slots=True)
class NewToken:
    """A client token just issued; ``token`` exists only here (the database keeps its hash)."""

    client_id: uuid.UUID
    token: str
    client: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {**self.client, "client_id": str(self.client_id), "token": self.token}


_COLUMNS = (
    "client_id, name, granularities, purposes, webhook_url, created_at, rotated_at, revoked_at"
)


def client_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A client row as API JSON (never the token or its hash)."""
    return {
        "client_id": row["client_id"],
        "name": row["name"],
        "granularities": list(row["granularities"]),
        "purposes": list(row["purposes"]),
        "webhook_url": row["webhook_url"],
        "created_at": row["created_at"],
        "rotated_at": row["rotated_at"],
        "revoked_at": row["revoked_at"],
    }


async def add_client(conn: asyncpg.Connection, new: ClientIn, *, actor: str = "admin") -> NewToken:
    """Register a client; the returned token is shown once."""
    token = generate_token()
    async with conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO clients (name, token_hash, granularities, purposes, webhook_url)"
            f" VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}",
            new.name,
            hash_token(token),
            list(new.granularities),
            new.purposes,
            new.webhook_url,
        )
        assert row is not None
        await audit.append(
            conn,
            kind=audit.KIND_TOKEN_CREATE,
            actor=actor,
            subject=None,
            ean=None,
            detail={
                "token": "client",
                "client_id": row["client_id"],
                "name": new.name,
                "granularities": list(new.granularities),
                "purposes": new.purposes,
            },
        )
    return NewToken(row["client_id"], token, client_json(row))


async def _locked(conn: asyncpg.Connection, client_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM clients WHERE client_id = $1 FOR UPDATE", client_id
    )
    if row is None:
        raise NotFoundError(f"no client {client_id}")
    if row["revoked_at"] is not None:
        raise ConflictError(f"client {client_id} was revoked; register a new client instead")
    return row


async def rotate_client(
    conn: asyncpg.Connection, client_id: uuid.UUID, *, actor: str = "admin"
) -> NewToken:
    """Give the client a new token; the old one stops working. The new token is shown once."""
    token = generate_token()
    async with conn.transaction():
        await _locked(conn, client_id)
        row = await conn.fetchrow(
            "UPDATE clients SET token_hash = $2, rotated_at = now() WHERE client_id = $1"
            f" RETURNING {_COLUMNS}",
            client_id,
            hash_token(token),
        )
        assert row is not None
        await audit.append(
            conn,
            kind=audit.KIND_TOKEN_CREATE,
            actor=actor,
            subject=None,
            ean=None,
            detail={"token": "client", "client_id": client_id, "rotated": True},
        )
    return NewToken(client_id, token, client_json(row))


async def revoke_client(
    conn: asyncpg.Connection, client_id: uuid.UUID, *, actor: str = "admin"
) -> dict[str, Any]:
    """Revoke the client: its token stops working; the record stays for the audit trail."""
    async with conn.transaction():
        await _locked(conn, client_id)
        row = await conn.fetchrow(
            f"UPDATE clients SET revoked_at = now() WHERE client_id = $1 RETURNING {_COLUMNS}",
            client_id,
        )
        assert row is not None
        await audit.append(
            conn,
            kind=KIND_TOKEN_REVOKE,
            actor=actor,
            subject=None,
            ean=None,
            detail={"token": "client", "client_id": client_id},
        )
    return client_json(row)


async def get_client(conn: asyncpg.Connection, client_id: uuid.UUID) -> dict[str, Any]:
    """One client (active or revoked) as JSON; NotFoundError if unknown."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM clients WHERE client_id = $1", client_id)
    if row is None:
        raise NotFoundError(f"no client {client_id}")
    return client_json(row)


async def list_clients(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every client, oldest first."""
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM clients ORDER BY created_at, client_id")
    return [client_json(r) for r in rows]
