"""Test support code shared by integration and e2e tests (fakes of our own interfaces)."""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from typing import Any

import asyncpg

from consent.ean import ean_check_digit


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_ean(n: int) -> str:
    """A valid 18-digit EAN (GS1 check digit) numbered ``n``."""
    body = f"8716{n:013d}"
    return body + str(ean_check_digit(body))


def meter_body(n: int, **changes: Any) -> dict[str, Any]:
    """The admin API's body registering connection ``n`` (electricity, one meter, a contract
    from 2024), with ``changes`` applied."""
    body: dict[str, Any] = {
        "ean": make_ean(n),
        "commodity": "electricity",
        "meter_id": f"E00{n:014d}",
        "customer_id": f"cust-{n}",
        "contract_start": "2024-01-01T00:00:00+01:00",
    }
    body.update(changes)
    return body


async def insert_consent(
    conn: asyncpg.Connection,
    *,
    ean: str,
    customer_id: str,
    purpose: str,
    granted_at: dt.datetime,
    expires_at: dt.datetime | None = None,
    notice_version: str = "v1",
    channel: str = "api",
) -> uuid.UUID:
    """Write a consent and its ``granted`` event with SQL, bypassing the grant rules of
    ``gateway.services.consents.create_consent`` (e.g. a consent that has expired already);
    its id."""
    consent_id = uuid.uuid4()
    async with conn.transaction():
        # the consent belongs to the contract in force at the grant (else the EAN's latest)
        await conn.execute(
            "INSERT INTO consents (ean, consent_id, customer_id, purpose, notice_version,"
            " channel, granted_at, expires_at, contract_id) VALUES ($1, $2, $3, $4, $5, $6, $7,"
            " $8, (SELECT contract_id FROM contracts WHERE ean = $1"
            " ORDER BY (contract_start <= $7 AND (contract_end IS NULL OR contract_end > $7))"
            " DESC, contract_start DESC LIMIT 1))",
            ean,
            consent_id,
            customer_id,
            purpose,
            notice_version,
            channel,
            granted_at,
            expires_at,
        )
        await conn.execute(
            "INSERT INTO consent_events (ean, consent_id, kind, at, detail)"
            " VALUES ($1, $2, 'granted', $3, $4)",
            ean,
            consent_id,
            granted_at,
            {"purpose": purpose, "notice_version": notice_version, "channel": channel},
        )
    return consent_id
