"""Errors raised by the consent domain.

The tree::

    ConsentError                 anything the consent domain refuses
    ├── InvalidConsentError      a consent whose fields cannot hold together (expiry before grant,
    │   │                        empty customer id, bad data class)
    │   └── ConsentLifetimeError a consent running longer than the configured maximum lifetime
    ├── UnknownPurposeError      a purpose that is not in the configured list
    ├── UnknownLevelError        a level other than none / monthly / daily
    └── ConsentEndedError        ending (or changing) a consent that has already ended

Every message says which field or consent is wrong and why, in the caller's terms.
"""

from __future__ import annotations


class ConsentError(Exception):
    """Base of every error the consent domain raises on purpose."""


class InvalidConsentError(ConsentError):
    """The consent's fields contradict each other or a configured limit."""


class ConsentLifetimeError(InvalidConsentError):
    """The consent would run longer than the configured maximum lifetime (SPEC §4)."""


class UnknownPurposeError(ConsentError):
    """The purpose is not one of the configured purposes."""


class UnknownLevelError(ConsentError):
    """The level is not one of ``none``, ``monthly``, ``daily``."""


class ConsentEndedError(ConsentError):
    """The consent has already ended; an end is final and is never overwritten."""
