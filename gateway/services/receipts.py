"""Consent receipts: the signed proof a customer gets when a consent is granted or ends.

A receipt names the installation's PII controller (from settings) and points at the public key
that verifies it (``<public_base_url>/v1/keys#<kid>``); the signature is the key ring's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from consent.receipts import Controller, build_receipt
from gateway.keys import KeyRing
from gateway.settings import Settings
from gateway.storage.schema import consent_from_row


def controller(settings: Settings) -> Controller:
    """The PII controller named in receipts, from settings."""
    return Controller(
        name=settings.controller_name,
        contact=settings.controller_contact,
        address=settings.controller_address,
        email=settings.controller_email,
        phone=settings.controller_phone,
    )


def issue_receipt(
    ring: KeyRing, settings: Settings, consent_row: Mapping[str, Any], commodity: str
) -> dict[str, Any]:
    """The signed receipt of a consent as ``gateway.services.consents`` returns it (its grant,
    or its end once ended); ``commodity`` is the connection's."""
    base = settings.public_base_url
    ref = f"{(base or '').rstrip('/')}/v1/keys#{ring.signing_kid}"
    receipt = build_receipt(
        consent_from_row(consent_row),
        commodity=commodity,
        controller=controller(settings),
        policy_url=settings.privacy_policy_url,
        public_key_ref=ref,
        language=settings.receipt_language,
    )
    return ring.sign(receipt)
