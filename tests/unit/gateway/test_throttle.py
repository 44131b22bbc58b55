"""The failure buckets of ``gateway.api.throttle`` on a hand-turned clock: the burst, the refill,
the over-limit answer for requests let in before the bucket ran dry, and bounded memory."""

from __future__ import annotations

import pytest

from gateway.api.throttle import KEY_CHARS, FailureBuckets, credential_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_limit_failures_then_one_per_window_over_limit() -> None:
    clock = Clock()
    buckets = FailureBuckets(limit=3, window_s=30.0, max_entries=10, clock=clock)
    assert buckets.fail("a") == (False, 0.0)
    assert buckets.fail("a") == (False, 0.0)
    assert buckets.wait("a") == 0.0
    assert buckets.fail("a") == (False, pytest.approx(10.0))  # the third empties the bucket
    assert buckets.wait("a") == pytest.approx(10.0)
    assert buckets.wait("b") == 0.0  # other keys are not held up
    clock.now += 9.5
    assert buckets.wait("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert buckets.wait("a") == 0.0
    assert not buckets.blocked  # nobody waits: the hot path is one truthiness test again
    # one failure has refilled, so the next empties the bucket again
    assert buckets.fail("a") == (False, pytest.approx(10.0))


def test_a_failure_let_in_before_the_bucket_ran_dry_is_over_the_limit() -> None:
    clock = Clock()
    buckets = FailureBuckets(limit=2, window_s=10.0, max_entries=10, clock=clock)
    buckets.fail("a")
    assert buckets.fail("a") == (False, pytest.approx(5.0))
    # a request admitted concurrently with the last one fails after it: over, and waits longer
    assert buckets.fail("a") == (True, pytest.approx(10.0))


def test_memory_is_bounded_and_the_least_recently_failing_go_first() -> None:
    clock = Clock()
    buckets = FailureBuckets(limit=1, window_s=60.0, max_entries=100, clock=clock)
    for n in range(10_000):  # an attacker rotating addresses (or tokens)
        buckets.fail(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
        clock.now += 0.001
    assert len(buckets) == 100
    assert len(buckets.blocked) <= 100
    assert buckets.wait("10.0.39.15") > 0  # the 9,999th: still remembered
    assert buckets.wait("10.0.0.0") == 0.0  # the first: forgotten


def test_refilled_buckets_are_dropped() -> None:
    clock = Clock()
    buckets = FailureBuckets(limit=5, window_s=10.0, max_entries=100, clock=clock)
    for key in ("a", "b", "c"):
        buckets.fail(key)
    assert len(buckets) == 3
    clock.now += 2.0  # a full refill of one failure at 5 per 10 s
    buckets.fail("d")
    assert len(buckets) == 1


def test_credential_keys() -> None:
    opaque = "Abcdefgh0123456789-_xyzXYZ0123456789abcdefg"
    assert credential_key(opaque) == opaque[:KEY_CHARS]
    jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
    # every JWT starts alike; its signature's end tells tokens apart
    assert credential_key(jwt) == jwt[-KEY_CHARS:]
