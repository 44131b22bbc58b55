"""How long each data class is kept (SPEC §2), as calendar arithmetic with no I/O.

The retention job (``gateway.jobs.retention``) deletes by these rules; the erasure answer tells
a customer until when kept data stays by the same rules, so both read them from here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long each data class is kept, and how the deletes are cut up."""

    #: interval readings are kept this many years after receipt
    interval_years: int = 4
    #: daily/monthly readings are kept this many years after the contract ends (fiscal)
    daily_years: int = 7
    #: consent records outlive the interval data they justify by this many years
    consent_extra_years: int = 1
    #: finished consent-change notifications are kept this many days
    outbox_days: int = 30
    #: audit rows go this many years after they were recorded; None: never automatically
    audit_years: int | None = None
    #: rows per DELETE statement
    batch_rows: int = 10_000
    #: how long dropping a partition may wait for its table lock (ms)
    lock_timeout_ms: int = 5_000
    #: readings measured longer ago than this many days are refused by ingest (the gateway's
    #: spool horizon): interval partitions whose periods end before then are closed
    spool_horizon_days: int = 40
    #: closed interval partitions whose indexes one run rebuilds (0: none)
    compactions_per_run: int = 1

    @property
    def consent_proof_years(self) -> int:
        """Years a consent record is kept after the consent ended: as long as the interval
        data it justified could be held, plus ``consent_extra_years``."""
        return self.interval_years + self.consent_extra_years


def add_years(at: dt.datetime, years: int) -> dt.datetime:
    """``at`` moved by ``years`` calendar years (negative: back); 29 February → 28 February."""
    try:
        return at.replace(year=at.year + years)
    except ValueError:  # 29 February in a year that has none
        return at.replace(year=at.year + years, day=28)


def years_before(at: dt.datetime, years: int) -> dt.datetime:
    """``at`` moved back ``years`` calendar years (29 February → 28 February)."""
    return add_years(at, -years)


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Data older than these instants is expired (``gateway.jobs.retention`` applies them)."""

    #: interval readings with period_start before this go
    interval: dt.datetime
    #: daily/monthly readings of connections whose contract ended before this go
    contract_end: dt.datetime
    #: consent records whose consent ended before this go
    consent_end: dt.datetime
    #: finished notifications recorded before this go
    outbox: dt.datetime
    #: audit rows recorded before this go; None: the policy keeps the trail
    audit: dt.datetime | None = None
    #: interval partitions whose periods all end at or before this can receive no more
    #: readings (the spool horizon, and a day for writes in flight): they are compacted
    closed: dt.datetime | None = None

    @classmethod
    def at(cls, now: dt.datetime, policy: RetentionPolicy) -> Cutoffs:
        """The cutoffs of a run at ``now``."""
        if now.tzinfo is None:
            raise ValueError("retention needs a timezone-aware `now`")
        return cls(
            interval=years_before(now, policy.interval_years),
            contract_end=years_before(now, policy.daily_years),
            consent_end=years_before(now, policy.interval_years + policy.consent_extra_years),
            outbox=now - dt.timedelta(days=policy.outbox_days),
            audit=None if policy.audit_years is None else years_before(now, policy.audit_years),
            closed=now - dt.timedelta(days=policy.spool_horizon_days + 1),
        )
