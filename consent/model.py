"""Consents and purposes: plain frozen dataclasses, standard library only.

A consent (a *permission* in EU 2023/1162 terms) allows interval readings of one connection to be
stored for one purpose, from ``granted_at`` until the first of ``ended_at`` (revoked, contract
ended, moved out, erased), ``expires_at`` and the contract's end. Its history is never rewritten:
ending a consent sets ``ended_at``/``end_reason`` once (``Consent.end`` refuses a second end).
All times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from consent.errors import (
    ConsentEndedError,
    ConsentLifetimeError,
    InvalidConsentError,
    UnknownPurposeError,
)


class EndReason(StrEnum):
    REVOKED = "revoked"
    EXPIRED = "expired"
    CONTRACT_ENDED = "contract-ended"
    MOVE_OUT = "move-out"
    #: the customer switched to another supplier (SPEC §3a)
    SWITCH = "switch"
    ERASURE = "erasure"


class Channel(StrEnum):
    PORTAL = "portal"
    PHONE = "phone"
    API = "api"


class OnRevoke(StrEnum):
    """What happens to interval readings stored under a consent when it ends."""

    #: still served to clients of the purpose for the consented period (e.g. billing it)
    KEEP = "keep"
    #: deleted when the consent ends
    DELETE = "delete"


#: the only data class a consent is needed for (SPEC §2: periods shorter than a day)
DATA_CLASS_INTERVAL = "interval"

#: default maximum lifetime of a consent (SPEC §4: configurable, default 3 years)
DEFAULT_MAX_LIFETIME = timedelta(days=3 * 365 + 1)


@dataclass(frozen=True, slots=True)
class Purpose:
    """A purpose a consent can be given for, and what happens to its data at revocation."""

    name: str
    on_revoke: OnRevoke
    description: str = ""


#: configured purposes (SPEC §4 defaults)
DEFAULT_PURPOSES: dict[str, Purpose] = {
    "dynamic-tariff-billing": Purpose(
        "dynamic-tariff-billing", OnRevoke.KEEP, "billing of a dynamic (hourly/15-minute) tariff"
    ),
    "energy-insights": Purpose(
        "energy-insights", OnRevoke.DELETE, "consumption insights in the customer portal"
    ),
}


def purpose_named(name: str, purposes: dict[str, Purpose] | None = None) -> Purpose:
    """The configured purpose ``name``; UnknownPurposeError when it is not configured."""
    table = DEFAULT_PURPOSES if purposes is None else purposes
    purpose = table.get(name)
    if purpose is None:
        allowed = ", ".join(sorted(table))
        raise UnknownPurposeError(f"unknown purpose {name!r}; configured purposes: {allowed}")
    return purpose


def _require_aware(name: str, value: datetime | None) -> None:
    if value is not None and value.utcoffset() is None:
        raise InvalidConsentError(f"{name} must carry a time zone (got naive {value.isoformat()})")


@dataclass(frozen=True, slots=True)
class Consent:
    """One interval-data consent of one connection (EAN) for one purpose."""

    consent_id: uuid.UUID
    ean: str
    customer_id: str
    purpose: str
    notice_version: str
    granted_at: datetime
    expires_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: EndReason | None = None
    channel: Channel = Channel.API
    data_class: str = DATA_CLASS_INTERVAL

    def __post_init__(self) -> None:
        _require_aware("granted_at", self.granted_at)
        _require_aware("expires_at", self.expires_at)
        _require_aware("ended_at", self.ended_at)
        if not self.customer_id:
            raise InvalidConsentError("customer_id must not be empty")
        if not self.notice_version:
            raise InvalidConsentError("notice_version must not be empty")
        if self.data_class != DATA_CLASS_INTERVAL:
            raise InvalidConsentError(
                f"data_class {self.data_class!r} needs no consent; only 'interval' does"
            )
        if self.expires_at is not None and self.expires_at <= self.granted_at:
            raise InvalidConsentError(
                f"expires_at {self.expires_at.isoformat()} is not after granted_at "
                f"{self.granted_at.isoformat()}"
            )
        if (self.ended_at is None) != (self.end_reason is None):
            raise InvalidConsentError("ended_at and end_reason are set together or not at all")

    def end_time(self, contract_end: datetime | None = None) -> datetime | None:
        """The first of ``ended_at``, ``expires_at`` and ``contract_end``; None when open."""
        end: datetime | None = None
        for candidate in (self.ended_at, self.expires_at, contract_end):
            if candidate is not None and (end is None or candidate < end):
                end = candidate
        return end

    def covers(self, t: datetime, contract_end: datetime | None = None) -> bool:
        """True when ``granted_at <= t < end_time(contract_end)``."""
        if t < self.granted_at:
            return False
        end = self.end_time(contract_end)
        return end is None or t < end

    def end(self, at: datetime, reason: EndReason) -> Consent:
        """This consent ended at ``at`` for ``reason``; ConsentEndedError if it has ended."""
        _require_aware("at", at)
        if self.ended_at is not None:
            raise ConsentEndedError(
                f"consent {self.consent_id} already ended at {self.ended_at.isoformat()} "
                f"({self.end_reason})"
            )
        # an end before the grant would claim the consent never existed; clamp to the grant so
        # the history still shows it was given
        return dataclasses.replace(self, ended_at=max(at, self.granted_at), end_reason=reason)


def new_consent(
    *,
    ean: str,
    customer_id: str,
    purpose: str,
    notice_version: str,
    granted_at: datetime,
    expires_at: datetime | None = None,
    channel: Channel = Channel.API,
    purposes: dict[str, Purpose] | None = None,
    max_lifetime: timedelta = DEFAULT_MAX_LIFETIME,
    consent_id: uuid.UUID | None = None,
) -> Consent:
    """A new consent, validated against the configured purposes and maximum lifetime.

    Without ``expires_at`` the consent expires after ``max_lifetime``: no consent is open-ended.
    """
    purpose_named(purpose, purposes)
    _require_aware("granted_at", granted_at)
    _require_aware("expires_at", expires_at)
    try:
        limit = granted_at + max_lifetime
    except OverflowError:
        # a grant so late that its lifetime would end past year 9999 (a mistyped year): no
        # consent can run that long, so it is refused like any other lifetime
        raise ConsentLifetimeError(
            f"granted_at {granted_at.isoformat()} is too late: its lifetime of"
            f" {max_lifetime.days} days would end after the year 9999"
        ) from None
    if expires_at is None:
        expires_at = limit
    elif expires_at > limit:
        # worded for the customer who picked the date: every entry point shows it as it is
        raise ConsentLifetimeError(
            f"expires_at is beyond the maximum consent lifetime of {max_lifetime.days} days"
            f" (the maximum lifetime from granted_at ends {limit.isoformat()})"
        )
    return Consent(
        consent_id=uuid.uuid4() if consent_id is None else consent_id,
        ean=ean,
        customer_id=customer_id,
        purpose=purpose,
        notice_version=notice_version,
        granted_at=granted_at,
        expires_at=expires_at,
        channel=channel,
    )
