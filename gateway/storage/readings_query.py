"""The billing pull API's query side: parameters, visibility, encoding, cursors, EAN tracking.

``GET /v1/readings?granularity=&from=&to=[&ean=…][&cursor=][&limit=]`` (handled in
gateway.api.handlers.data_client).

Visibility, decided in SQL so no reading the client may not see ever reaches Python:

* the granularity must be one of the client's (else 403, in the handler);
* daily and monthly readings: every registered connection (the client is the supplier's own
  billing system; daily data needs no consent, SPEC §2), optionally filtered by ``ean``,
  ``customer_id`` and ``contract_id``; each reading carries the contract in force when it was
  measured and its customer (SPEC §3a);
* interval readings (``PT15M``, ``PT1H``): only where an interval consent for one of the client's
  purposes covered the reading's ``measured_at`` (``granted_at <= measured_at < first of ended_at,
  expires_at, contract_end``) — and once that consent is over, only if its purpose keeps its data
  (``keep``); ``delete`` purposes' data is deleted at revocation anyway, this filter makes sure.

Encoding: PostgreSQL writes each reading as ONE line of ``COPY … TO STDOUT``; the JSON text is
spelled out by constant columns between the values. Times are written as UTC wall-clock
``timestamp`` values (``2024-03-01 12:00:00``) followed by a constant starting with ``Z``, so
``encode_chunk`` makes RFC 3339 ``2024-03-01T12:00:00Z`` of them and removes COPY's column
separators (tabs) in ONE ``bytes.translate`` pass per chunk — no per-row Python work.
NDJSON streams, CSV streams and JSON pages all come from this one encoder, so their content is
the same by construction. (Measured with 1 M daily readings on the 2-core box: about 500 000
lines/s with this scheme, 340 000/s when PostgreSQL concatenates the line itself, and 310 000/s
merely to decode the same rows with asyncpg before any formatting in Python.)

Rows are ordered by (ean, period_start): JSON pages continue after a keyset cursor, and the
streams' EAN tracker (``EanTracker``) only has to look at EAN boundaries.

Sync pulls (``changed_since``, migration 0012): the same visibility, plus "written by a
transaction the token's snapshot did not see" (``_changed_since``: ``changed_xid >= xmin`` for
the BRIN index, then ``pg_visible_in_snapshot``). A token (``CursorCodec.encode_token``) is the
snapshot the issuing pull ran in, signed like a cursor and bound to the client and granularity;
a sync pull's cursor carries its first page's snapshot, from which the last page makes the next
token. Deletions come from ``reading_tombstones`` (``tombstones_sql``). The plain window pull's
SQL is unchanged by all this (no per-row work added to the export).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from zoneinfo import ZoneInfo

from consent.levels import INTERVAL_GRANULARITIES
from consent.model import DEFAULT_PURPOSES, OnRevoke, Purpose
from gateway.errors import BadRequestError, FieldError, ValidationError
from gateway.jsonenc import rfc3339
from gateway.storage import schema
from gateway.storage.schema import CUSTOMER_ID_RE
from gateway.times import parse_time

#: granularity → (table, commodity) of the reading tables it reads

DEFAULT_LIMIT: Final = 1000
MAX_LIMIT: Final = 10_000
#: most ``ean`` parameters in one request
MAX_EANS: Final = 1000
#: query parameters the endpoint knows (anything else is refused, so a typo is not ignored)
KNOWN_PARAMS: Final = frozenset(
    {
        "granularity",
        "from",
        "to",
        "ean",
        "customer_id",
        "contract_id",
        "cursor",
        "limit",
        "changed_since",
    }
)
#: ``changed_since`` values meaning "everything so far" (a client's first sync pull)
SYNC_FROM_START: Final = frozenset({"", "0"})
#: the window of a sync pull without from/to: every period a reading table can hold
NO_START: Final = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
NO_END: Final = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)

CSV_HEADER: Final = (
    "ean,contract_id,customer_id,commodity,granularity,period_start,measured_at,"
    "import_t1_wh,import_t2_wh,export_t1_wh,export_t2_wh,volume_dm3"
)

_EAN_RE: Final = re.compile(r"[0-9]{18}")
_DIGITS_RE: Final = re.compile(r"[0-9]{1,9}")
_CURSOR_VERSION: Final = 1
_TOKEN_VERSION: Final = 1
#: pg_snapshot's text form: xmin:xmax:xip,xip,…
_SNAPSHOT_RE: Final = re.compile(r"[0-9]{1,20}:[0-9]{1,20}:(?:[0-9]{1,20}(?:,[0-9]{1,20})*)?")
_CURSOR_MAC_BYTES: Final = 16
#: columns of _json_columns
_JSON_WIDTH: Final = 16


@dataclass(frozen=True, slots=True)
class ReadingsQuery:
    """A validated ``GET /v1/readings`` request (times aware, UTC)."""

    granularity: str
    start: dt.datetime
    end: dt.datetime
    #: requested EANs, sorted, distinct; empty = every connection
    eans: tuple[str, ...]
    limit: int
    #: keyset position (ean, period_start) of the last row already returned
    after: tuple[int, dt.datetime] | None = None
    #: only readings of this customer's contracts / of this contract
    customer_id: str | None = None
    contract_id: uuid.UUID | None = None
    #: a sync pull (``changed_since`` given): its raw value, bound into cursors
    changed_since: str | None = None
    #: the snapshot of the token (pg_snapshot text); None: everything so far
    since_snapshot: str | None = None

    @property
    def sync(self) -> bool:
        """Whether this is a ``changed_since`` pull."""
        return self.changed_since is not None

    def fingerprint(self, client_id: uuid.UUID) -> str:
        """What a cursor is bound to: the client and the query (not the page size)."""
        text = "|".join(
            (
                str(client_id),
                self.granularity,
                self.start.isoformat(),
                self.end.isoformat(),
                ",".join(self.eans),
                self.customer_id or "",
                str(self.contract_id or ""),
                "" if self.changed_since is None else "s:" + self.changed_since,
            )
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# parameters


def _field(name: str, msg: str) -> FieldError:
    return FieldError(("query", name), msg)


def parse_params(params: Mapping[str, str], eans: Sequence[str], tz: ZoneInfo) -> ReadingsQuery:
    """Validate the query parameters (``eans``: every ``ean`` value); ValidationError (422)
    naming each bad parameter and why. The cursor is checked separately (``Cursor``)."""
    errors: list[FieldError] = []
    unknown = sorted(set(params) - KNOWN_PARAMS)
    for name in unknown:
        errors.append(_field(name, f"unknown parameter; known: {', '.join(sorted(KNOWN_PARAMS))}"))

    granularity = params.get("granularity")
    if granularity is None or granularity == "":
        errors.append(_field("granularity", "required: one of P1M, P1D, PT1H, PT15M"))
    elif granularity not in schema.GRANULARITY_TABLES:
        errors.append(
            _field(
                "granularity",
                f"unknown granularity {granularity[:16]!r}; one of P1M, P1D, PT1H, PT15M",
            )
        )

    changed_since = params.get("changed_since")
    times: dict[str, dt.datetime] = {}
    if changed_since is not None:
        # a sync pull needs no window (the changes are what it asks for); one may narrow it
        times = {"from": NO_START, "to": NO_END}
        for name in ("customer_id", "contract_id"):
            if name in params:
                errors.append(_field(name, "not combinable with changed_since"))
    for name in ("from", "to"):
        raw = params.get(name)
        if raw is None or raw == "":
            if changed_since is None:
                errors.append(_field(name, "required: RFC 3339 time or YYYY-MM-DD (local date)"))
            continue
        try:
            times[name] = parse_time(raw, tz)
        except ValueError as exc:
            errors.append(_field(name, str(exc)))
    if len(times) == 2 and times["from"] >= times["to"]:
        errors.append(_field("to", "must be after 'from' (the range is [from, to))"))

    clean: set[str] = set()
    for i, ean in enumerate(eans):
        value = ean.strip()
        if not _EAN_RE.fullmatch(value):
            errors.append(FieldError(("query", "ean", i), "not an EAN-18 (18 digits)"))
        else:
            clean.add(value)
    if len(clean) > MAX_EANS:
        errors.append(_field("ean", f"at most {MAX_EANS} EANs per request"))

    customer_id = params.get("customer_id")
    if customer_id is not None and not CUSTOMER_ID_RE.fullmatch(customer_id):
        errors.append(_field("customer_id", "not a customer id"))
    contract_id: uuid.UUID | None = None
    raw_contract = params.get("contract_id")
    if raw_contract is not None:
        try:
            contract_id = uuid.UUID(raw_contract)
        except ValueError:
            errors.append(_field("contract_id", "not a contract id (a UUID)"))

    limit = DEFAULT_LIMIT
    raw_limit = params.get("limit")
    if raw_limit is not None:
        try:
            limit = page_size(raw_limit, MAX_LIMIT)
        except ValueError as exc:
            errors.append(_field("limit", str(exc)))

    if errors:
        names = ", ".join(dict.fromkeys(str(e.loc[1]) for e in errors))
        raise ValidationError(f"invalid query parameters: {names}", errors)
    assert granularity is not None
    return ReadingsQuery(
        granularity,
        times["from"],
        times["to"],
        tuple(sorted(clean)),
        limit,
        customer_id=customer_id,
        contract_id=contract_id,
        changed_since=changed_since,
    )


def page_size(raw: str, maximum: int) -> int:
    """A ``limit`` query parameter: an integer from 1 to ``maximum``; ValueError otherwise."""
    # ASCII digits only, and few of them: str.isdigit() also takes '²' and int() refuses
    # more than 4300 digits, both with a ValueError int() would raise unasked
    if not _DIGITS_RE.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise ValueError(f"an integer from 1 to {maximum}")
    return int(raw)


# ---------------------------------------------------------------------------------------------
# cursors


class CursorCodec:
    """Opaque, tamper-proof keyset cursors: ``base64url(JSON) "." base64url(HMAC-SHA256)``.

    The JSON holds the last row's (ean, period_start) and the fingerprint of the client and
    query it belongs to; a changed byte, another client's cursor or a cursor used with other
    parameters is refused (BadRequestError, 400). New cursors and tokens are sealed with ``key``;
    ``retired`` keys (those of retired signing keys) still open the ones sealed before a key
    rotation.
    """

    def __init__(self, key: bytes, retired: Sequence[bytes] = ()) -> None:
        self._key = key
        self._keys = (key, *retired)

    def _mac(self, payload: bytes, key: bytes | None = None) -> bytes:
        mac = hmac.new(self._key if key is None else key, payload, hashlib.sha256)
        return mac.digest()[:_CURSOR_MAC_BYTES]

    def encode(
        self, fingerprint: str, ean: int, period_start: str, next_snapshot: str | None = None
    ) -> str:
        """A cursor after (ean, period_start); a sync pull's cursor also carries the snapshot
        of its first page, from which its last page makes the next token."""
        data: dict[str, object] = {"v": _CURSOR_VERSION, "q": fingerprint, "e": ean}
        data["p"] = period_start
        if next_snapshot is not None:
            data["n"] = next_snapshot
        return self._seal(data)

    def decode(self, cursor: str, fingerprint: str) -> tuple[int, dt.datetime, str | None]:
        """The keyset position of ``cursor`` and the snapshot it carries (sync pulls); raises
        BadRequestError if it is not one of ours, was altered, or belongs to another client or
        query."""
        data = self._open(cursor, _bad_cursor)
        if data.get("v") != _CURSOR_VERSION or "e" not in data:
            raise _bad_cursor("it comes from another version of the API; start again")
        if data.get("q") != fingerprint:
            raise _bad_cursor(
                "it was issued for other query parameters (granularity, from, to, ean, "
                "changed_since) or another client; repeat the original parameters with it"
            )
        snapshot = data.get("n")
        return (
            int(data["e"]),
            dt.datetime.fromisoformat(data["p"]),
            snapshot if isinstance(snapshot, str) else None,
        )

    def encode_token(self, client_id: uuid.UUID, granularity: str, snapshot: str) -> str:
        """A ``changed_since`` token: the snapshot a pull ran in, bound to the client and the
        granularity (a token means nothing for another table)."""
        return self._seal(
            {"v": _TOKEN_VERSION, "t": _token_binding(client_id, granularity), "s": snapshot}
        )

    def decode_token(self, token: str, client_id: uuid.UUID, granularity: str) -> str | None:
        """The snapshot of a ``changed_since`` token; None for ``0``/empty (everything so far).
        BadRequestError for anything this API did not issue to this client for this
        granularity."""
        if token in SYNC_FROM_START:
            return None
        data = self._open(token, _bad_token)
        snapshot = data.get("s")
        if data.get("v") != _TOKEN_VERSION or not isinstance(snapshot, str):
            raise _bad_token("it is not a changed_since token of this version of the API")
        if data.get("t") != _token_binding(client_id, granularity):
            raise _bad_token(
                "it was issued to another client or for another granularity; start again "
                "with changed_since=0"
            )
        if not _SNAPSHOT_RE.fullmatch(snapshot):  # not reached: we signed it
            raise _bad_token("it holds no snapshot")
        return snapshot

    def _seal(self, data: Mapping[str, object]) -> str:
        payload = json.dumps(data, separators=(",", ":")).encode("ascii")
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def _open(self, text: str, error: Callable[[str], BadRequestError]) -> dict[str, Any]:
        body, sep, mac = text.partition(".")
        try:
            payload = _unb64(body)
            given = _unb64(mac)
        except ValueError:
            raise error("it is not one this API issued") from None
        # every key is tried (no early exit), so timing does not tell which one sealed it
        matches = [hmac.compare_digest(given, self._mac(payload, k)) for k in self._keys]
        if not sep or not any(matches):
            raise error("it is not one this API issued, or it was altered")
        data = json.loads(payload)
        if not isinstance(data, dict):  # not reached: we signed it
            raise error("it is not one this API issued")
        return data


def _token_binding(client_id: uuid.UUID, granularity: str) -> str:
    return hashlib.sha256(f"sync|{client_id}|{granularity}".encode()).hexdigest()[:32]


def _bad_token(why: str) -> BadRequestError:
    return BadRequestError(f"invalid 'changed_since' parameter: {why}")


def snapshot_xmin(snapshot: str) -> int:
    """The xmin of a pg_snapshot's text form: every transaction id below it was visible."""
    return int(snapshot.split(":", 1)[0])


