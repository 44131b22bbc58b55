"""The data clients' operations (``GET /v1/readings``, ``GET /v1/consents``): their response
models and entries (handlers: ``gateway.api.handlers.data_client``).

``GET /v1/readings`` keeps its hand encoding (PostgreSQL spells the JSON, see
``gateway.storage.readings_query``): ``Reading`` describes it and the conformance test validates
real pages, NDJSON lines and the CSV header against it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Final, Literal

from pydantic import Field, RootModel

from gateway.api.handlers.data_client import (
    CONSENT_PAGE_DEFAULT,
    CONSENT_PAGE_MAX,
    CSV,
    JSON,
    NDJSON,
)
from gateway.api.openapi.common import Commodity, ConsentEndReason, Ean18, Out, Reading
from gateway.api.openapi.spec import (
    EAN_SCHEMA,
    TIME_PARAM,
    TOKEN_OR_CERTIFICATE_401,
    UUID_SCHEMA,
    Operation,
    Response,
    problems,
    query_param,
)
from gateway.services.clients import GRANULARITIES
from gateway.storage import readings_query
from gateway.storage.schema import CUSTOMER_ID_RE

TAG: Final = "data-client"


class ReadingsPage(Out):
    """A page of readings; pass ``next_cursor`` (same parameters) for the next one."""

    readings: list[Reading]
    next_cursor: str | None = Field(description="null: this was the last page")


class Tombstone(Out):
    """Readings of one connection and granularity deleted since the sync token: every period
    from ``first_period_start`` to ``last_period_start`` (both inclusive)."""

    deleted: Literal[True]
    ean: Ean18
    commodity: Commodity
    granularity: Literal["P1M", "P1D", "PT1H", "PT15M"]
    first_period_start: dt.datetime
    last_period_start: dt.datetime
    reason: str = Field(
        description="why: a consent end reason (revoked, expired, contract-ended, move-out, "
        "switch), erasure, level-lowered, or deleted"
    )


class SyncPage(Out):
    """A page of a ``changed_since`` pull: tombstones (first page), readings stored or replaced
    since the token, and on the last page the token of the next sync pull."""

    readings: list[Reading]
    deleted: list[Tombstone]
    next_cursor: str | None = Field(description="null: this was the last page")
    next_changed_since: str | None = Field(
        description="on the last page: pass it as `changed_since` next time"
    )


class ReadingsAnswer(RootModel[ReadingsPage | SyncPage]):
    """A page of a window pull, or of a sync pull (``changed_since``)."""


class ReadingsLine(RootModel[Reading | Tombstone]):
    """One NDJSON line: a reading, or (sync pulls) a tombstone."""


class ChangedConsent(Out):
    """The consent a change is about, as it is now."""

    consent_id: uuid.UUID
    ean: Ean18
    purpose: str
    granted_at: dt.datetime
    expires_at: dt.datetime | None
    ended_at: dt.datetime | None
    end_reason: ConsentEndReason | None
    state: Literal["active", "expired", "ended"]


class ConsentChange(Out):
    """A grant, end or expiry of a consent for one of the client's purposes."""

    event_id: uuid.UUID = Field(description="identifies the change (it may be listed twice)")
    kind: Literal["granted", "ended", "expired"]
    at: dt.datetime = Field(description="when it took effect")
    changed_at: dt.datetime = Field(description="when it was recorded")
    consent: ChangedConsent


class ConsentChanges(Out):
    """Changes ordered by change time; poll again with ``next_changed_since``."""

    changes: list[ConsentChange]
    next_changed_since: dt.datetime


