"""Consent receipts: Kantara v1.1 fields, canonical JSON, Ed25519 signature, tampering."""

from __future__ import annotations

import copy
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from consent.model import Channel, EndReason, new_consent
from consent.receipts import (
    RECEIPT_VERSION,
    Controller,
    InvalidReceiptError,
    b64url,
    b64url_decode,
    build_receipt,
    canonical_json,
    key_id,
    public_jwk,
    public_key_from_jwk,
    sign_receipt,
    verify_receipt,
)

GRANTED = dt.datetime(2025, 3, 1, 9, 30, 15, tzinfo=dt.UTC)
EXPIRES = dt.datetime(2027, 3, 1, tzinfo=dt.UTC)
REVOKED = dt.datetime(2025, 6, 2, 12, 0, 1, tzinfo=dt.UTC)
CONTROLLER = Controller(
    name="Energie Coöperatie Zuid B.V.",
    contact="Functionaris gegevensbescherming",
    address="Stationsplein 1, 5611 AB Eindhoven",
    email="privacy@energie-zuid.example",
    phone="+31 40 123 4567",
)


def consent(ended: bool = False, **changes: Any) -> Any:
    c = new_consent(
        ean="871687140000000012",
        customer_id=changes.pop("customer_id", "cust-42"),
        purpose=changes.pop("purpose", "dynamic-tariff-billing"),
        notice_version="2025-01",
        granted_at=GRANTED,
        expires_at=changes.pop("expires_at", EXPIRES),
        channel=Channel.PORTAL,
    )
    return c.end(REVOKED, EndReason.REVOKED) if ended else c


def receipt(ended: bool = False, commodity: str = "electricity", **changes: Any) -> dict[str, Any]:
    return build_receipt(
        consent(ended, **changes),
        commodity=commodity,
        controller=CONTROLLER,
        policy_url="https://energie-zuid.example/privacy",
        public_key_ref="https://gw.example/v1/keys#abc",
    )


def test_grant_receipt_has_the_kantara_fields() -> None:
    c = consent()
    r = build_receipt(
        c,
        commodity="electricity",
        controller=CONTROLLER,
        policy_url="https://energie-zuid.example/privacy",
        public_key_ref="https://gw.example/v1/keys#abc",
    )
    assert r["version"] == RECEIPT_VERSION == "KI-CR-v1.1.0"
    assert r["jurisdiction"] == "NL"
    assert r["consentTimestamp"] == int(GRANTED.timestamp())
    assert r["collectionMethod"] == "portal"
    assert uuid.UUID(r["consentReceiptID"]).version == 4
    assert r["publicKey"] == "https://gw.example/v1/keys#abc"
    assert r["language"] == "nl"
    assert r["piiPrincipalId"] == "cust-42"
    assert r["piiControllers"] == [
        {
            "piiController": CONTROLLER.name,
            "contact": CONTROLLER.contact,
            "address": CONTROLLER.address,
            "email": CONTROLLER.email,
            "phone": CONTROLLER.phone,
        }
    ]
    assert r["policyUrl"] == "https://energie-zuid.example/privacy"
    assert r["sensitive"] is False
    [service] = r["services"]
    assert service["service"] == "dynamic-tariff-billing"
    [purpose] = service["purposes"]
    assert purpose["consentType"] == "EXPLICIT"
    assert purpose["piiCategory"] == ["interval electricity PT15M"]
    assert purpose["primaryPurpose"] is True
    assert purpose["purposeCategory"] == ["Contracted Service"]
    assert "2027-03-01T00:00:00Z" in purpose["termination"]
    assert "revocation" in purpose["termination"]
    assert purpose["purpose"]  # the purpose's description, for a human reader
    assert r["status"] == "granted"
    assert r["consent_id"] == str(c.consent_id)
    assert r["ean"] == "871687140000000012"
    assert r["notice_version"] == "2025-01"
    assert r["granted_at"] == "2025-03-01T09:30:15Z"
    assert r["ended_at"] is None and r["end_reason"] is None


def test_revocation_receipt_is_timestamped_at_the_end() -> None:
    r = receipt(ended=True, commodity="gas", purpose="energy-insights")
    assert r["status"] == "revoked" and r["end_reason"] == "revoked"
    assert r["consentTimestamp"] == int(REVOKED.timestamp())
    assert r["ended_at"] == "2025-06-02T12:00:01Z"
    assert r["granted_at"] == "2025-03-01T09:30:15Z"
    purpose = r["services"][0]["purposes"][0]
    assert purpose["piiCategory"] == ["interval gas PT1H"]
    assert purpose["purposeCategory"] == ["Personalized Experience"]


def test_controller_without_phone_omits_it() -> None:
    bare = Controller("Supplier", "DPO", "Somewhere 1", "dpo@example.nl")
    assert "phone" not in bare.as_json()


def test_each_receipt_has_its_own_id() -> None:
    assert receipt()["consentReceiptID"] != receipt()["consentReceiptID"]


def test_unknown_commodity_is_refused() -> None:
    with pytest.raises(ValueError, match="water"):
        receipt(commodity="water")