def _bad_cursor(why: str) -> BadRequestError:
    return BadRequestError(f"invalid 'cursor' parameter: {why}")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or len(text) > 4096:
        raise ValueError("empty or too long")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64url") from exc


def cursor_key(signing_key_material: bytes) -> bytes:
    """The cursor MAC key, derived from the installation's signing key (the same in every worker
    process). After a rotation the retired key's derived key still opens what it sealed, for as
    long as the retired key's private half is kept (``gateway.keys``)."""
    return hmac.new(b"meterpoort readings cursor v1", signing_key_material, hashlib.sha256).digest()


# ---------------------------------------------------------------------------------------------
# SQL


def keep_purposes(purposes: Mapping[str, Purpose] | None = None) -> list[str]:
    """Purposes whose interval data stays readable after their consent ended."""
    table = DEFAULT_PURPOSES if purposes is None else purposes
    return [p.name for p in table.values() if p.on_revoke is OnRevoke.KEEP]


def _lit(text: str) -> str:
    """An SQL string literal (our constants hold no quote, but stay safe)."""
    return "'" + text.replace("'", "''") + "'"


#: what each reading table's branch hands to the sort (``_json_columns`` spells them out after
#: it): its commodity, the reading's EAN text and contract tag, times and four register slots
_JSON_SORTED: Final = (
    *("gas", "ean", "json_tag", "period_start", "measured_at"),
    *("r1", "r2", "r3", "r4"),
)


