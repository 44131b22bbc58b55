"""Webhook delivery of the notification outbox (SPEC §4): signed, retried, at-least-once, in order.

Deliveries follow the Standard Webhooks specification (https://www.standardwebhooks.com, v1.0.0)
with its asymmetric scheme ``v1a`` (Ed25519). What a recipient receives, for each
``outbox_events`` row it is subscribed to (see ``gateway.storage.outbox``)::

    POST <webhook_url>
    Content-Type: application/json
    webhook-id: <event_id>                     same on every retry: the idempotency key
    webhook-timestamp: <unix seconds>          when this attempt was signed
    webhook-signature: v1a,<base64 Ed25519 signature over b"<id>.<timestamp>." + body>
    Meterpoort-Delivery-Attempt: <n>           1 on the first attempt (not signed)
    (deprecated, see below: Meterpoort-Event-Id, -Timestamp, -Key-Id, -Signature)

    {"data":{...},"ean":"…","event_id":"…","kind":"consent.ended","occurred_at":"…Z"}

The body is compact JSON with sorted keys and identical on every attempt; only the timestamp and
signatures change. ``webhook-signature`` is a space-separated list of ``v1a,<signature>``, one per
key the gateway signs webhooks with (``KeyRing.webhook_signing_keys``: the current key only; a
retired key signs nothing new, docs/operations.md); a recipient accepts the request when any
one of them verifies with a key it trusts. The key to trust is published at ``GET /v1/keys``:
the first JWK whose ``signs`` lists ``webhooks`` (the current key; retired keys follow it,
marked ``"retired": true``) carries it as ``whpk`` (``whpk_`` + base64 of the raw 32-byte key,
the form Standard Webhooks libraries take). Signatures and the key are standard base64
(``+/``, padded).

A recipient therefore verifies with any Standard Webhooks ``v1a`` verifier, or by hand:

1. ``webhook-timestamp`` is an integer within a tolerance of its clock (e.g. 5 minutes), so a
   captured request cannot be replayed later;
2. the signed bytes are ``f"{webhook_id}.{webhook_timestamp}.".encode() + body``, with ``body``
   the exact bytes received (parsing and re-serialising the JSON breaks the signature);
3. one ``v1a,…`` entry of ``webhook-signature`` verifies as Ed25519 over them;
4. ``webhook-id`` is remembered for a while, and a second request with it is acknowledged but not
   processed again (at-least-once delivery resends after a lost answer).

The id is the event's UUID and never contains a ``.``, the separator of the signed content (the
specification requires that, so an id and a timestamp cannot be shifted into each other).

Deprecated headers: the scheme Meterpoort used before (``Meterpoort-Event-Id``,
``Meterpoort-Timestamp``, ``Meterpoort-Key-Id`` naming the JWK, ``Meterpoort-Signature:
ed25519=<base64url signature over b"<timestamp>." + body>``, verified by ``verify`` below) is still
sent, signed by the same key, through the 0.2 releases and removed in 0.3.0. Recipients should move
to the ``webhook-*`` headers. Sending both gives no signature that passes as the other scheme's:
an old signature covers ``<digits>.{…``, where a ``v1a`` verifier needs an integer timestamp after
the first ``.``; a ``v1a`` signature covers ``<uuid>.…``, where the old one needs digits before it.

Delivery rules:

* a 2xx answer is success; any other status, a connection error or no answer within
  ``timeout_s`` is retried after an exponential backoff with jitter (``backoff_base_s`` doubling
  up to ``backoff_cap_s``) until ``give_up_after_s`` after the event (or ``max_attempts``), then
  the delivery is ``failed`` (counted; the recipient can re-sync with ``GET /v1/consents``);
* per client and EAN, event n+1 is not sent before event n was delivered (or given up);
* consents that pass their ``expires_at`` are announced by a periodic sweep
  (``gateway.storage.outbox.sweep_expired``), once, as ``consent.ended`` with ``end_reason``
  ``expired``;
* several workers (processes) share the work: a worker claims due deliveries with
  ``FOR UPDATE SKIP LOCKED`` and leases them by moving ``next_attempt_at`` past the attempt's
  timeout, so no other worker sends the same delivery while it is in flight; a worker that dies
  mid-attempt leaves a lease that expires, and the delivery is retried (at-least-once). The
  ``attempts`` counter doubles as the claim's fencing token.

Settings: ``gateway.settings.WebhookSettings`` (environment ``METERPOORT_WEBHOOK_*``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import random
import string
import time
import uuid
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import asyncpg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prometheus_client import Counter, Gauge, Histogram

from consent.receipts import b64url, b64url_decode, canonical_json
from gateway import metrics
from gateway.errors import GatewayError
from gateway.jsonenc import rfc3339
from gateway.keys import KeyRing
from gateway.settings import WebhookSettings
from gateway.storage import db, outbox

log = logging.getLogger(__name__)

# Standard Webhooks headers (the specification spells them in lower case)
HEADER_WEBHOOK_ID: Final = "webhook-id"
HEADER_WEBHOOK_TIMESTAMP: Final = "webhook-timestamp"
HEADER_WEBHOOK_SIGNATURE: Final = "webhook-signature"
#: the Standard Webhooks signature identifier of an Ed25519 signature
STANDARD_SCHEME: Final = "v1a"
HEADER_ATTEMPT: Final = "Meterpoort-Delivery-Attempt"
# deprecated: the Meterpoort scheme, sent beside the standard one until 0.3.0
HEADER_EVENT_ID: Final = "Meterpoort-Event-Id"
HEADER_TIMESTAMP: Final = "Meterpoort-Timestamp"
HEADER_SIGNATURE: Final = "Meterpoort-Signature"
HEADER_KEY_ID: Final = "Meterpoort-Key-Id"
#: the signature scheme prefix in ``Meterpoort-Signature`` (deprecated)
SIGNATURE_SCHEME: Final = "ed25519"
USER_AGENT: Final = "Meterpoort-Webhooks/1"
_B64URL_CHARS: Final = frozenset(string.ascii_letters + string.digits + "-_")
_WEBHOOK_ID_CHARS: Final = frozenset(string.printable) - frozenset(string.whitespace) - {"."}
_ED25519_SIGNATURE_BYTES: Final = 64

#: outcomes of one attempt, the ``outcome`` label of ``meterpoort_webhook_deliveries_total``
OUTCOME_DELIVERED: Final = "delivered"  # 2xx
OUTCOME_RETRY: Final = "retry"  # failed attempt, another one is scheduled
OUTCOME_FAILED: Final = "failed"  # failed attempt, given up
OUTCOME_DROPPED: Final = "dropped"  # the client was revoked or has no webhook URL any more

DELIVERIES = Counter(
    "meterpoort_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, retry, failed = given up, dropped)",
    ["outcome"],
    registry=metrics.REGISTRY,
)
PENDING = Gauge(
    "meterpoort_webhook_pending",
    "Webhook deliveries not yet delivered or given up (all workers, sampled from the database)",
    multiprocess_mode="livemostrecent",
    registry=metrics.REGISTRY,
)
OLDEST_PENDING_SECONDS = Gauge(
    "meterpoort_webhook_oldest_pending_seconds",
    "Age of the oldest pending webhook delivery (0 when none is pending)",
    multiprocess_mode="livemostrecent",
    registry=metrics.REGISTRY,
)
DELIVERY_SECONDS = Histogram(
    "meterpoort_webhook_delivery_seconds",
    "Time of one webhook delivery attempt (request sent to answer or error)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=metrics.REGISTRY,
)
for _outcome in (OUTCOME_DELIVERED, OUTCOME_RETRY, OUTCOME_FAILED, OUTCOME_DROPPED):
    DELIVERIES.labels(outcome=_outcome)  # every series exists from the start (rate() needs it)

#: errors the worker loop survives (logged, retried after ``error_pause_s``)
_LOOP_ERRORS = db.RETRYABLE_ERRORS


class WebhookSignatureError(GatewayError):
    """A webhook whose signature headers are missing, malformed, stale or do not verify."""


# --- signing (pure) -----------------------------------------------------------------------------


def standard_signed_content(webhook_id: str, timestamp: int, body: bytes) -> bytes:
    """The bytes a ``v1a`` signature covers: ``b"<webhook_id>.<timestamp>." + body``.

    ValueError for an empty id or one holding a ``.``, whitespace or non-ASCII (the
    specification's rule is no ``.``: with one, the same content could be split into another id
    and timestamp; the rest keeps the id a plain header token).
    """
    if not webhook_id or not _WEBHOOK_ID_CHARS.issuperset(webhook_id):
        raise ValueError(
            f"a webhook id must be printable ASCII without '.' or spaces: {webhook_id!r}"
        )
    return f"{webhook_id}.{timestamp}.".encode("ascii") + body


def standard_signatures(
    keys: Iterable[Ed25519PrivateKey], webhook_id: str, timestamp: int, body: bytes
) -> str:
    """The ``webhook-signature`` header value: ``v1a,<base64 signature>`` per key, separated
    by spaces (the specification's list, which lets a key rotation sign with both keys)."""
    content = standard_signed_content(webhook_id, timestamp, body)
    signatures = [
        f"{STANDARD_SCHEME},{base64.b64encode(key.sign(content)).decode('ascii')}" for key in keys
    ]
    if not signatures:
        raise ValueError("a webhook needs at least one signing key")
    return " ".join(signatures)


def signed_content(timestamp: int | str, body: bytes) -> bytes:
    """The bytes a deprecated ``Meterpoort-Signature`` covers: ``b"<timestamp>." + body``."""
    return f"{timestamp}.".encode("ascii") + body


def sign(private_key: Ed25519PrivateKey, timestamp: int, body: bytes) -> str:
    """The deprecated ``Meterpoort-Signature`` header value for ``body`` sent at ``timestamp``."""
    return f"{SIGNATURE_SCHEME}={b64url(private_key.sign(signed_content(timestamp, body)))}"


def verify(
    public_key: Ed25519PublicKey,
    *,
    timestamp: str,
    signature: str,
    body: bytes,
    now: float,
    tolerance_s: float = 300.0,
) -> None:
    """Check the deprecated ``Meterpoort-*`` headers of a received webhook (what a recipient of
    the old scheme does); WebhookSignatureError if it fails. The ``webhook-*`` headers are
    verified with any Standard Webhooks ``v1a`` verifier instead.

    ``timestamp`` and ``signature`` are the header values, ``body`` the exact bytes received,
    ``now`` the recipient's clock (unix seconds): a timestamp more than ``tolerance_s`` away is
    refused, so a captured request cannot be replayed later.
    """
    if not timestamp.isascii() or not timestamp.isdigit():
        raise WebhookSignatureError(f"{HEADER_TIMESTAMP} is not unix seconds: {timestamp!r}")
    if abs(now - int(timestamp)) > tolerance_s:
        raise WebhookSignatureError(
            f"{HEADER_TIMESTAMP} {timestamp} is more than {tolerance_s:g} s from now"
        )
    scheme, sep, value = signature.partition("=")
    if not sep or scheme != SIGNATURE_SCHEME:
        raise WebhookSignatureError(
            f"{HEADER_SIGNATURE} must be '{SIGNATURE_SCHEME}=<base64url>', got {signature!r}"
        )
    # strict: the decoder would silently skip characters outside the alphabet
    if not value or not _B64URL_CHARS.issuperset(value):
        raise WebhookSignatureError(f"{HEADER_SIGNATURE} is not base64url: {value!r}")
    try:
        raw = b64url_decode(value)
    except ValueError as exc:
        raise WebhookSignatureError(f"{HEADER_SIGNATURE} is not base64url: {exc}") from exc
    if len(raw) != _ED25519_SIGNATURE_BYTES:
        raise WebhookSignatureError(
            f"{HEADER_SIGNATURE} holds {len(raw)} bytes, not an Ed25519 signature (64)"
        )
    try:
        public_key.verify(raw, signed_content(timestamp, body))
    except InvalidSignature as exc:
        raise WebhookSignatureError("the webhook signature does not verify") from exc


def event_body(
    *, event_id: uuid.UUID, kind: str, ean: str, occurred_at: dt.datetime, data: Mapping[str, Any]
) -> bytes:
    """The JSON body of an event's webhook (compact, sorted keys: the same on every attempt);
    ``ean`` is null for an event about many EANs (``readings.changed``)."""
    return canonical_json(
        {
            "event_id": str(event_id),
            "kind": kind,
            "ean": ean or None,
            "occurred_at": rfc3339(occurred_at),
            "data": dict(data),
        }
    )


def signed_headers(
    ring: KeyRing, *, event_id: uuid.UUID, body: bytes, attempt: int, at: int
) -> dict[str, str]:
    """The headers of one attempt, signed with the ring's webhook keys at unix time ``at``."""
    webhook_id = str(event_id)
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        HEADER_WEBHOOK_ID: webhook_id,
        HEADER_WEBHOOK_TIMESTAMP: str(at),
        HEADER_WEBHOOK_SIGNATURE: standard_signatures(
            ring.webhook_signing_keys, webhook_id, at, body
        ),
        HEADER_ATTEMPT: str(attempt),
        # deprecated (removed in 0.3.0): the Meterpoort scheme, for recipients not yet moved
        HEADER_EVENT_ID: webhook_id,
        HEADER_TIMESTAMP: str(at),
        HEADER_SIGNATURE: sign(ring.signing_key, at, body),
        HEADER_KEY_ID: ring.signing_kid,
    }


