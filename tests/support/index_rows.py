"""Rows for ``gateway.ingest.consent_index.ConsentIndex`` from the flat shape unit tests and
benchmarks find easiest to write: one row per (EAN, meter, contract window, level)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

Row = dict[str, Any]


def split_rows(
    connections: Iterable[Mapping[str, Any]], consents: Iterable[Mapping[str, Any]] = ()
) -> tuple[list[Row], list[Row], list[Row]]:
    """``(installations, contracts, consents)`` of flat connection rows (``ean``, ``ean_num``,
    ``commodity``, ``meter_id``, ``contract_start``, ``contract_end``, ``level``): each row is
    one contract with its meter installed for exactly the contract's window. Consents without
    a ``contract_id`` go to the last contract of their EAN."""
    installations: list[Row] = []
    contracts: list[Row] = []
    last: dict[str, uuid.UUID] = {}
    for row in connections:
        contract_id = row.get("contract_id") or uuid.uuid4()
        last[row["ean"]] = contract_id
        installations.append(
            {
                "ean": row["ean"],
                "ean_num": row["ean_num"],
                "commodity": row["commodity"],
                "meter_id": row["meter_id"],
                "installed_from": row["contract_start"],
                "installed_until": row["contract_end"],
            }
        )
        contracts.append(
            {
                "ean": row["ean"],
                "contract_id": contract_id,
                "contract_start": row["contract_start"],
                "contract_end": row["contract_end"],
                "level": row["level"],
            }
        )
    out = [{"contract_id": last.get(c["ean"]), **c} for c in consents]
    return installations, contracts, out