def _json_branch(commodity: str) -> str:
    """A reading table's narrow columns (``_JSON_SORTED``): only values go through the sort."""
    registers = (
        "r.import_t1_wh, r.import_t2_wh, r.export_t1_wh, r.export_t2_wh"
        if commodity == "electricity"
        else "r.volume_dm3, NULL::bigint, NULL::bigint, NULL::bigint"
    )
    gas = "true" if commodity == "gas" else "false"
    return f"{gas}, k.ean, k.json_tag, r.period_start, r.measured_at, {registers}"


def _json_columns(commodities: Sequence[str], granularity: str) -> str:
    """The COPY columns spelling one sorted reading (``s``) as a JSON object: constants between
    values, chosen by commodity when the granularity reads both.

    They are computed after the sort, so it carries about 150 bytes less per reading: the sort
    of a whole export spills to disk, and its width was most of PostgreSQL's time per reading
    (bench/export.py; PostgreSQL, not the gateway, bounds the export rate).
    """

    def pick(electricity: str, gas: str) -> str:
        if "gas" not in commodities:
            return _lit(electricity)
        if "electricity" not in commodities:
            return _lit(gas)
        return f"CASE WHEN s.gas THEN {_lit(gas)} ELSE {_lit(electricity)} END"

    head = '","granularity":"' + granularity + '","period_start":"'
    parts = [
        _lit('{"ean":"'),
        "s.ean",
        # contract_id and customer_id, spelled once per contract (see _CONTRACTS)
        "s.json_tag",
        pick('","commodity":"electricity' + head, '","commodity":"gas' + head),
        # UTC wall-clock time: no "+00" to rewrite, the "Z" comes with the next constant
        "s.period_start AT TIME ZONE 'UTC'",
        _lit('Z","measured_at":"'),
        "s.measured_at AT TIME ZONE 'UTC'",
        pick('Z","registers":{"import_t1_wh":', 'Z","registers":{"volume_dm3":'),
        "s.r1",
        # a gas line's three unused slots print as 'null' right after its closing braces and
        # the empty constants vanish with the tabs: encode_chunk removes that GAS_PAD
        pick(',"import_t2_wh":', "}}"),
        "s.r2",
        pick(',"export_t1_wh":', ""),
        "s.r3",
        pick(',"export_t2_wh":', ""),
        "s.r4",
        pick("}}", ""),
    ]
    assert len(parts) == _JSON_WIDTH
    return ", ".join(parts)


