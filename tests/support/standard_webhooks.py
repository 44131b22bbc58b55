"""A Standard Webhooks ``v1a`` verifier written from the specification (standardwebhooks.com,
v1.0.0, "Verifying webhook authenticity"), independent of ``gateway.jobs.webhooks``: it shares no
code with the sender, so a test that passes with it shows what any third-party receiver sees.

Hand-written because the ``standardwebhooks`` package (1.1.0) verifies only the symmetric ``v1``
scheme; the cryptography itself is ``cryptography``'s Ed25519.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

WHPK_PREFIX = "whpk_"
DEFAULT_TOLERANCE_S = 300


class WebhookVerificationError(Exception):
    """The request is not an authentic, fresh Standard Webhooks delivery."""


def public_key_from_whpk(text: str) -> Ed25519PublicKey:
    """The Ed25519 public key of a ``whpk_<base64 of the raw 32 bytes>`` string."""
    if not text.startswith(WHPK_PREFIX):
        raise WebhookVerificationError(f"not a whpk_ key: {text!r}")
    try:
        raw = base64.b64decode(text[len(WHPK_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise WebhookVerificationError(f"whpk_ key is not base64: {exc}") from exc
    if len(raw) != 32:
        raise WebhookVerificationError(f"whpk_ key holds {len(raw)} bytes, not 32")
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes,
    trusted: Sequence[Ed25519PublicKey],
    *,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> str:
    """Check a received webhook; returns its ``webhook-id``, raises WebhookVerificationError.

    ``headers`` as received (names in any case), ``body`` the exact bytes, ``trusted`` the keys
    the receiver trusts (never one taken from the request), ``now`` the receiver's clock.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        msg_id = lowered["webhook-id"]
        timestamp = lowered["webhook-timestamp"]
        signatures = lowered["webhook-signature"]
    except KeyError as exc:
        raise WebhookVerificationError(f"missing header {exc.args[0]}") from None
    # the spec: the id must not contain the "." that separates the signed parts
    if not msg_id or "." in msg_id:
        raise WebhookVerificationError(f"bad webhook-id {msg_id!r}")
    # "integer unix timestamp (seconds since epoch)"; int() alone would take " 1", "+1", "1_0"
    if not timestamp.isascii() or not timestamp.isdigit():
        raise WebhookVerificationError(f"webhook-timestamp is not an integer: {timestamp!r}")
    if abs(now - int(timestamp)) > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp {timestamp} is outside the tolerance")
    content = f"{msg_id}.{timestamp}.".encode() + body
    for entry in signatures.split(" "):
        version, sep, encoded = entry.partition(",")
        if not sep or version != "v1a":
            continue  # other schemes (v1 = HMAC) are for other receivers: skipped, not failed
        try:
            signature = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        for key in trusted:
            try:
                key.verify(signature, content)
            except InvalidSignature:
                continue
            return msg_id
    raise WebhookVerificationError("no v1a signature verifies with a trusted key")
