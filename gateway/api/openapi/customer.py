"""The customer API's operations (``/v1/me/...``, customer JWT) and the portal's files: their
response models and entries (handlers: ``gateway.api.handlers.customer``, ``gateway.api.portal``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Final, Literal

from pydantic import Field

from gateway.api.handlers.customer import LOG_PAGE_DEFAULT, LOG_PAGE_MAX, ConsentGrantIn, LevelIn
from gateway.api.openapi.common import (
    ChannelName,
    Commodity,
    ContractEndReason,
    CustomerConsent,
    Ean18,
    LevelName,
    OnRevokeName,
    Out,
    Reading,
)
from gateway.api.openapi.spec import (
    EAN_SCHEMA,
    JSON,
    TIME_PARAM,
    UUID_SCHEMA,
    Operation,
    Response,
    path_param,
    problems,
    query_param,
)
from gateway.services.consumption import MAX_SPAN
from gateway.storage.schema import BIGINT_MAX, READING_TABLES

TAG: Final = "customer"
_ME: Final = "customerToken"


class Contract(Out):
    """One of the customer's supply contracts: a connection as the customer sees it (SPEC §3a)."""

    ean: Ean18
    contract_id: uuid.UUID
    commodity: Commodity
    meter_id: str | None = Field(description="the meter installed last within the contract")
    level: LevelName
    contract_start: dt.datetime
    contract_end: dt.datetime | None = Field(description="exclusive; null: open-ended")
    end_reason: ContractEndReason | None


class ContractWithConsents(Contract):
    """A contract with its consents; ``current``: in force now, the only contracts a level can
    be set or a consent granted on."""

    current: bool
    consents: list[CustomerConsent]


class PurposeInfo(Out):
    """A configured purpose a consent can be given for."""

    name: str
    description: str
    on_revoke: OnRevokeName


class MyConnections(Out):
    """The customer's contracts (ended ones included, by EAN and start) and the purposes."""

    customer_id: str
    connections: list[ContractWithConsents]
    purposes: list[PurposeInfo]
    max_consent_lifetime_days: int


class LevelChange(Out):
    """The outcome of setting a level; ``deleted_readings``: reading table → rows deleted."""

    ean: Ean18
    level: LevelName
    previous_level: LevelName
    changed: bool
    at: dt.datetime | None = Field(description="when it changed; null: it already was")
    deleted_readings: dict[str, int]


class ReceiptSignature(Out):
    """An Ed25519 signature over the receipt's canonical JSON (keys at GET /v1/keys)."""

    alg: Literal["Ed25519"]
    kid: str
    value: str = Field(description="base64url")


class SignedReceipt(Out):
    """A consent receipt (Kantara Consent Receipt v1.1 fields) and its signature."""

    receipt: dict[str, Any]
    signature: ReceiptSignature


class GrantedConsent(Out):
    """The consent and its signed receipt."""

    consent: CustomerConsent
    receipt: SignedReceipt


class RevokedCustomerConsent(CustomerConsent):
    """The ended consent and how many interval readings the revocation deleted."""

    deleted_readings: int = Field(ge=0)


class RevokedConsent(Out):
    """The ended consent and its signed receipt."""

    consent: RevokedCustomerConsent
    receipt: SignedReceipt


class ConsentLogEntry(Out):
    """A consent's grant, revocation, expiry or other end (``reason``)."""

    at: dt.datetime
    event: Literal["granted", "revoked", "expired", "ended"]
    ean: Ean18
    consent_id: uuid.UUID
    purpose: str
    notice_version: str
    channel: ChannelName
    reason: str | None = Field(default=None, description="only with `ended`: why")


class LevelLogEntry(Out):
    """A level change of a connection during the customer's contract."""

    at: dt.datetime
    event: Literal["level-changed"]
    ean: Ean18
    level: LevelName
    channel: str | None


class PermissionLog(Out):
    """Permission log entries, newest first."""

    entries: list[ConsentLogEntry | LevelLogEntry]


class ReadEntry(Out):
    """A client's read of the customer's readings or consents."""

    seq: int
    at: dt.datetime
    kind: Literal["read"]
    data: Literal["readings", "consents"]
    actor: str
    client_id: uuid.UUID | None
    client_name: str | None
    granularity: str | None
    from_: dt.datetime | None = Field(alias="from")
    to: dt.datetime | None
    eans: list[Ean18] = Field(description="the customer's EANs among those read")


class ExportEntry(Out):
    """An export of the customer's own data."""

    seq: int
    at: dt.datetime
    kind: Literal["export"]
    actor: str
    format: Literal["json", "csv"] | None
    tables: list[str] | None
    eans: list[Ean18]


class AccessLog(Out):
    """Access log entries, newest first; pass ``next_before_seq`` as ``before_seq`` for more."""

    entries: list[ReadEntry | ExportEntry]
    next_before_seq: int | None