#: the contracts a reading joins, with the JSON text naming each one built once per contract in
#: the join's build side instead of once per reading (a uuid's text form per row cost a fifth
#: of the NDJSON rate, bench/export.py)
_CONTRACTS: Final = (
    "(SELECT ean, ean_num, contract_id, customer_id, contract_start, contract_end, "
    + _lit('","contract_id":"')
    + " || contract_id::text || "
    + _lit('","customer_id":"')
    + " || customer_id AS json_tag FROM contracts)"
)


def _csv_columns(commodity: str, granularity: str) -> str:
    if commodity == "electricity":
        registers = "r.import_t1_wh, r.import_t2_wh, r.export_t1_wh, r.export_t2_wh, NULL::bigint"
    else:
        registers = "NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, r.volume_dm3"
    return (
        f"k.ean, k.contract_id, k.customer_id, '{commodity}'::text, '{granularity}'::text,"
        f" r.period_start, r.measured_at, {registers}"
    )


_CSV_COLUMNS: Final = tuple(CSV_HEADER.split(","))
#: a sync pull's CSV adds these: a reading row says ``false,,``; a tombstone row (see
#: ``tombstone_csv``) says ``true,<last deleted period_start>,<reason>`` and carries the first
#: deleted period in ``period_start``
CSV_SYNC_COLUMNS: Final = ("deleted", "last_period_start", "reason")
CSV_SYNC_HEADER: Final = CSV_HEADER + "," + ",".join(CSV_SYNC_COLUMNS)