def test_canonical_json_is_sorted_compact_utf8() -> None:
    expected = '{"a":["é",null,true],"b":1}'.encode()
    assert canonical_json({"b": 1, "a": ["é", None, True]}) == expected
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_key_id_matches_the_rfc_8037_thumbprint_vector() -> None:
    # RFC 8037 appendix A.1 (the key) and A.3 (its RFC 7638 thumbprint)
    d = b64url_decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
    key = Ed25519PrivateKey.from_private_bytes(d)
    jwk = public_jwk(key.public_key())
    assert jwk["x"] == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert key_id(key.public_key()) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    assert jwk["kid"] == key_id(key.public_key())
    assert (jwk["kty"], jwk["crv"], jwk["use"], jwk["key_ops"]) == (
        "OKP",
        "Ed25519",
        "sig",
        ["verify"],
    )
    assert "d" not in jwk


def test_public_key_from_jwk_round_trips_and_refuses_other_keys() -> None:
    pub = Ed25519PrivateKey.generate().public_key()
    back = public_key_from_jwk(public_jwk(pub))
    assert key_id(back) == key_id(pub)
    with pytest.raises(InvalidReceiptError, match="not an Ed25519 key"):
        public_key_from_jwk({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"})
    with pytest.raises(InvalidReceiptError, match="'x'"):
        public_key_from_jwk({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"})


def test_b64url_round_trip_and_refusals() -> None:
    for data in (b"", b"\x00", b"\xff\xfe\xfd", bytes(range(64))):
        assert b64url_decode(b64url(data)) == data
        assert "=" not in b64url(data)
    with pytest.raises(ValueError):
        b64url_decode("AA==")


def test_sign_and_verify_round_trip() -> None:
    key = Ed25519PrivateKey.generate()
    doc = sign_receipt(receipt(), key)
    assert doc["signature"]["alg"] == "Ed25519"
    assert doc["signature"]["kid"] == key_id(key.public_key())
    assert len(b64url_decode(doc["signature"]["value"])) == 64
    assert verify_receipt(doc, key.public_key()) == doc["receipt"]
    # survives a JSON round trip and any key order: the signature covers the canonical form
    wire = json.loads(json.dumps(doc, ensure_ascii=True, indent=2))
    wire["receipt"] = dict(reversed(list(wire["receipt"].items())))
    assert verify_receipt(wire, key.public_key())["consent_id"] == doc["receipt"]["consent_id"]


def test_the_signature_is_over_exactly_the_canonical_bytes() -> None:
    key = Ed25519PrivateKey.generate()
    r = receipt()
    doc = sign_receipt(r, key)
    # an independent verifier: json + cryptography only
    message = json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    key.public_key().verify(b64url_decode(doc["signature"]["value"]), message.encode("utf-8"))


def test_verify_picks_the_key_by_kid() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    doc = sign_receipt(receipt(), old)
    keys: list[Ed25519PublicKey] = [new.public_key(), old.public_key()]
    assert verify_receipt(doc, keys)["status"] == "granted"
    with pytest.raises(InvalidReceiptError, match="no verification key"):
        verify_receipt(doc, new.public_key())


def _leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaf_paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaf_paths(v, (*path, i))
    else:
        yield path


def _tampered(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if value is None:
        return "2030-01-01T00:00:00Z"
    return str(value) + "x"


@pytest.mark.parametrize("ended", [False, True])
def test_tampering_with_any_field_breaks_the_signature(ended: bool) -> None:
    key = Ed25519PrivateKey.generate()
    doc = sign_receipt(receipt(ended=ended), key)
    paths = list(_leaf_paths(doc["receipt"]))
    assert len(paths) > 25
    for path in paths:
        forged = copy.deepcopy(doc)
        target = forged["receipt"]
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = _tampered(target[path[-1]])
        with pytest.raises(InvalidReceiptError, match="does not verify"):
            verify_receipt(forged, key.public_key())
    # adding or removing a field breaks it too
    added = copy.deepcopy(doc)
    added["receipt"]["extra"] = 1
    removed = copy.deepcopy(doc)
    del removed["receipt"]["ean"]
    for forged in (added, removed):
        with pytest.raises(InvalidReceiptError, match="does not verify"):
            verify_receipt(forged, key.public_key())


def test_forged_signatures_and_malformed_documents_are_refused() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    doc = sign_receipt(receipt(), key)
    # signed by another key but claiming our kid
    forged = sign_receipt(doc["receipt"], other, kid=doc["signature"]["kid"])
    with pytest.raises(InvalidReceiptError, match="does not verify"):
        verify_receipt(forged, key.public_key())
    flipped = copy.deepcopy(doc)
    raw = bytearray(b64url_decode(doc["signature"]["value"]))
    raw[0] ^= 1
    flipped["signature"]["value"] = b64url(bytes(raw))
    with pytest.raises(InvalidReceiptError, match="does not verify"):
        verify_receipt(flipped, key.public_key())
    wrong_alg = copy.deepcopy(doc)
    wrong_alg["signature"]["alg"] = "HS256"
    with pytest.raises(InvalidReceiptError, match="algorithm"):
        verify_receipt(wrong_alg, key.public_key())
    bad_value = copy.deepcopy(doc)
    bad_value["signature"]["value"] = "not*base64"
    with pytest.raises(InvalidReceiptError, match="signature value"):
        verify_receipt(bad_value, key.public_key())
    with pytest.raises(InvalidReceiptError, match="'receipt' and a 'signature'"):
        verify_receipt({"receipt": doc["receipt"]}, key.public_key())
    nan = copy.deepcopy(doc)
    nan["receipt"]["consentTimestamp"] = float("nan")
    with pytest.raises(InvalidReceiptError, match="canonical"):
        verify_receipt(nan, key.public_key())