class ConsumptionPeriod(Out):
    """One period's consumption: the increase of the registers from its reading (measured
    ``measured_from``) to the next period's (``measured_to``). Electricity periods carry
    ``import_wh``/``export_wh`` (T1 + T2), gas periods ``volume_dm3``."""

    period_start: dt.datetime
    period_end: dt.datetime
    contract_id: uuid.UUID
    measured_from: dt.datetime
    measured_to: dt.datetime
    import_wh: int | None = Field(default=None, ge=0)
    export_wh: int | None = Field(default=None, ge=0)
    volume_dm3: int | None = Field(default=None, ge=0)


class IntervalRange(Out):
    """The first and last period of the customer's stored interval readings on a connection."""

    granularity: Literal["PT15M", "PT1H"]
    first: dt.datetime
    last: dt.datetime


class Consumption(Out):
    """Consumption per period on one connection, gaps left out; ``interval``: where a day's
    interval profile can be shown (null: no interval readings stored)."""

    ean: Ean18
    commodity: Commodity
    granularity: Literal["P1M", "P1D", "PT1H", "PT15M"]
    from_: dt.datetime = Field(alias="from")
    to: dt.datetime
    unit: Literal["Wh", "dm3"]
    periods: list[ConsumptionPeriod]
    interval: IntervalRange | None


class ExportedConsent(CustomerConsent):
    """A consent with its signed receipt."""

    receipt: SignedReceipt


class Export(Out):
    """Everything held about the customer (GDPR art. 15 and 20)."""

    format: Literal["meterpoort-export-1"]
    customer_id: str
    generated_at: dt.datetime
    connections: list[Contract]
    consents: list[ExportedConsent]
    permission_log: list[ConsentLogEntry | LevelLogEntry]
    access_log: list[ReadEntry | ExportEntry]
    readings: dict[str, list[Reading]] = Field(
        description="reading table → the readings measured inside your contracts"
    )


class KeptData(Out):
    """Data an erasure kept: what, why, until when (null: no automatic deletion yet)."""

    what: str
    why: str
    until: dt.datetime | None
    until_rule: str


class Erasure(Out):
    """What an erasure erased (reading table → rows) and what it kept."""

    at: dt.datetime
    erased: dict[str, int]
    kept: list[KeptData]


#: commodity → the registers (CSV columns after measured_at) of its reading tables
_REGISTERS: Final = {t.commodity: t.registers for t in READING_TABLES.values()}
_EAN: Final = path_param(
    "ean", EAN_SCHEMA, "EAN-18 of one of your connections (a bad check digit: 422)"
)
_LIMIT: Final = query_param(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": LOG_PAGE_MAX, "default": LOG_PAGE_DEFAULT},
    "most entries",
)