def backoff_s(attempt: int, config: WebhookSettings, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): ``base · 2^(n-1)``
    capped at ``backoff_cap_s``, minus a random part of up to half (so recipients that come back
    are not hit by every sender at the same instant)."""
    exponent = min(attempt - 1, 62)  # 2**62 · base is past any cap; avoids float overflow
    delay = min(config.backoff_cap_s, config.backoff_base_s * float(2**exponent))
    return delay * (0.5 + 0.5 * rng.random())


# --- the worker -----------------------------------------------------------------------------------

# Due deliveries whose predecessor (same client, same EAN, lower seq) is not pending any more;
# locked rows (claimed by another worker right now) are skipped, and the claim moves
# next_attempt_at past the attempt's timeout (the lease) and counts the attempt.
_CLAIM_SQL: Final = """
WITH due AS (
    SELECT d.ean, d.event_id, d.client_id
    FROM webhook_deliveries d
    WHERE d.state = 'pending' AND d.next_attempt_at <= now()
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries p
          WHERE p.client_id = d.client_id AND p.ean = d.ean AND p.state = 'pending'
            AND p.seq < d.seq)
    ORDER BY d.next_attempt_at, d.seq
    LIMIT $1
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries w
SET attempts = w.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
FROM due
JOIN outbox_events e ON e.ean = due.ean AND e.event_id = due.event_id
LEFT JOIN clients c ON c.client_id = due.client_id
WHERE w.ean = due.ean AND w.event_id = due.event_id AND w.client_id = due.client_id
RETURNING w.ean, w.event_id, w.client_id, w.attempts, e.kind, e.payload, e.occurred_at,
          c.client_id AS known_client, c.webhook_url, c.revoked_at
