"""Names and row shapes of the tables, in one place: the six reading tables (migration 0001) and
the mapping of a ``consents`` row to the domain's ``Consent``.

Every module that names a reading table takes the name from here, so a table added or renamed
is changed once.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from consent.levels import INTERVAL_GRANULARITIES
from consent.model import Channel, Consent, EndReason

_E_REGISTERS: Final = ("import_t1_wh", "import_t2_wh", "export_t1_wh", "export_t2_wh")
_G_REGISTERS: Final = ("volume_dm3",)


@dataclass(frozen=True, slots=True)
class ReadingTable:
    """One reading table: its commodity, granularity and register columns."""

    name: str
    commodity: str
    granularity: str
    registers: tuple[str, ...]

    @property
    def interval(self) -> bool:
        """True for the consent-based tables (periods shorter than a day)."""
        return self.granularity in INTERVAL_GRANULARITIES


E_PT15M: Final = ReadingTable("readings_e_pt15m", "electricity", "PT15M", _E_REGISTERS)
E_P1D: Final = ReadingTable("readings_e_p1d", "electricity", "P1D", _E_REGISTERS)
E_P1M: Final = ReadingTable("readings_e_p1m", "electricity", "P1M", _E_REGISTERS)
G_PT1H: Final = ReadingTable("readings_g_pt1h", "gas", "PT1H", _G_REGISTERS)
G_P1D: Final = ReadingTable("readings_g_p1d", "gas", "P1D", _G_REGISTERS)
G_P1M: Final = ReadingTable("readings_g_p1m", "gas", "P1M", _G_REGISTERS)

#: the six reading tables by name, in export order
READING_TABLES: Final[dict[str, ReadingTable]] = {
    t.name: t for t in (E_P1M, E_P1D, E_PT15M, G_P1M, G_P1D, G_PT1H)
}
#: the interval (consent-based) table per commodity
INTERVAL_TABLE: Final = {"electricity": E_PT15M.name, "gas": G_PT1H.name}
#: the daily/monthly tables per commodity
BILLING_TABLES: Final = {
    "electricity": (E_P1D.name, E_P1M.name),
    "gas": (G_P1D.name, G_P1M.name),
}
#: granularity → the tables holding it
GRANULARITY_TABLES: Final[dict[str, tuple[ReadingTable, ...]]] = {
    "P1M": (E_P1M, G_P1M),
    "P1D": (E_P1D, G_P1D),
    "PT1H": (G_PT1H,),
    "PT15M": (E_PT15M,),
}


def in_contract(measured: str, k: str = "k") -> str:
    """SQL: the time ``measured`` lies in contract ``k``'s window ``[contract_start,
    contract_end)``: the rule by which a reading belongs to a contract (SPEC §3a), for the
    ingest guard, the billing pull's join and retention alike."""
    return (
        f"{k}.contract_start <= {measured}"
        f" AND ({k}.contract_end IS NULL OR {measured} < {k}.contract_end)"
    )


#: what a customer id may hold: a CRM/IdP identifier, printable without spaces, quotes or
#: backslashes, so it travels verbatim inside the COPY-encoded reading lines
#: (gateway.storage.readings_query spells JSON around raw column text)
CUSTOMER_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@|=-]{0,127}")

#: the largest value of a bigint column (sequence numbers): a bound for numbers clients send
BIGINT_MAX: Final = 2**63 - 1
#: the largest register value a reading holds (Wh, dm³): the electricity registers are int4
#: (migration 0014), above DSMR's largest (F9(3,3) kWh: 999,999,999 Wh; F8(3,3) m³: 99,999,999
#: dm³); ingest refuses a telegram carrying more, gas included, so every register has one range
REGISTER_MAX: Final = 2**31 - 1

#: the columns of a consent as services and the API read it
CONSENT_COLUMNS: Final = (
    "ean, consent_id, customer_id, purpose, data_class, notice_version, channel, granted_at,"
    " expires_at, ended_at, end_reason, contract_id"
)


def consent_from_row(row: Mapping[str, Any]) -> Consent:
    """The domain consent of a ``consents`` row (``channel`` may be absent: API by default)."""
    end_reason = row["end_reason"]
    consent_id = row["consent_id"]
    return Consent(
        consent_id=consent_id if isinstance(consent_id, uuid.UUID) else uuid.UUID(str(consent_id)),
        ean=row["ean"],
        customer_id=row["customer_id"],
        purpose=row["purpose"],
        notice_version=row["notice_version"],
        granted_at=row["granted_at"],
        expires_at=row["expires_at"],
        ended_at=row["ended_at"],
        end_reason=None if end_reason is None else EndReason(end_reason),
        channel=Channel(row.get("channel") or Channel.API),
        data_class=row.get("data_class") or "interval",
    )