OPERATIONS: Final[list[Operation]] = [
    Operation(
        "GET",
        "/v1/me/connections",
        "getMyConnections",
        TAG,
        "Your supply contracts (current and ended) with their connection, level and consents",
        security=_ME,
        responses={
            200: Response("one entry per contract, and the purposes", {JSON: MyConnections})
        },
        problems=problems(401, 503),
    ),
    Operation(
        "PUT",
        "/v1/me/connections/{ean}/level",
        "setMyLevel",
        TAG,
        "Set the remote-reading level of your connection (daily, monthly, none)",
        description="Lowering acts from now on: readings of granularities the new level does "
        "not allow, measured at or after the change, are deleted; earlier ones are kept under "
        "the billing retention (use POST /v1/me/erasure).",
        security=_ME,
        parameters=(_EAN,),
        request={JSON: LevelIn},
        responses={200: Response("the new level", {JSON: LevelChange})},
        problems=problems(
            400,
            401,
            404,
            409,
            413,
            415,
            422,
            503,
            says={
                404: "not one of your connections",
                409: "no contract of yours is in force on it now",
                422: "invalid fields (listed in `errors`), or not an EAN-18",
            },
        ),
    ),
    Operation(
        "POST",
        "/v1/me/consents",
        "grantMyConsent",
        TAG,
        "Grant an interval-data consent on your connection",
        security=_ME,
        request={JSON: ConsentGrantIn},
        responses={201: Response("the consent and its signed receipt", {JSON: GrantedConsent})},
        problems=problems(
            400,
            401,
            404,
            409,
            413,
            415,
            422,
            503,
            says={
                404: "not one of your connections",
                409: "a consent for this purpose is already active, or no contract is in force",
            },
        ),
    ),
    Operation(
        "POST",
        "/v1/me/consents/{id}/revoke",
        "revokeMyConsent",
        TAG,
        "Revoke your consent; effective before the answer",
        security=_ME,
        parameters=(path_param("id", UUID_SCHEMA, "consent id (anything else answers 404)"),),
        responses={
            200: Response("the ended consent and its signed receipt", {JSON: RevokedConsent})
        },
        problems=problems(
            401, 404, 409, 503, says={404: "not one of your consents", 409: "already ended"}
        ),
    ),
    Operation(
        "GET",
        "/v1/me/permission-log",
        "getMyPermissionLog",
        TAG,
        "Your permission log: grants, revocations, expiries, ends, level changes",
        security=_ME,
        parameters=(_LIMIT,),
        responses={200: Response("entries, newest first", {JSON: PermissionLog})},
        problems=problems(401, 422, 503),
    ),
    Operation(
        "GET",
        "/v1/me/access-log",
        "getMyAccessLog",
        TAG,
        "Who read which of your readings (client, time, granularity, period), and your exports",
        security=_ME,
        parameters=(
            _LIMIT,
            query_param(
                "before_seq",
                {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX},
                "`next_before_seq` of the previous page",
            ),
        ),
        responses={200: Response("entries, newest first", {JSON: AccessLog})},
        problems=problems(401, 422, 503),
    ),
    Operation(
        "GET",
        "/v1/me/consumption",
        "getMyConsumption",
        TAG,
        "Your consumption per period on one of your connections (the portal's charts)",
        description="Computed from your stored readings inside your contracts' windows (SPEC "
        "§3a): a period's amount is the increase from its reading (the earliest measured in the "
        "period, SPEC §3) to the next period's. Periods without both readings, or with a meter "
        "exchange between them, are left out (gaps). At most "
        + ", ".join(f"{span.days} days of {g}" for g, span in MAX_SPAN.items())
        + " per request. The read is in your access log.",
        security=_ME,
        parameters=(
            query_param("ean", EAN_SCHEMA, "EAN-18 of one of your connections", required=True),
            query_param(
                "granularity",
                {"type": "string", "enum": list(MAX_SPAN)},
                "PT15M for electricity, PT1H for gas, P1D or P1M for both",
                required=True,
            ),
            query_param("from", TIME_PARAM, "periods starting at or after it", required=True),
            query_param("to", TIME_PARAM, "periods starting before it", required=True),
        ),
        responses={200: Response("amounts per period, gaps left out", {JSON: Consumption})},
        problems=problems(
            400,
            401,
            404,
            422,
            503,
            says={404: "not one of your connections", 422: "invalid or too long a range"},
        ),
    ),
    Operation(
        "GET",
        "/v1/me/export",
        "exportMyData",
        TAG,
        "Everything held about you: JSON, or one reading table as CSV",
        description="Readings of your contracts' windows only (SPEC §3a), each with its "
        "`contract_id` and `customer_id`. CSV header: `ean,contract_id,customer_id,"
        "commodity,granularity,period_start,measured_at,` then the table's registers ("
        + "; ".join(f"{c}: `{','.join(r)}`" for c, r in _REGISTERS.items())
        + "). The export is in your access log.",
        security=_ME,
        parameters=(
            query_param(
                "format", {"type": "string", "enum": ["json", "csv"], "default": "json"}, ""
            ),
            query_param(
                "table",
                {"type": "string", "enum": list(READING_TABLES)},
                "the reading table of a CSV export (required with format=csv); JSON: only it",
            ),
        ),
        responses={
            200: Response(
                "streamed export",
                {
                    JSON: Export,
                    "text/csv": {"type": "string", "description": "one reading table"},
                },
            )
        },
        problems=problems(401, 422, 503),
    ),
    Operation(
        "POST",
        "/v1/me/erasure",
        "eraseMyData",
        TAG,
        "Erase what may be erased; the answer lists what was kept, why, until when",
        security=_ME,
        responses={200: Response("erased counts and kept items", {JSON: Erasure})},
        problems=problems(401, 503),
    ),
]


def _asset(
    path: str, operation_id: str, summary: str, media: str, description: str = ""
) -> Operation:
    return Operation(
        "GET",
        path,
        operation_id,
        TAG,
        summary,
        description=description,
        responses={
            200: Response(summary, {media: {"type": "string"}}),
            304: Response("not modified (`If-None-Match` matched the `ETag`)"),
        },
    )


#: the portal's files (static: the page calls /v1/me/* itself)
PORTAL_OPERATIONS: Final[list[Operation]] = [
    _asset(
        "/portal",
        "getPortal",
        "The customer portal page",
        "text/html",
        "Connections and their data level, interval-data consents (grant and revoke, with the "
        "notice text), the permission and access logs, and a data export. Static: the page "
        "calls /v1/me/* with the customer token it receives in the URL fragment "
        "(`/portal#token=…`, never sent to the server) or that is pasted in.",
    ),
    _asset(
        "/portal/portal.js", "getPortalScript", "Script of the customer portal", "text/javascript"
    ),
    _asset(
        "/portal/portal.css", "getPortalStylesheet", "Stylesheet of the customer portal", "text/css"
    ),
]
