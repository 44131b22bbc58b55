"""The audit chain's canonical form and hash (pure: no database)."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Any

import pytest

from gateway.storage import audit

AT = dt.datetime(2026, 3, 29, 1, 2, 3, 4, tzinfo=dt.UTC)


def row(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "seq": 7,
        "at": AT,
        "kind": "data.read",
        "actor": "client:abc",
        "subject": "cust-1",
        "ean": "871687140000000001",
        "detail": {"granularity": "PT15M", "rows": 96},
    }
    fields.update(changes)
    return fields


def test_canonical_json_is_sorted_compact_utf8() -> None:
    got = audit.canonical_json({"b": [1, {"z": None, "a": True}], "a": "é€"})
    assert got == '{"a":"é€","b":[1,{"a":true,"z":null}]}'.encode()


def test_content_bytes_has_every_field_and_rfc3339_utc_microseconds() -> None:
    amsterdam = dt.timezone(dt.timedelta(hours=2))
    same_instant = AT.astimezone(amsterdam)
    got = audit.content_bytes(**row(at=same_instant))
    assert got == (
        b'{"actor":"client:abc","at":"2026-03-29T01:02:03.000004Z",'
        b'"detail":{"granularity":"PT15M","rows":96},"ean":"871687140000000001",'
        b'"kind":"data.read","seq":7,"subject":"cust-1"}'
    )


def test_hash_is_sha256_of_prev_hash_then_content() -> None:
    prev = bytes(range(32))
    content = audit.content_bytes(**row())
    assert audit.chain_hash(prev, content) == hashlib.sha256(prev + content).digest()


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 8},
        {"at": AT + dt.timedelta(microseconds=1)},
        {"kind": "data.export"},
        {"actor": "client:abd"},
        {"subject": None},
        {"ean": "871687140000000002"},
        {"detail": {"granularity": "PT15M", "rows": 97}},
    ],
)
def test_every_content_field_is_covered_by_the_hash(change: dict[str, Any]) -> None:
    prev = audit.GENESIS_HASH
    original = audit.chain_hash(prev, audit.content_bytes(**row()))
    assert audit.chain_hash(prev, audit.content_bytes(**row(**change))) != original


def test_the_previous_hash_is_covered() -> None:
    content = audit.content_bytes(**row())
    assert audit.chain_hash(bytes(32), content) != audit.chain_hash(b"\x01" + bytes(31), content)


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        audit.format_timestamp(dt.datetime(2026, 1, 1))


def test_detail_normalisation_converts_convenience_types() -> None:
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    got = audit.normalise_detail(
        {"id": ident, "from": AT, "day": dt.date(2026, 1, 2), "eans": ("a", "b"), "n": None}
    )
    assert got == {
        "id": "12345678-1234-5678-1234-567812345678",
        "from": "2026-03-29T01:02:03.000004Z",
        "day": "2026-01-02",
        "eans": ["a", "b"],
        "n": None,
    }


@pytest.mark.parametrize(
    ("detail", "message"),
    [
        ({"kwh": 1.5}, r"detail\.kwh: floats are not allowed"),
        ({"nested": [{"x": 1e3}]}, r"detail\.nested\[0\]\.x: floats"),
        ({1: "a"}, "keys must be strings"),
        ({"s": {1, 2}}, r"detail\.s: set is not allowed"),
        ({"b": b"raw"}, r"detail\.b: bytes is not allowed"),
    ],
)
def test_detail_values_that_would_not_survive_jsonb_are_refused(
    detail: dict[Any, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        audit.normalise_detail(detail)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "not a hex string"),
        ("00" * 31, "not 32 bytes"),
    ],
)
def test_malformed_expected_heads_are_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        audit.parse_head(value)


def test_expected_head_parses_hex() -> None:
    assert audit.parse_head("ab" * 32) == b"\xab" * 32
    assert audit.parse_head(None) is None


def test_verify_result_summaries() -> None:
    ok = audit.VerifyResult(ok=True, rows=3, head_seq=3, head_hash=b"\x01" * 32)
    assert ok.summary() == f"ok: 3 rows, head {'01' * 32}"
    bad = audit.VerifyResult(
        ok=False,
        rows=4,
        head_seq=4,
        head_hash=b"\x01" * 32,
        broken_seq=5,
        problem=audit.Problem.CONTENT_ALTERED,
        message="its content does not match its hash",
    )
    assert bad.summary() == "broken: row 5: content altered: its content does not match its hash"


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"subject": None, "ean": None, "detail": {}},
        {"actor": 'a"b\\c', "kind": "x", "detail": {"é": ["€", None, True, -12]}},
        {"seq": 12345678901234},
    ],
)
def test_content_parts_around_at_and_seq_equal_the_content(change: dict[str, Any]) -> None:
    """The database assembles a + at + b + seq + c; it must be byte for byte what verify hashes."""
    fields = row(**change)
    a, b, c = audit.content_parts(
        kind=fields["kind"],
        actor=fields["actor"],
        subject=fields["subject"],
        ean=fields["ean"],
        detail=fields["detail"],
    )
    at = audit.format_timestamp(fields["at"]).encode()
    assert a + at + b + str(fields["seq"]).encode() + c == audit.content_bytes(**fields)
