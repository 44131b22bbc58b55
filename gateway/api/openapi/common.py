"""Response models more than one audience answers with: problems, readings, consents.

Every response model forbids members it does not declare (``extra="forbid"``, which pydantic
writes as ``additionalProperties: false``): the conformance test then fails when a handler
starts sending a member the document does not know, instead of the document lagging behind.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.services import registry
from gateway.services.clients import Granularity
from gateway.storage.schema import REGISTER_MAX

Commodity = Literal["electricity", "gas"]
Ean18 = Annotated[str, Field(pattern="^[0-9]{18}$", description="EAN-18 connection code")]
#: the enums of the domain, spelled out so the document shows their values where they are
#: used (tests/unit/test_openapi_document.py checks them against the domain's)
LevelName = Literal["none", "monthly", "daily"]
ChannelName = Literal["portal", "phone", "api"]
OnRevokeName = Literal["keep", "delete"]
#: why a contract ended (SPEC §3a)
ContractEndReason = registry.EndReason
#: why a consent ended: its own reasons, and the end of its contract (with the contract's reason)
ConsentEndReason = Literal["revoked", "expired", "contract-ended", "move-out", "switch", "erasure"]
#: a consent's state as its customer sees it
ConsentStatus = Literal[
    "active", "revoked", "expired", "contract-ended", "move-out", "switch", "erasure"
]


class Out(BaseModel):
    """A response body: undeclared members are a mismatch (module docstring)."""

    model_config = ConfigDict(extra="forbid")


class FieldProblem(Out):
    """One invalid input: where (``["body", "ean"]``, ``["query", "limit"]``) and why."""

    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem details; ``type`` is a stable URI under
    https://meterpoort.nl/problems/. Some problems carry more members (extensions), named in
    their operation's description."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="stable problem type URI")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    instance: str | None = Field(default=None, description="the request path")
    errors: list[FieldProblem] | None = Field(default=None, description="422: every invalid input")


# ---------------------------------------------------------------------------------------------
# readings


#: a register value: what ingest stores (the int4 columns of migration 0014)
Register = Annotated[int, Field(ge=0, le=REGISTER_MAX)]


class ElectricityRegisters(Out):
    """Electricity meter registers in Wh; null where the meter has no T1/T2 split."""

    import_t1_wh: Register | None
    import_t2_wh: Register | None
    export_t1_wh: Register | None
    export_t2_wh: Register | None


class GasRegisters(Out):
    """The gas meter register in dm³."""

    volume_dm3: Register


def _registers_one_of(schema: dict[str, Any]) -> None:
    # pydantic writes a plain union as anyOf; the branches exclude each other (all members
    # required, no others), so oneOf says the same more precisely
    registers = schema["properties"]["registers"]
    registers["oneOf"] = registers.pop("anyOf")


class Reading(Out):
    """A reading (SPEC §5), as GET /v1/readings (JSON, NDJSON) and the customer export send it.
    CSV sends the same fields flat: the registers as columns, empty where null or of the
    other commodity."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_registers_one_of)

    ean: Ean18
    contract_id: uuid.UUID = Field(
        description="the supply contract in force on the connection when it was measured"
    )
    customer_id: str = Field(description="that contract's customer")
    commodity: Commodity
    granularity: Granularity
    period_start: dt.datetime
    measured_at: dt.datetime
    registers: ElectricityRegisters | GasRegisters = Field(
        description="electricity or gas registers, by `commodity`"
    )


# ---------------------------------------------------------------------------------------------
# consents


class Consent(Out):
    """An interval-data consent as stored (admin API)."""

    consent_id: uuid.UUID
    ean: Ean18
    customer_id: str
    purpose: str
    data_class: Literal["interval"]
    notice_version: str
    channel: ChannelName
    granted_at: dt.datetime
    expires_at: dt.datetime | None = Field(description="null: no expiry")
    ended_at: dt.datetime | None = Field(description="null: not ended")
    end_reason: ConsentEndReason | None
    contract_id: uuid.UUID = Field(
        description="the supply contract the consent belongs to; it ends with it"
    )


class EndedConsent(Consent):
    """An ended consent and how many interval readings the end deleted."""

    deleted_readings: int = Field(ge=0)


class CustomerConsent(Consent):
    """A consent as its customer sees it: its status, and what happens to its data when it
    ends (null: the purpose is no longer configured)."""

    status: ConsentStatus = Field(
        description="`active` while in force, else `expired`, `contract-ended` or the end reason"
    )
    on_revoke: OnRevokeName | None