OPERATIONS: Final[list[Operation]] = [
    Operation(
        "GET",
        "/v1/readings",
        "listReadings",
        TAG,
        "Readings this client may see (billing pull)",
        description=(
            "Daily and monthly readings of every connection; interval readings only where an "
            "interval consent for one of the client's purposes covered the measurement (after "
            "the consent ended: only for purposes that keep their data). Each reading carries "
            "the supply contract in force on its connection when it was measured and that "
            "contract's customer (`contract_id`, `customer_id`). Half-open range "
            "[from, to) on period_start; a bare date is local midnight (Europe/Amsterdam). "
            "`Accept: application/x-ndjson` or `text/csv` streams everything; JSON (default) "
            "answers in pages with `next_cursor`. Every request is in the customers' access "
            "logs.\n\nIncremental sync: `changed_since=0` (the first pull; `from`/`to` then "
            "optional) or `changed_since=<token>` returns only the readings stored or replaced "
            "since the pull that issued the token, deletions first as tombstones (JSON "
            "`deleted`, NDJSON lines, CSV rows with the extra columns `deleted,"
            "last_period_start,reason`), and a new token: JSON `next_changed_since` on the last "
            "page; NDJSON and CSV in the `Meterpoort-Changed-Token` response header, sent before "
            "the body. A token is bound to the client and granularity; a bad one is a 400 "
            "problem. Readings may repeat (upsert by `ean` and `period_start`). Expiry by the "
            "retention rules makes no tombstones; a consent that expires hides interval readings "
            "without deleting them (see `GET /v1/consents`)."
        ),
        security="clientToken",
        parameters=(
            query_param(
                "granularity",
                {"type": "string", "enum": list(GRANULARITIES)},
                "one of the client's granularities (403 otherwise)",
                required=True,
            ),
            query_param(
                "from",
                TIME_PARAM,
                "start of the range (inclusive); required unless `changed_since` is given",
            ),
            query_param(
                "to",
                TIME_PARAM,
                "end of the range (exclusive); required unless `changed_since` is given",
            ),
            query_param(
                "changed_since",
                {"type": "string"},
                "sync pull: `0` the first time, then the `next_changed_since` (JSON) or "
                "`Meterpoort-Changed-Token` (streams) of the previous sync pull",
            ),
            {
                "name": "ean",
                "in": "query",
                "required": False,
                "description": "only these connections (repeatable)",
                "schema": {
                    "type": "array",
                    "items": EAN_SCHEMA,
                    "maxItems": readings_query.MAX_EANS,
                },
                "style": "form",
                "explode": True,
            },
            query_param(
                "customer_id",
                {"type": "string", "pattern": f"^{CUSTOMER_ID_RE.pattern}$"},
                "only readings measured under this customer's contracts",
            ),
            query_param(
                "contract_id", UUID_SCHEMA, "only readings measured under this supply contract"
            ),
            query_param(
                "cursor",
                {"type": "string"},
                "JSON pages: `next_cursor` of the previous page, same parameters",
            ),
            query_param(
                "limit",
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": readings_query.MAX_LIMIT,
                    "default": readings_query.DEFAULT_LIMIT,
                },
                "JSON pages: page size",
            ),
        ),
        responses={
            200: Response(
                "readings ordered by (ean, period_start); NDJSON: one `Reading` (sync pulls: "
                "or `Tombstone`) per line",
                {
                    JSON: ReadingsAnswer,
                    NDJSON: ReadingsLine,
                    CSV: {
                        "type": "string",
                        "description": f"header line `{readings_query.CSV_HEADER}` (sync pulls: "
                        f"`{readings_query.CSV_SYNC_HEADER}`), then one reading or tombstone per "
                        "line; empty fields are null or of the other commodity",
                    },
                },
            )
        },
        problems=problems(
            400,
            401,
            403,
            406,
            422,
            503,
            says={
                400: "`cursor` or `changed_since` is not one this API issued for these parameters",
                401: TOKEN_OR_CERTIFICATE_401,
                403: "the client may not read this granularity",
                422: "invalid query parameters (listed in `errors`); `cursor`/`limit` with a "
                "stream",
            },
        ),
    ),
    Operation(
        "GET",
        "/v1/consents",
        "listConsentChanges",
        TAG,
        "Consent changes for this client's purposes (reconciliation)",
        description="Grants, ends and expiries of interval consents for the client's "
        "purposes recorded at or after `changed_since`, oldest first. Audited.",
        security="clientToken",
        parameters=(
            query_param(
                "changed_since",
                TIME_PARAM,
                "pass `next_changed_since` of the previous answer",
                required=True,
            ),
            query_param(
                "limit",
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": CONSENT_PAGE_MAX,
                    "default": CONSENT_PAGE_DEFAULT,
                },
                "most changes per answer (an instant is never split: a full page may hold more)",
            ),
        ),
        responses={200: Response("the changes", {JSON: ConsentChanges})},
        problems=problems(401, 422, 503, says={401: TOKEN_OR_CERTIFICATE_401}),
    ),
]
