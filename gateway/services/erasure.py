"""Erasure (SPEC §4, GDPR art. 17): erase what may be erased of a customer's data, and say what
is kept, why and until when.

Erasure deletes interval readings (PT15M/PT1H, consent-based, no legal hold) and ends every open
consent (reason ``erasure``); daily/monthly readings are kept while the fiscal hold runs (7 years
after the contract ends) and deleted once it has passed; consent records, level history, the
registry entry and the audit trail are kept as proof. The answer lists each kept class with why
and until when.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from consent.model import EndReason, Purpose
from consent.retention import RetentionPolicy, add_years
from gateway.services.consents import end_consents_of_contract
from gateway.services.customers import CONNECTION_COLUMNS, CONTRACT_WINDOW, CONTRACTS_FROM
from gateway.storage import audit, tombstones
from gateway.storage.schema import BILLING_TABLES, INTERVAL_TABLE, READING_TABLES


async def erase(
    conn: asyncpg.Connection,
    customer_id: str,
    *,
    actor: str,
    retention: RetentionPolicy,
    purposes: dict[str, Purpose] | None = None,
) -> dict[str, Any]:
    """Erase what may be erased of the customer's data in ONE transaction; returns
    ``{erased: {...counts}, kept: [{what, why, until, until_rule}], at}`` (module docstring)."""
    erased: dict[str, int] = {name: 0 for name in READING_TABLES}
    erased["consents_ended"] = 0
    kept: list[dict[str, Any]] = []
    async with conn.transaction():
        now: dt.datetime = await conn.fetchval("SELECT now()")
        # the customer's contracts, each erased inside its own window only (SPEC §3a: nothing
        # of the tenant before or after); lock order by EAN, like every multi-connection writer,
        # so two erasures cannot deadlock
        connections = await conn.fetch(
            f"SELECT {CONNECTION_COLUMNS} FROM {CONTRACTS_FROM} WHERE k.customer_id = $1"
            " ORDER BY k.ean, k.contract_start FOR UPDATE OF k",
            customer_id,
        )
        for k in connections:
            ean, commodity = k["ean"], k["commodity"]
            window = (k["ean_num"], k["contract_start"], k["contract_end"])
            # end the consents first: their ends (reason 'erasure') lock the consent rows ingest
            # shares, so no interval row of this contract can be inserted once this commits
            ended = await end_consents_of_contract(
                conn, ean, k["contract_id"], now, EndReason.ERASURE, purposes=purposes, actor=actor
            )
            erased["consents_ended"] += len(ended)
            interval = INTERVAL_TABLE[commodity]
            await tombstones.label(conn, tombstones.ERASURE)
            status = await conn.execute(
                f"DELETE FROM {interval} r WHERE r.ean = $1 AND {CONTRACT_WINDOW}", *window
            )
            erased[interval] += int(status.rsplit(" ", 1)[-1])

            hold_until = (
                None
                if k["contract_end"] is None
                else add_years(k["contract_end"], retention.daily_years)
            )
            billing = BILLING_TABLES[commodity]
            if hold_until is not None and hold_until <= now:
                for name in billing:
                    await tombstones.label(conn, tombstones.ERASURE)
                    status = await conn.execute(
                        f"DELETE FROM {name} r WHERE r.ean = $1 AND {CONTRACT_WINDOW}", *window
                    )
                    erased[name] += int(status.rsplit(" ", 1)[-1])
                continue
            counts = []
            for name in billing:
                n = await conn.fetchval(
                    f"SELECT count(*) FROM {name} r WHERE r.ean = $1 AND {CONTRACT_WINDOW}", *window
                )
                counts.append(f"{n} {READING_TABLES[name].granularity}")
            running = k["contract_end"] is None or k["contract_end"] > now
            kept.append(
                {
                    "what": f"daily and monthly readings of connection {ean} ({', '.join(counts)})",
                    "why": "needed for billing and the supplier's fiscal records, lawful without"
                    " consent (Elektriciteitswet 1998 art. 26ab); fiscal retention is"
                    f" {retention.daily_years} years after the supply contract ends"
                    " (Algemene wet inzake rijksbelastingen art. 52)"
                    + (
                        "; collected while the contract runs (lower the level to object to"
                        " daily readings)"
                        if running
                        else ""
                    ),
                    "until": hold_until,
                    "until_rule": f"{retention.daily_years} years after the contract ends",
                }
            )
        # what gateway.jobs.retention will do with what stays: consent records go when their end
        # (now ended, at the latest now) is interval_years + consent_extra_years in the past
        consents = await conn.fetchrow(
            "SELECT count(*) AS n,"
            " max(least(c.ended_at, c.expires_at, k.contract_end)) AS last_end"
            " FROM consents c JOIN contracts k ON k.ean = c.ean AND k.contract_id = c.contract_id"
            " WHERE c.customer_id = $1",
            customer_id,
        )
        if consents["n"]:
            proof_years = retention.interval_years + retention.consent_extra_years
            kept.append(
                {
                    "what": f"{consents['n']} consent record(s) and their permission log",
                    "why": "proof of what was consented to, when and how, and that the processing"
                    " before each end was lawful (GDPR art. 7(1) and 5(2))",
                    "until": add_years(consents["last_end"], proof_years),
                    "until_rule": f"{proof_years} years after the consent ended (as long as the"
                    " interval data it justified could be held, plus"
                    f" {retention.consent_extra_years} year)",
                }
            )
        if connections:
            kept.append(
                {
                    "what": "the activity log of access to and changes of your data, the registry"
                    " record of your connection(s) and their level history",
                    "why": "tamper-evident accountability record (GDPR art. 5(2)): the audit"
                    " trail is a hash chain, a row cannot be removed without breaking its"
                    " verification; it holds ids, times and counts, never reading values",
                    "until": None,
                    "until_rule": "no automatic deletion yet: kept until the audit trail can be"
                    " trimmed at a verified checkpoint",
                }
            )
        await audit.append(
            conn,
            kind=audit.KIND_ERASURE,
            actor=actor,
            subject=customer_id,
            ean=None,
            detail={
                "eans": sorted({k["ean"] for k in connections}),
                "contracts": [k["contract_id"] for k in connections],
                "erased": erased,
            },
        )
    return {"at": now, "erased": erased, "kept": kept}
