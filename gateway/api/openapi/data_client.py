"""The data clients' paths (``GET /v1/readings``, ``GET /v1/consents``) in /openapi.json."""

from __future__ import annotations

from typing import Any

from gateway.api.handlers.data_client import (
    CONSENT_PAGE_DEFAULT,
    CONSENT_PAGE_MAX,
    CSV,
    JSON,
    NDJSON,
)
from gateway.storage import readings_query
from gateway.storage.schema import CUSTOMER_ID_RE

_PROBLEM = {
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
}


def _problems(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "problem", **_PROBLEM} for c in codes}


#: a reading in the API (SPEC §5); also the readings of the customer export
READING: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ean": {"type": "string", "pattern": "^[0-9]{18}$"},
        "contract_id": {
            "type": "string",
            "format": "uuid",
            "description": "the supply contract in force on the connection when it was measured",
        },
        "customer_id": {"type": "string", "description": "that contract's customer"},
        "commodity": {"enum": ["electricity", "gas"]},
        "granularity": {"enum": ["P1M", "P1D", "PT1H", "PT15M"]},
        "period_start": {"type": "string", "format": "date-time"},
        "measured_at": {"type": "string", "format": "date-time"},
        "registers": {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {
                        k: {"type": ["integer", "null"]}
                        for k in ("import_t1_wh", "import_t2_wh", "export_t1_wh", "export_t2_wh")
                    },
                },
                {"type": "object", "properties": {"volume_dm3": {"type": "integer"}}},
            ]
        },
    },
    "required": [
        "ean",
        "contract_id",
        "customer_id",
        "commodity",
        "granularity",
        "period_start",
        "measured_at",
        "registers",
    ],
}


def _q(name: str, description: str, *, required: bool = False, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema or {"type": "string"},
    }


OPENAPI_PATHS: dict[str, Any] = {
    "/v1/readings": {
        "get": {
            "summary": "Readings this client may see (billing pull)",
            "description": (
                "Daily and monthly readings of every connection; interval readings only where an "
                "interval consent for one of the client's purposes covered the measurement (after "
                "the consent ended: only for purposes that keep their data). Each reading carries "
                "the supply contract in force on its connection when it was measured and that "
                "contract's customer (`contract_id`, `customer_id`). Half-open range "
                "[from, to) on period_start; a bare date is local midnight (Europe/Amsterdam). "
                "`Accept: application/x-ndjson` or `text/csv` streams everything; JSON (default) "
                "answers in pages with `next_cursor`. Every request is in the customers' access "
                "logs. Incremental sync: `changed_since=0` (first pull; `from`/`to` then optional) "
                "or `changed_since=<token>` returns only readings stored or replaced since the "
                "pull that issued the token, deletions first as tombstones (`{deleted: true, ean, "
                "commodity, granularity, first_period_start, last_period_start, reason}`: JSON "
                "`deleted`, NDJSON lines, CSV rows with the extra columns `deleted, "
                "last_period_start, reason`), and a new token: JSON `next_changed_since` on the "
                "last page, streams the `Meterpoort-Changed-Token` response header. A token is "
                "bound to the client and granularity; a bad one is a 400 problem. Readings may "
                "repeat (upsert by ean and period_start)."
            ),
            "security": [{"clientToken": []}],
            "parameters": [
                _q(
                    "granularity",
                    "P1M, P1D, PT1H or PT15M",
                    required=True,
                    enum=["P1M", "P1D", "PT1H", "PT15M"],
                ),
                _q("from", "RFC 3339 time or YYYY-MM-DD (inclusive)", required=True),
                _q("to", "RFC 3339 time or YYYY-MM-DD (exclusive)", required=True),
                {
                    "name": "ean",
                    "in": "query",
                    "required": False,
                    "description": "only these connections (repeatable)",
                    "schema": {"type": "array", "items": {"type": "string"}},
                    "style": "form",
                    "explode": True,
                },
                _q(
                    "customer_id",
                    "only readings measured under this customer's contracts",
                    type="string",
                    pattern=f"^{CUSTOMER_ID_RE.pattern}$",
                ),
                _q(
                    "contract_id",
                    "only readings measured under this supply contract",
                    type="string",
                    format="uuid",
                ),
                _q("cursor", "JSON pages: next_cursor of the previous page, same parameters"),
                _q(
                    "limit",
                    "JSON pages: page size",
                    type="integer",
                    minimum=1,
                    maximum=readings_query.MAX_LIMIT,
                    default=readings_query.DEFAULT_LIMIT,
                ),
            ],
            "responses": {
                "200": {
                    "description": "readings ordered by (ean, period_start)",
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "readings": {"type": "array", "items": READING},
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                            }
                        },
                        NDJSON: {"schema": READING},
                        CSV: {
                            "schema": {
                                "type": "string",
                                "description": "header line: "
                                f"`{readings_query.CSV_HEADER}`; empty fields are null",
                            }
                        },
                    },
                },
                **_problems(400, 401, 403, 406, 422, 503),
            },
        }
    },
    "/v1/consents": {
        "get": {
            "summary": "Consent changes for this client's purposes (reconciliation)",
            "security": [{"clientToken": []}],
            "parameters": [
                _q(
                    "changed_since",
                    "RFC 3339; pass next_changed_since of the previous answer",
                    required=True,
                ),
                _q(
                    "limit",
                    "most changes per answer",
                    type="integer",
                    minimum=1,
                    maximum=CONSENT_PAGE_MAX,
                    default=CONSENT_PAGE_DEFAULT,
                ),
            ],
            "responses": {
                "200": {
                    "description": "changes ordered by change time; may repeat (event_id)",
                    "content": {JSON: {"schema": {"type": "object"}}},
                },
                **_problems(401, 422, 503),
            },
        }
    },
}