"""

# the outcome of a failed attempt; only the claim holder (same attempts count) may record it
_FAILED_SQL: Final = """
UPDATE webhook_deliveries
SET state = CASE WHEN $5 OR created_at + make_interval(secs => $6)
                                <= now() + make_interval(secs => $7)
                 THEN 'failed' ELSE 'pending' END,
    next_attempt_at = now() + make_interval(secs => $7),
    last_status = $8, last_error = $9
WHERE ean = $1 AND event_id = $2 AND client_id = $3 AND attempts = $4 AND state = 'pending'
RETURNING state
"""

_DELIVERED_SQL: Final = """
UPDATE webhook_deliveries
SET state = 'delivered', delivered_at = now(), last_status = $5, last_error = NULL
WHERE ean = $1 AND event_id = $2 AND client_id = $3 AND attempts = $4 AND state = 'pending'
"""

_DROP_SQL: Final = """
UPDATE webhook_deliveries SET state = 'failed', last_error = $5
WHERE ean = $1 AND event_id = $2 AND client_id = $3 AND attempts = $4 AND state = 'pending'
"""


@dataclass(frozen=True, slots=True)
class _Attempt:
    status: int | None  # HTTP status, None when no answer came
    error: str | None  # why it failed; None on success

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class WebhookWorker:
    """Claims due deliveries and sends them; several instances (processes) may run at once."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        ring: KeyRing,
        config: WebhookSettings,
        session: aiohttp.ClientSession,
        *,
        acquire_timeout_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self.pool = pool
        self.ring = ring
        self.config = config
        self.session = session
        self.acquire_timeout_s = acquire_timeout_s
        self.rng = rng if rng is not None else random.Random()
        #: outcomes of this instance's attempts (the Prometheus counter sums all instances)
        self.outcomes: Tally[str] = Tally()
        self._gauges_at = 0.0
        self._swept_at = 0.0

    async def run_once(self) -> int:
        """Claim one batch of due deliveries and attempt them all; returns how many."""
        lease = self.config.timeout_s + self.config.lease_margin_s
        async with db.acquire(self.pool, self.acquire_timeout_s) as conn:
            claimed = await conn.fetch(_CLAIM_SQL, self.config.batch_size, lease)
        if claimed:
            async with asyncio.TaskGroup() as group:
                for row in claimed:
                    group.create_task(self._deliver(row))
        return len(claimed)

    async def refresh_gauges(self) -> None:
        """Sample the pending deliveries (all workers') into the gauges."""
        async with db.acquire(self.pool, self.acquire_timeout_s) as conn:
            row = await conn.fetchrow(
                "SELECT count(*) AS n,"
                " coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS age"
                " FROM webhook_deliveries WHERE state = 'pending'"
            )
        assert row is not None
        PENDING.set(row["n"])
        OLDEST_PENDING_SECONDS.set(row["age"])
        self._gauges_at = time.monotonic()

    async def sweep_expiries(self) -> int:
        """Enqueue the ends of consents that passed their expiry (see gateway.storage.outbox)."""
        async with db.acquire(self.pool, self.acquire_timeout_s) as conn:
            swept = await outbox.sweep_expired(conn, lookback_s=self.config.expiry_lookback_s)
        self._swept_at = time.monotonic()
        return swept

    async def run(self) -> None:
        """Deliver until cancelled."""
        while True:
            try:
                if time.monotonic() - self._swept_at >= self.config.expiry_sweep_interval_s:
                    await self.sweep_expiries()
                if time.monotonic() - self._gauges_at >= self.config.gauge_interval_s:
                    await self.refresh_gauges()
                claimed = await self.run_once()
            except _LOOP_ERRORS as exc:
                log.warning(
                    "webhook delivery paused for %gs: %s: %s",
                    self.config.error_pause_s,
                    type(exc).__name__,
                    exc,
                )
                await asyncio.sleep(self.config.error_pause_s)
                continue
            if claimed < self.config.batch_size:  # a full batch: more may be due right now
                await asyncio.sleep(self.config.poll_interval_s)

    async def _deliver(self, row: asyncpg.Record) -> None:
        key = (row["ean"], row["event_id"], row["client_id"], row["attempts"])
        url: str | None = row["webhook_url"]
        if row["known_client"] is None or row["revoked_at"] is not None or url is None:
            if row["known_client"] is None:
                why = "client not found"
            elif row["revoked_at"] is not None:
                why = "client revoked"
            else:
                why = "client has no webhook URL"
            await self._record(_DROP_SQL, key, why)
            self._count(OUTCOME_DROPPED)
            return
        body = event_body(
            event_id=row["event_id"],
            kind=row["kind"],
            ean=row["ean"],
            occurred_at=row["occurred_at"],
            data=row["payload"],
        )
        result = await self._post(url, row["event_id"], body, row["attempts"])
        if result.ok:
            await self._record(_DELIVERED_SQL, key, result.status)
            self._count(OUTCOME_DELIVERED)
            return
        attempts: int = row["attempts"]
        give_up = self.config.max_attempts is not None and attempts >= self.config.max_attempts
        state = await self._record_failure(
            key,
            give_up,
            self.config.give_up_after_s,
            backoff_s(attempts, self.config, self.rng),
            result.status,
            result.error,
        )
        if state == "failed":
            log.warning(
                "webhook %s to client %s given up after %d attempts: %s",
                row["event_id"],
                row["client_id"],
                attempts,
                result.error,
            )
            self._count(OUTCOME_FAILED)
        else:
            self._count(OUTCOME_RETRY)

    def _count(self, outcome: str) -> None:
        DELIVERIES.labels(outcome=outcome).inc()
        self.outcomes[outcome] += 1

    async def _post(self, url: str, event_id: uuid.UUID, body: bytes, attempt: int) -> _Attempt:
        headers = signed_headers(
            self.ring, event_id=event_id, body=body, attempt=attempt, at=int(time.time())
        )
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        started = time.perf_counter()
        try:
            async with self.session.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                status = resp.status
        except TimeoutError:
            return _Attempt(None, f"no answer within {self.config.timeout_s:g} s")
        except aiohttp.ClientError as exc:
            # the recipient's problem (refused, reset, bad URL): recorded, retried
            return _Attempt(None, f"{type(exc).__name__}: {exc}"[:500])
        finally:
            DELIVERY_SECONDS.observe(time.perf_counter() - started)
        if 200 <= status < 300:
            return _Attempt(status, None)
        return _Attempt(status, f"HTTP {status}")

    async def _record(self, sql: str, key: tuple[Any, ...], *args: Any) -> None:
        async with db.acquire(self.pool, self.acquire_timeout_s) as conn:
            status = await conn.execute(sql, *key, *args)
        if status.endswith(" 0"):
            _log_taken_over(key)

    async def _record_failure(self, key: tuple[Any, ...], *args: Any) -> str | None:
        async with db.acquire(self.pool, self.acquire_timeout_s) as conn:
            state: str | None = await conn.fetchval(_FAILED_SQL, *key, *args)
        if state is None:
            _log_taken_over(key)
        return state


def _log_taken_over(key: tuple[Any, ...]) -> None:
    # the lease ran out during the attempt and another worker claimed the delivery again: its
    # outcome is the one that counts (the recipient may see this event twice: at-least-once)
    log.info(
        "webhook outcome of event %s for client %s not recorded: claim taken over", key[1], key[2]
    )