def build_sql(
    query: ReadingsQuery,
    output: str,
    *,
    paged: bool,
    purposes: Sequence[str] = (),
    keep: Sequence[str] = (),
) -> tuple[str, list[object]]:
    """The SELECT whose ``COPY … TO STDOUT`` output is the response body, and its arguments.

    ``output``: ``json`` (one JSON object per line, for NDJSON and JSON pages; COPY text format
    with ``NULL 'null'``) or ``csv`` (COPY CSV format with the CSV_HEADER column names).
    ``purposes`` are the client's, ``keep`` the purposes whose data survives their consent.
    ``paged`` adds ``LIMIT query.limit + 1`` (the extra row tells whether more follow).
    """
    args: list[object] = [query.start, query.end]
    if output == "json":
        names = list(_JSON_SORTED)
    else:
        names = list(_CSV_COLUMNS)
        if query.sync:
            names += CSV_SYNC_COLUMNS
    branches = []
    commodities = []
    for reading_table, from_where in _visible(query, args, purposes, keep):
        commodity = reading_table.commodity
        commodities.append(commodity)
        if output == "json":
            columns = _json_branch(commodity)
        else:
            columns = _csv_columns(commodity, query.granularity)
            if query.sync:
                columns += ", 'false'::text, NULL::timestamptz, NULL::text"
        branches.append(f"SELECT r.ean, r.period_start, {columns}{from_where}")
    inner = " UNION ALL ".join(f"({b})" for b in branches)
    limit = f" LIMIT {query.limit + 1}" if paged else ""
    keys = "u.sort_ean, u.sort_ps, " if output == "json" else ""
    sql = (
        f"SELECT {keys}{', '.join('u.' + n for n in names)}"
        f" FROM ({inner}) AS u (sort_ean, sort_ps, {', '.join(names)})"
        f" ORDER BY u.sort_ean, u.sort_ps{limit}"
    )
    if output == "json":
        # the ordered subquery is not flattened into this one (it has an ORDER BY), so the
        # JSON constants are added to its sorted rows; ordering by its sort keys again costs
        # nothing (PostgreSQL knows they come sorted) and keeps the order a guarantee
        sql = (
            f"SELECT {_json_columns(commodities, query.granularity)} FROM ({sql}) AS s"
            " ORDER BY s.sort_ean, s.sort_ps"
        )
    return sql, args


