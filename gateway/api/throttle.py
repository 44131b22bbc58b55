"""Throttling of repeated authentication failures (SPEC §6): 429 + ``Retry-After``.

Failures are counted in token buckets, apart per client address (``gateway.api.client_address``;
an IPv6 client by its /64, which one host commonly holds whole) and per credential key
(``credential_key``). A bucket holds ``auth_failure_limit`` failures and refills at that many per
``auth_failure_window_s``: after a burst of ``limit`` failures, one more try every window/limit
seconds. A caller whose address or credential key has no failure left is answered 429 before its
credential is looked at, so the answer says nothing about the credential, and the guesses per
address and per key are bounded however fast they come.

What passes and what waits:

* successes are never counted, and cost one truthiness test while nobody is throttled (while
  someone is: the caller's address and two dict look-ups);
* valid credentials pass while other addresses or credential keys are throttled;
* a valid credential from a throttled address (a device behind a NAT shared with a guesser) waits
  like everyone there, at most window/limit seconds once the failures stop, and gets a turn
  between the guesses meanwhile: nobody is locked out for longer than that.

Bounds and limits:

* memory: each of the two tables keeps at most ``auth_throttle_max_entries`` buckets, the least
  recently failing dropped first (an attacker rotating addresses or tokens only pushes out older
  entries); a bucket that has refilled is dropped too, as it is no different from none;
* per process: with N worker processes an address gets up to N × the limit;
* requests already past the gate when a bucket runs dry are still checked (one failing beyond
  the limit is answered 429, not 401): a first burst of concurrent requests from one address can
  exceed the limit by the number in flight.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv6Network

from aiohttp import web

from gateway.api.client_address import IPNetwork, client_address
from gateway.errors import TooManyRequestsError
from gateway.settings import Settings

log = logging.getLogger(__name__)

#: characters of an opaque token (or of a JWT's end) that failures are counted under
KEY_CHARS = 8

Clock = Callable[[], float]


def credential_key(token: str) -> str:
    """What failures with ``token`` are counted under.

    An opaque token (admin, device, client): its first ``KEY_CHARS`` characters, so a guesser who
    learnt the start of a token (a truncated log line, a photo of a label) is bounded however many
    addresses it uses. A customer JWT: the last ``KEY_CHARS`` characters of its signature. Its
    start is the same for every token (``eyJhbGciOi…``), its signature cannot be guessed, and its
    unverified ``sub`` would let anyone who knows a customer id lock that customer out; what is
    left to bound is one token (a stolen, expired or revoked one) replayed from many addresses.
    """
    if token.count(".") == 2:
        return token[-KEY_CHARS:]
    return token[:KEY_CHARS]


@dataclass(slots=True)
class _Bucket:
    #: failures still allowed, as of ``stamp`` (negative after a concurrent burst)
    level: float
    stamp: float


class FailureBuckets:
    """Token buckets of failures by key: ``limit`` per ``window_s``, at most ``max_entries``
    buckets."""

    def __init__(self, limit: int, window_s: float, max_entries: int, clock: Clock) -> None:
        self._limit = float(limit)
        self._rate = limit / window_s
        self._max_entries = max_entries
        self._clock = clock
        # least recently failing first
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        #: key → when it may try again, for the keys with no failure left (about in that order)
        self.blocked: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0 when it may now."""
        now = self._clock()
        self._unblock(now)
        until = self.blocked.get(key)
        if until is None:
            return 0.0
        if until > now:
            return until - now
        del self.blocked[key]  # out of expiry order, so the sweep has not reached it
        return 0.0

    def fail(self, key: str) -> tuple[bool, float]:
        """Count a failure of ``key``: whether it went beyond the limit, and the seconds ``key``
        must now wait (0: none)."""
        now = self._clock()
        bucket = self._buckets.pop(key, None)
        level = self._limit if bucket is None else self._level(bucket, now)
        over = level < 1
        level -= 1
        self._buckets[key] = _Bucket(level, now)
        self._tidy(now)
        if level >= 1:
            return over, 0.0
        self.blocked.pop(key, None)  # re-inserted last, to keep ``blocked`` in expiry order
        self.blocked[key] = until = now + (1 - level) / self._rate
        return over, until - now

    def _level(self, bucket: _Bucket, now: float) -> float:
        return min(self._limit, bucket.level + (now - bucket.stamp) * self._rate)

    def _tidy(self, now: float) -> None:
        buckets = self._buckets
        while len(buckets) > self._max_entries:
            self.blocked.pop(buckets.popitem(last=False)[0], None)
        # amortised: each bucket is dropped once, and the sweep stops at the first one in use
        while buckets:
            key, oldest = next(iter(buckets.items()))
            if self._level(oldest, now) < self._limit:
                break
            del buckets[key]
            self.blocked.pop(key, None)
        self._unblock(now)

    def _unblock(self, now: float) -> None:
        blocked = self.blocked
        while blocked:
            key, until = next(iter(blocked.items()))
            if until > now:
                break
            del blocked[key]


class AuthThrottle:
    """The failure buckets of one process, by client address and by credential key."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        max_entries: int,
        trusted_proxies: Sequence[IPNetwork] = (),
        clock: Clock = time.monotonic,
    ) -> None:
        self.addresses = FailureBuckets(limit, window_s, max_entries, clock)
        self.credentials = FailureBuckets(limit, window_s, max_entries, clock)
        self._trusted = tuple(trusted_proxies)

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = time.monotonic) -> AuthThrottle:
        """The throttle ``settings`` configure."""
        return cls(
            settings.auth_failure_limit,
            settings.auth_failure_window_s,
            settings.auth_throttle_max_entries,
            settings.trusted_proxies,
            clock,
        )

    def admit(self, request: web.Request, token: str) -> None:
        """Raise TooManyRequestsError when the caller's address or its token's key is
        throttled; call before the token is checked."""
        if not (self.addresses.blocked or self.credentials.blocked):
            return  # the hot path: nobody is throttled
        wait = max(
            self.addresses.wait(self._address_key(request)),
            self.credentials.wait(credential_key(token)),
        )
        if wait > 0:
            raise _too_many(wait)

    def failed(self, request: web.Request, token: str) -> None:
        """Count a failed check of ``token``; raise TooManyRequestsError when this failure went
        beyond the limit (requests let in before the bucket ran dry)."""
        address_over, address_wait = self.addresses.fail(self._address_key(request))
        key_over, key_wait = self.credentials.fail(credential_key(token))
        if address_wait or key_wait:
            log.info(
                "authentication failures throttled",
                extra={"by_address": bool(address_wait), "by_credential": bool(key_wait)},
            )
        if address_over or key_over:
            raise _too_many(max(address_wait, key_wait))

    def _address_key(self, request: web.Request) -> str:
        address = client_address(request, self._trusted)
        if address is None:
            return "local"
        if address.version == 6:
            return str(IPv6Network((address, 64), strict=False))
        return str(address)


def _too_many(wait_s: float) -> TooManyRequestsError:
    retry_after = max(1, math.ceil(wait_s))
    return TooManyRequestsError(
        f"too many failed authentication attempts; retry after {retry_after} s", retry_after
    )
