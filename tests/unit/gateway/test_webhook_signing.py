"""Webhook signatures, bodies and backoff (pure: no network, no database)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from consent.receipts import key_id
from gateway.jobs.webhooks import (
    HEADER_ATTEMPT,
    HEADER_EVENT_ID,
    HEADER_KEY_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    HEADER_WEBHOOK_ID,
    HEADER_WEBHOOK_SIGNATURE,
    HEADER_WEBHOOK_TIMESTAMP,
    WebhookSignatureError,
    backoff_s,
    event_body,
    sign,
    signed_headers,
    standard_signatures,
    standard_signed_content,
    verify,
)
from gateway.keys import KeyRing, standard_webhooks_public_key
from gateway.settings import WebhookSettings
from tests.support.standard_webhooks import (
    WebhookVerificationError,
    public_key_from_whpk,
    verify_webhook,
)

EVENT_ID = uuid.UUID("0b5b1c1e-4a44-4a3c-9a55-5d3b3c6f2a10")
OCCURRED = dt.datetime(2025, 3, 30, 1, 15, tzinfo=dt.timezone(dt.timedelta(hours=2)))
NOW = 1_743_290_100


def body() -> bytes:
    return event_body(
        event_id=EVENT_ID,
        kind="consent.ended",
        ean="871687140000000017",
        occurred_at=OCCURRED,
        data={"purpose": "dynamic-tariff-billing", "end_reason": "revoked", "note": "é"},
    )


def independent_check(
    public_raw: bytes, timestamp: str, signature_header: str, data: bytes
) -> bool:
    """What a recipient without our code does, from the documented scheme."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    scheme, _, value = signature_header.partition("=")
    assert scheme == "ed25519"
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(raw, timestamp.encode() + b"." + data)
    except InvalidSignature:
        return False
    return True


def test_body_is_canonical_json_with_utc_times() -> None:
    data = body()
    assert data == body()  # identical on every attempt
    parsed = json.loads(data)
    assert parsed == {
        "event_id": str(EVENT_ID),
        "kind": "consent.ended",
        "ean": "871687140000000017",
        "occurred_at": "2025-03-29T23:15:00Z",
        "data": {"purpose": "dynamic-tariff-billing", "end_reason": "revoked", "note": "é"},
    }
    # sorted keys, no whitespace, UTF-8 as is
    assert data == json.dumps(
        parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def test_signature_verifies_and_binds_timestamp_and_body() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    raw_public = public.public_bytes_raw()
    header = sign(key, NOW, body())
    assert header.startswith("ed25519=") and "=" not in header.removeprefix("ed25519=")
    verify(public, timestamp=str(NOW), signature=header, body=body(), now=NOW + 10)
    assert independent_check(raw_public, str(NOW), header, body())
    # a changed byte of the body, or another timestamp, breaks it
    tampered = body().replace(b"revoked", b"expired")
    assert not independent_check(raw_public, str(NOW), header, tampered)
    with pytest.raises(WebhookSignatureError, match="does not verify"):
        verify(public, timestamp=str(NOW), signature=header, body=tampered, now=NOW)
    with pytest.raises(WebhookSignatureError, match="does not verify"):
        verify(public, timestamp=str(NOW + 1), signature=header, body=body(), now=NOW)


def test_verify_refuses_other_keys_stale_timestamps_and_malformed_headers() -> None:
    key = Ed25519PrivateKey.generate()
    header = sign(key, NOW, body())
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(WebhookSignatureError, match="does not verify"):
        verify(other, timestamp=str(NOW), signature=header, body=body(), now=NOW)
    with pytest.raises(WebhookSignatureError, match="more than 300 s"):
        verify(key.public_key(), timestamp=str(NOW), signature=header, body=body(), now=NOW + 301)
    with pytest.raises(WebhookSignatureError, match="unix seconds"):
        verify(key.public_key(), timestamp="-5", signature=header, body=body(), now=NOW)
    with pytest.raises(WebhookSignatureError, match="must be 'ed25519="):
        verify(
            key.public_key(),
            timestamp=str(NOW),
            signature=header.replace("ed25519", "hmac-sha256"),
            body=body(),
            now=NOW,
        )
    with pytest.raises(WebhookSignatureError, match="not base64url"):
        verify(key.public_key(), timestamp=str(NOW), signature="ed25519=@@@", body=body(), now=NOW)
    with pytest.raises(WebhookSignatureError, match="not an Ed25519 signature"):
        verify(key.public_key(), timestamp=str(NOW), signature="ed25519=AAAA", body=body(), now=NOW)


def test_standard_signature_covers_id_timestamp_and_body() -> None:
    key = Ed25519PrivateKey.generate()
    content = standard_signed_content(str(EVENT_ID), NOW, body())
    assert content == f"{EVENT_ID}.{NOW}.".encode() + body()
    header = standard_signatures([key], str(EVENT_ID), NOW, body())
    version, _, encoded = header.partition(",")
    assert version == "v1a"
    # standard base64 with padding (88 characters for 64 bytes), not base64url
    assert len(encoded) == 88 and encoded.endswith("==")
    key.public_key().verify(base64.b64decode(encoded, validate=True), content)
    # Ed25519 is deterministic: the same content gives the same signature on every attempt
    assert standard_signatures([key], str(EVENT_ID), NOW, body()) == header


def test_standard_signatures_list_one_entry_per_key_each_verifying() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    header = standard_signatures([new, old], str(EVENT_ID), NOW, body())
    entries = header.split(" ")
    assert len(entries) == 2 and all(e.startswith("v1a,") for e in entries)
    headers = {
        "webhook-id": str(EVENT_ID),
        "webhook-timestamp": str(NOW),
        "webhook-signature": header,
    }
    # a receiver that trusts either key accepts the request
    for trusted in (old, new):
        verify_webhook(headers, body(), [trusted.public_key()], now=NOW)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, body(), [Ed25519PrivateKey.generate().public_key()], now=NOW)
    with pytest.raises(ValueError, match="at least one"):
        standard_signatures([], str(EVENT_ID), NOW, body())


