"""Consents and purposes: validation and the once-only end."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from consent import (
    DEFAULT_MAX_LIFETIME,
    Consent,
    ConsentEndedError,
    EndReason,
    InvalidConsentError,
    Level,
    OnRevoke,
    UnknownLevelError,
    UnknownPurposeError,
    new_consent,
    parse_level,
    purpose_named,
)

T = datetime(2026, 1, 1, tzinfo=UTC)


def make(**kw: object) -> Consent:
    args: dict[str, object] = {
        "ean": "871234567890123456",
        "customer_id": "c1",
        "purpose": "energy-insights",
        "notice_version": "v3",
        "granted_at": T,
    }
    args.update(kw)
    return new_consent(**args)  # type: ignore[arg-type]


def test_new_consent_gets_max_lifetime() -> None:
    c = make()
    assert c.expires_at == T + DEFAULT_MAX_LIFETIME
    assert c.ended_at is None and c.data_class == "interval"


def test_lifetime_over_maximum_refused() -> None:
    with pytest.raises(InvalidConsentError, match="maximum lifetime"):
        make(expires_at=T + DEFAULT_MAX_LIFETIME + timedelta(seconds=1))


def test_grant_whose_lifetime_ends_past_the_calendar_refused() -> None:
    # found by tests/integration/test_fuzz_http.py: granted_at in 9999 was an OverflowError (500)
    with pytest.raises(InvalidConsentError, match="after the year 9999"):
        make(granted_at=datetime(9999, 12, 31, tzinfo=UTC))


def test_expiry_before_grant_refused() -> None:
    with pytest.raises(InvalidConsentError, match="not after granted_at"):
        make(expires_at=T)


def test_naive_time_refused() -> None:
    with pytest.raises(InvalidConsentError, match="time zone"):
        make(granted_at=datetime(2026, 1, 1))


def test_unknown_purpose() -> None:
    with pytest.raises(UnknownPurposeError, match="marketing"):
        make(purpose="marketing")


def test_purposes_say_what_happens_at_revocation() -> None:
    assert purpose_named("dynamic-tariff-billing").on_revoke is OnRevoke.KEEP
    assert purpose_named("energy-insights").on_revoke is OnRevoke.DELETE


def test_end_is_final_and_clamped_to_grant() -> None:
    c = make()
    ended = c.end(T + timedelta(days=1), EndReason.REVOKED)
    assert ended.ended_at == T + timedelta(days=1) and ended.end_reason is EndReason.REVOKED
    with pytest.raises(ConsentEndedError, match="already ended"):
        ended.end(T + timedelta(days=2), EndReason.EXPIRED)
    early = c.end(T - timedelta(days=1), EndReason.REVOKED)
    assert early.ended_at == T


def test_end_time_is_the_first_of_all_ends() -> None:
    c = Consent(
        consent_id=uuid.uuid4(),
        ean="871234567890123456",
        customer_id="c",
        purpose="energy-insights",
        notice_version="v1",
        granted_at=T,
        expires_at=T + timedelta(days=5),
    )
    assert c.end_time() == T + timedelta(days=5)
    assert c.end_time(T + timedelta(days=2)) == T + timedelta(days=2)
    assert c.covers(T) and not c.covers(T + timedelta(days=5))


def test_parse_level() -> None:
    assert parse_level("monthly") is Level.MONTHLY
    with pytest.raises(UnknownLevelError, match="interval"):
        parse_level("interval")
