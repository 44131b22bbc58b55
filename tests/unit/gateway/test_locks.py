"""Advisory lock keys: each use has its own (a shared key makes unrelated jobs skip each other)."""

from __future__ import annotations

from gateway.storage import locks


def test_every_bigint_lock_key_is_distinct() -> None:
    bigint = {name: key for name, key in locks.ALL.items() if name != "outbox_order"}
    assert len(set(bigint.values())) == len(bigint), bigint


def test_the_retention_job_and_the_expiry_sweep_do_not_share_a_lock() -> None:
    assert locks.RETENTION != locks.EXPIRY_SWEEP