@pytest.mark.parametrize("bad_id", ["msg.1", "", "é", "a b", "a\nb"])
def test_a_webhook_id_with_a_dot_or_outside_printable_ascii_is_refused(bad_id: str) -> None:
    with pytest.raises(ValueError, match="webhook id"):
        standard_signed_content(bad_id, NOW, body())


def test_whpk_is_standard_base64_of_the_raw_key() -> None:
    public = Ed25519PrivateKey.generate().public_key()
    whpk = standard_webhooks_public_key(public)
    assert whpk.startswith("whpk_")
    assert base64.b64decode(whpk.removeprefix("whpk_"), validate=True) == public.public_bytes_raw()
    assert public_key_from_whpk(whpk).public_bytes_raw() == public.public_bytes_raw()


def test_signed_headers_carry_standard_and_deprecated_headers() -> None:
    ring = KeyRing(Ed25519PrivateKey.generate())
    headers = signed_headers(ring, event_id=EVENT_ID, body=body(), attempt=3, at=NOW)
    assert headers[HEADER_WEBHOOK_ID] == str(EVENT_ID)
    assert headers[HEADER_WEBHOOK_TIMESTAMP] == str(NOW)
    assert headers[HEADER_WEBHOOK_SIGNATURE].count("v1a,") == 1
    public = ring.signing_key.public_key()
    assert verify_webhook(headers, body(), [public], now=NOW + 10) == str(EVENT_ID)
    assert headers[HEADER_EVENT_ID] == str(EVENT_ID)
    assert headers[HEADER_TIMESTAMP] == str(NOW)
    assert headers[HEADER_KEY_ID] == key_id(ring.signing_key.public_key())
    assert headers[HEADER_ATTEMPT] == "3"
    assert headers["Content-Type"] == "application/json"
    verify(
        ring.signing_key.public_key(),
        timestamp=headers[HEADER_TIMESTAMP],
        signature=headers[HEADER_SIGNATURE],
        body=body(),
        now=NOW,
    )


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    config = WebhookSettings(backoff_base_s=10.0, backoff_cap_s=3600.0)
    rng = random.Random(7)
    for attempt in range(1, 80):
        full = min(3600.0, 10.0 * 2 ** (attempt - 1))
        for _ in range(20):
            delay = backoff_s(attempt, config, rng)
            assert full / 2 <= delay <= full
    # jitter actually varies
    assert len({round(backoff_s(3, config, rng), 6) for _ in range(20)}) > 10
    # the lowest possible delay still grows until the cap
    lows = [backoff_s(n, config, _ZeroRandom()) for n in range(1, 12)]
    assert lows[:6] == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0]
    assert lows[-1] == 1800.0


class _ZeroRandom(random.Random):
    def random(self) -> float:
        return 0.0


def test_the_readme_verifier_accepts_a_signed_delivery_and_refuses_forgeries() -> None:
    """The README's receiver example, run as written (it documents the scheme)."""
    readme = (Path(__file__).parents[3] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Webhooks\n", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    ring = KeyRing(Ed25519PrivateKey.generate())
    now = int(time.time())
    headers = signed_headers(ring, event_id=EVENT_ID, body=body(), attempt=1, at=now)
    namespace: dict[str, Any] = {"jwks": ring.jwks()}
    exec(compile(example, "README.md", "exec"), namespace)
    readme_verify = namespace["verify"]
    readme_verify(headers, body())
    for bad_headers, bad_body in [
        (headers, body().replace(b"revoked", b"expired")),
        ({**headers, "webhook-id": str(uuid.uuid4())}, body()),
        ({**headers, "webhook-timestamp": str(now - 600)}, body()),
        ({**headers, "webhook-id": f"{EVENT_ID}.{now}"}, body()),
        (
            signed_headers(
                KeyRing(Ed25519PrivateKey.generate()),
                event_id=EVENT_ID,
                body=body(),
                attempt=1,
                at=now,
            ),
            body(),
        ),
    ]:
        with pytest.raises(ValueError):
            readme_verify(bad_headers, bad_body)