def _changed_since(column: str, snapshot: str, args: list[object]) -> str:
    """SQL: ``column`` (a changed_xid) was written by a transaction ``snapshot`` did not see.

    ``>= xmin`` first: every id below the snapshot's xmin was visible to it, and the comparison
    lets the BRIN index skip what was written before; then the exact test, which also catches
    transactions that were still running when the snapshot was taken and committed later.
    """
    args.extend([snapshot_xmin(snapshot), snapshot])
    return (
        f" AND {column} >= ${len(args) - 1}::bigint"
        f" AND NOT pg_visible_in_snapshot({column}::text::xid8, ${len(args)}::text::pg_snapshot)"
    )


def _visible(
    query: ReadingsQuery, args: list[object], purposes: Sequence[str], keep: Sequence[str]
) -> list[tuple[schema.ReadingTable, str]]:
    """Per reading table of the granularity, the ``FROM … WHERE …`` of the rows the client may
    see (``r``: the reading, ``k``: its contract); ``args`` holds the window and gets the rest."""
    interval = query.granularity in INTERVAL_GRANULARITIES
    extra = ""
    visible = ""
    if interval:
        args.extend([list(purposes), list(keep)])
        # the consent test of the module docstring; k is the reading's contract
        visible = (
            " AND EXISTS (SELECT 1 FROM consents c WHERE c.ean = k.ean"
            " AND c.contract_id = k.contract_id"
            " AND c.data_class = 'interval' AND c.purpose = ANY($3::text[])"
            " AND c.granted_at <= r.measured_at"
            " AND r.measured_at <"
            " coalesce(least(c.ended_at, c.expires_at, k.contract_end), 'infinity')"
            " AND (coalesce(least(c.ended_at, c.expires_at, k.contract_end), 'infinity')"
            " > now() OR c.purpose = ANY($4::text[])))"
        )
    if query.eans:
        args.append([int(e) for e in query.eans])
        extra += f" AND r.ean = ANY(${len(args)}::bigint[])"
    if query.customer_id is not None:
        args.append(query.customer_id)
        extra += f" AND k.customer_id = ${len(args)}"
    if query.contract_id is not None:
        args.append(query.contract_id)
        extra += f" AND k.contract_id = ${len(args)}"
    if query.after is not None:
        args.extend(query.after)
        extra += f" AND (r.ean, r.period_start) > (${len(args) - 1}::bigint, ${len(args)})"
    if query.since_snapshot is not None:
        extra += _changed_since("r.changed_xid", query.since_snapshot, args)
    return [
        (
            reading_table,
            # the reading's contract: the one in force when it was measured (SPEC §3a)
            f" FROM {reading_table.name} r JOIN {_CONTRACTS} k ON k.ean_num = r.ean"
            f" AND {schema.in_contract('r.measured_at')}"
            f" WHERE r.period_start >= $1 AND r.period_start < $2{extra}{visible}",
        )
        for reading_table in schema.GRANULARITY_TABLES[query.granularity]
    ]


