"""Signed consent receipts: build, sign and verify (standard library + cryptography only).

A receipt records one grant or one end of a consent, in the fields of the Kantara Initiative
Consent Receipt Specification v1.1 that apply to an interval-data consent, plus Meterpoort's own
fields (``ean``, ``consent_id``, ``status``, …). It is handed to the customer, who can keep it and
later prove what they agreed to and when, without trusting our database.

The signed document is::

    {"receipt": {...}, "signature": {"alg": "Ed25519", "kid": "<key id>", "value": "<b64url>"}}

The signature is Ed25519 over the *canonical JSON* of ``receipt``: keys sorted, no whitespace,
UTF-8, non-ASCII characters kept as they are (``json.dumps(receipt, sort_keys=True,
separators=(",", ":"), ensure_ascii=False).encode("utf-8")``). Anyone can check it with the public
key served as a JWK at ``GET /v1/keys`` (``kid`` is the key's RFC 7638 thumbprint).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from consent.errors import ConsentError
from consent.model import DEFAULT_PURPOSES, Consent, Purpose

#: the Kantara Consent Receipt specification version the receipt follows
RECEIPT_VERSION = "KI-CR-v1.1.0"
#: the signature algorithm named in ``signature.alg`` (and the JWK ``crv``)
SIGNATURE_ALG = "Ed25519"

#: what the consent covers, per commodity (SPEC §3: 15-minute electricity, hourly gas)
PII_CATEGORIES: dict[str, tuple[str, ...]] = {
    "electricity": ("interval electricity PT15M",),
    "gas": ("interval gas PT1H",),
}

#: Kantara v1.1 purpose categories of the configured purposes; others are "Other"
PURPOSE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "dynamic-tariff-billing": ("Contracted Service",),
    "energy-insights": ("Personalized Experience",),
}

#: what ``termination`` says when the consent has no expiry
TERMINATION_OPEN = "on revocation, or when the supply contract of the connection ends"


class InvalidReceiptError(ConsentError):
    """A receipt document that is malformed or whose signature does not verify."""


@dataclass(frozen=True, slots=True)
class Controller:
    """The PII controller named in receipts (the energy supplier)."""

    name: str
    contact: str
    address: str
    email: str
    phone: str | None = None

    def as_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "piiController": self.name,
            "contact": self.contact,
            "address": self.address,
            "email": self.email,
        }
        if self.phone:
            entry["phone"] = self.phone
        return entry


def _rfc3339(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def receipt_status(consent: Consent) -> str:
    """``granted`` while the consent is in force, else its end reason (``revoked``, …)."""
    return "granted" if consent.end_reason is None else consent.end_reason.value


def build_receipt(
    consent: Consent,
    *,
    commodity: str,
    controller: Controller,
    policy_url: str,
    public_key_ref: str,
    language: str = "nl",
    jurisdiction: str = "NL",
    purposes: Mapping[str, Purpose] | None = None,
    receipt_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """The (unsigned) receipt of ``consent``'s latest event: its grant, or its end if it ended.

    ``consentTimestamp`` is that event's time (epoch seconds); ``public_key_ref`` says where the
    verifying key is (e.g. ``https://…/v1/keys#<kid>``). Raises ValueError for a commodity
    without interval data.
    """
    categories = PII_CATEGORIES.get(commodity)
    if categories is None:
        known = ", ".join(sorted(PII_CATEGORIES))
        raise ValueError(f"unknown commodity {commodity!r}; expected one of: {known}")
    table = DEFAULT_PURPOSES if purposes is None else purposes
    described = table.get(consent.purpose)
    purpose_text = described.description if described and described.description else consent.purpose
    category = PURPOSE_CATEGORIES.get(consent.purpose, ("Other",))
    event_at = consent.granted_at if consent.ended_at is None else consent.ended_at
    if consent.expires_at is not None:
        termination = f"at {_rfc3339(consent.expires_at)}, or earlier {TERMINATION_OPEN}"
    else:
        termination = TERMINATION_OPEN
    return {
        "version": RECEIPT_VERSION,
        "jurisdiction": jurisdiction,
        "consentTimestamp": int(event_at.timestamp()),
        "collectionMethod": consent.channel.value,
        "consentReceiptID": str(receipt_id or uuid.uuid4()),
        "publicKey": public_key_ref,
        "language": language,
        "piiPrincipalId": consent.customer_id,
        "piiControllers": [controller.as_json()],
        "policyUrl": policy_url,
        "services": [
            {
                "service": consent.purpose,
                "purposes": [
                    {
                        "purpose": purpose_text,
                        "purposeCategory": list(category),
                        "consentType": "EXPLICIT",
                        "piiCategory": list(categories),
                        "primaryPurpose": True,
                        "termination": termination,
                        "thirdPartyDisclosure": False,
                    }
                ],
            }
        ],
        "sensitive": False,
        # Meterpoort's fields: which consent, on which connection, in which state
        "consent_id": str(consent.consent_id),
        "ean": consent.ean,
        "purpose": consent.purpose,
        "data_class": consent.data_class,
        "notice_version": consent.notice_version,
        "status": receipt_status(consent),
        "granted_at": _rfc3339(consent.granted_at),
        "expires_at": _rfc3339(consent.expires_at),
        "ended_at": _rfc3339(consent.ended_at),
        "end_reason": None if consent.end_reason is None else consent.end_reason.value,
    }


def canonical_json(value: Any) -> bytes:
    """The bytes a receipt signature covers: sorted keys, no whitespace, UTF-8, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Inverse of ``b64url``; ValueError for text that is not base64url."""
    if not isinstance(text, str) or "=" in text:
        raise ValueError("not unpadded base64url text")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64url: {exc}") from exc


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key's RFC 7638 JWK thumbprint (SHA-256, base64url): stable for as long as the key."""
    # RFC 7638 §3.2: the required members only, lexicographic order, no whitespace
    members = {"crv": "Ed25519", "kty": "OKP", "x": b64url(_raw_public(public_key))}
    return b64url(hashlib.sha256(canonical_json(members)).digest())


def public_jwk(
    public_key: Ed25519PublicKey, *, kid: str | None = None, use: str = "sig"
) -> dict[str, Any]:
    """The public key as an RFC 8037 OKP JWK (``kid`` defaults to the RFC 7638 thumbprint)."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(_raw_public(public_key)),
        "kid": kid or key_id(public_key),
        "use": use,
        "alg": "EdDSA",
        "key_ops": ["verify"],
    }


def public_key_from_jwk(jwk: Mapping[str, Any]) -> Ed25519PublicKey:
    """The Ed25519 public key of an OKP JWK; InvalidReceiptError for any other key."""
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise InvalidReceiptError(
            f"not an Ed25519 key (kty={jwk.get('kty')!r}, crv={jwk.get('crv')!r})"
        )
    try:
        raw = b64url_decode(jwk["x"])
        return Ed25519PublicKey.from_public_bytes(raw)
    except (KeyError, ValueError) as exc:
        raise InvalidReceiptError(f"JWK 'x' is not an Ed25519 public key: {exc}") from exc


def sign_receipt(
    receipt: Mapping[str, Any], private_key: Ed25519PrivateKey, kid: str | None = None
) -> dict[str, Any]:
    """The signed receipt document (``{"receipt", "signature"}``) for ``receipt``."""
    body = dict(receipt)
    signature = private_key.sign(canonical_json(body))
    return {
        "receipt": body,
        "signature": {
            "alg": SIGNATURE_ALG,
            "kid": kid or key_id(private_key.public_key()),
            "value": b64url(signature),
        },
    }


def verify_receipt(
    document: Mapping[str, Any], public_key: Ed25519PublicKey | Sequence[Ed25519PublicKey]
) -> dict[str, Any]:
    """Check a signed receipt document; returns the receipt.

    ``public_key`` may be one key or several (e.g. every key of the served JWKS): the one whose
    thumbprint equals ``signature.kid`` is used. Raises InvalidReceiptError when the document is
    malformed, no key matches the ``kid``, or the signature does not cover the receipt as given.
    """
    receipt = document.get("receipt")
    signature = document.get("signature")
    if not isinstance(receipt, dict) or not isinstance(signature, dict):
        raise InvalidReceiptError("a receipt document has a 'receipt' and a 'signature' object")
    if signature.get("alg") != SIGNATURE_ALG:
        raise InvalidReceiptError(
            f"unsupported signature algorithm {signature.get('alg')!r} (expected Ed25519)"
        )
    keys = [public_key] if isinstance(public_key, Ed25519PublicKey) else list(public_key)
    kid = signature.get("kid")
    matching = [k for k in keys if key_id(k) == kid]
    if not matching:
        raise InvalidReceiptError(f"no verification key with kid {kid!r}")
    try:
        value = b64url_decode(signature.get("value", ""))
    except ValueError as exc:
        raise InvalidReceiptError(f"signature value: {exc}") from exc
    try:
        message = canonical_json(receipt)
    except ValueError as exc:  # NaN or infinity smuggled into a receipt
        raise InvalidReceiptError(f"receipt is not canonical JSON: {exc}") from exc
    try:
        matching[0].verify(value, message)
    except InvalidSignature as exc:
        raise InvalidReceiptError("the receipt signature does not verify") from exc
    return receipt