# ---------------------------------------------------------------------------------------------
# sync: tombstones and change summaries


def _tombstones_from(query: ReadingsQuery, purposes: Sequence[str], args: list[object]) -> str:
    """``FROM … WHERE …`` of the tombstones a sync pull reports (``t``; ``args`` holds the
    window and gets the rest): ranges of the granularity deleted by transactions the token's
    snapshot did not see, overlapping the window, of the requested EANs; interval ones only
    where the client has the ended consent's purpose (nobody else could see those readings) or
    none was named (erasure, contract end, lowered level)."""
    assert query.since_snapshot is not None
    args.extend([query.granularity, list(purposes)])
    g, p = len(args) - 1, len(args)
    where = _changed_since("t.changed_xid", query.since_snapshot, args)
    if query.eans:
        args.append([int(e) for e in query.eans])
        where += f" AND t.ean = ANY(${len(args)}::bigint[])"
    return (
        " FROM reading_tombstones t JOIN reading_tables rt ON rt.table_name = t.table_name"
        f" WHERE rt.granularity = ${g} AND t.last_period_start >= $1 AND t.first_period_start < $2"
        f" AND (t.purpose IS NULL OR t.purpose = ANY(${p}::text[])){where}"
    )


def tombstones_sql(query: ReadingsQuery, purposes: Sequence[str]) -> tuple[str, list[object]]:
    """The deletions a sync pull reports (``_tombstones_from``): ean (text), commodity,
    first/last deleted period_start, reason; in EAN order."""
    args: list[object] = [query.start, query.end]
    sql = (
        "SELECT lpad(t.ean::text, 18, '0') AS ean, rt.commodity, t.first_period_start,"
        " t.last_period_start, t.reason"
        f"{_tombstones_from(query, purposes, args)}"
        " ORDER BY t.ean, t.first_period_start, t.tombstone_id"
    )
    return sql, args


def tombstone_json(row: Mapping[str, Any], granularity: str) -> bytes:
    """One tombstone as the JSON object of NDJSON lines and of a JSON page's ``deleted``."""
    return json.dumps(
        {
            "deleted": True,
            "ean": row["ean"],
            "commodity": row["commodity"],
            "granularity": granularity,
            "first_period_start": rfc3339(row["first_period_start"]),
            "last_period_start": rfc3339(row["last_period_start"]),
            "reason": row["reason"],
        },
        separators=(",", ":"),
    ).encode("ascii")


def tombstone_csv(row: Mapping[str, Any], granularity: str) -> bytes:
    """One tombstone as a row of a sync pull's CSV (CSV_SYNC_HEADER); no field needs quoting
    (digits, times, fixed words)."""
    first = rfc3339(row["first_period_start"])
    last = rfc3339(row["last_period_start"])
    fields = [row["ean"], "", "", row["commodity"], granularity, first, "", "", "", "", "", ""]
    return (",".join([*fields, "true", last, row["reason"]]) + "\n").encode("ascii")


def changes_summary_sql(
    query: ReadingsQuery, purposes: Sequence[str], keep: Sequence[str], limit: int
) -> tuple[str, list[object]]:
    """Per EAN, the first and last period_start of the client's visible readings and
    tombstones of ``query.granularity`` changed since ``query.since_snapshot``: the body of a
    ``readings.changed`` webhook. At most ``limit`` + 1 rows (the extra one says "more")."""
    args: list[object] = [query.start, query.end]
    parts = [
        f"SELECT r.ean, r.period_start AS first_ps, r.period_start AS last_ps{from_where}"
        for _table, from_where in _visible(query, args, purposes, keep)
    ]
    parts.append(
        "SELECT t.ean, t.first_period_start, t.last_period_start"
        + _tombstones_from(query, purposes, args)
    )
    inner = " UNION ALL ".join(f"({p})" for p in parts)
    sql = (
        "SELECT lpad(c.ean::text, 18, '0') AS ean, min(c.first_ps) AS first_period_start,"
        " max(c.last_ps) AS last_period_start"
        f" FROM ({inner}) AS c (ean, first_ps, last_ps) GROUP BY c.ean ORDER BY c.ean"
        f" LIMIT {limit + 1}"
    )
    return sql, args


def has_gas_pad(granularity: str) -> bool:
    """Whether JSON lines of this granularity may carry GAS_PAD (it reads a gas table)."""
    return any(t.commodity == "gas" for t in schema.GRANULARITY_TABLES[granularity])


# ---------------------------------------------------------------------------------------------
# encoding and EAN tracking


#: what a gas line of a mixed query carries after its closing braces (see _json_columns)
GAS_PAD: Final = b"}}nullnullnull\n"


#: ``encode_chunk``'s one pass: a timestamp's date/time space becomes RFC 3339's ``T``
_SPACE_TO_T: Final = bytes.maketrans(b" ", b"T")


def encode_chunk(chunk: bytes, gas_pad: bool = False) -> bytes:
    """COPY text output (``NULL 'null'``, DateStyle ISO) → NDJSON lines: drop the column
    separators, make RFC 3339 times, and (``gas_pad``) drop the padding of gas lines.

    Safe because nothing else in the output holds a tab or a space: the constant columns are
    written without them, EANs and registers are digits, and times print as UTC wall-clock
    ``YYYY-MM-DD HH:MM:SS[.ffffff]`` with their ``Z`` in the constant that follows. One
    ``translate`` pass; the three ``replace`` passes it replaced were most of the export's CPU
    (py-spy, bench/export.py).
    """
    out = chunk.translate(_SPACE_TO_T, b"\t")
    return out.replace(GAS_PAD, b"}}\n") if gas_pad else out


def encode_csv_chunk(chunk: bytes) -> bytes:
    """COPY CSV output (TimeZone UTC) → RFC 3339 'Z' times; the header holds neither."""
    return chunk.replace(b" ", b"T").replace(b"+00", b"Z")


class EanTracker:
    """The distinct EANs in a stream of whole-line chunks, cheaply.

    Lines are sorted by EAN and start with ``prefix`` + the 18-digit EAN, so a chunk is looked
    at per EAN run, not per line: when its first and last lines have the same EAN the chunk holds
    nothing else; otherwise the last line of each run is found with one ``rfind``. (Counting
    lines here would cost more than the rest: the row count comes from COPY's status instead.)
    A chunk that ends inside a line (COPY sends whole rows, but nothing promises chunking)
    carries the partial line over.
    """

    __slots__ = ("_carry", "_eans", "_last", "_off", "_prefix", "_skip_header")

    def __init__(self, prefix: bytes = b"", skip_header: bool = False) -> None:
        self._prefix = b"\n" + prefix
        self._off = len(prefix)
        self._skip_header = skip_header
        self._last = b""
        self._eans: set[bytes] = set()
        self._carry = b""

    def feed(self, chunk: bytes) -> None:
        """Account for one chunk of output, as it is sent."""
        data = self._carry + chunk if self._carry else chunk
        end = data.rfind(b"\n") + 1  # whole lines end here
        self._carry = bytes(data[end:])
        pos = 0
        if self._skip_header:
            nl = data.find(b"\n", 0, end)
            if nl < 0:
                return
            pos = nl + 1
            self._skip_header = False
        if pos >= end:
            return
        off = self._off
        last_line = data.rfind(b"\n", pos, end - 1) + 1
        if last_line <= pos:
            last_line = pos
        final = bytes(data[last_line + off : last_line + off + 18])
        if final == self._last:
            return  # sorted: first to last line are all this EAN, seen before
        while pos < end:
            ean = bytes(data[pos + off : pos + off + 18])
            if ean != self._last:
                self._eans.add(ean)
                self._last = ean
            if ean == final:
                break
            last = data.rfind(self._prefix + ean, pos, end)
            start = pos if last < 0 else last + 1
            pos = data.find(b"\n", start, end) + 1
            if pos == 0:
                break  # not reached: `end` is just after a newline

    def eans(self) -> list[str]:
        """The distinct EANs seen, sorted."""
        return sorted(e.decode("ascii") for e in self._eans)
