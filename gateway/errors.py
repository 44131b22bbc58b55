"""Errors raised by the gateway on purpose.

The tree::

    GatewayError                      anything the gateway refuses or cannot do (500)
    ├── BadRequestError               a request the gateway cannot read (400)
    │   └── ValidationError           well-formed but invalid input, lists fields (422)
    │       ├── InvalidEANError       not an 18-digit EAN with a valid GS1 check digit
    │       └── CsvImportError        a registry CSV with bad rows (every row listed)
    ├── AuthenticationError           missing, unknown or revoked bearer token (401)
    │   └── ClientCertificateRequiredError  mutual TLS: no verified client certificate (401)
    ├── ForbiddenError                authenticated, but not allowed to do this (403)
    ├── NotFoundError                 the addressed thing does not exist (404)
    ├── ConflictError                 the thing exists already / state does not allow it (409)
    ├── PayloadTooLargeError          request body over the configured limit (413)
    ├── UnsupportedMediaTypeError     request body in a media type the endpoint does not take (415)
    ├── TooManyRequestsError          too many failed authentications (429 + Retry-After)
    ├── ServiceUnavailableError       temporarily unable to serve; retry later (503 + Retry-After)
    │   └── DatabaseUnavailableError  PostgreSQL unreachable, restarting, or the pool exhausted
    └── ConfigurationError            settings that cannot work (raised at start-up, not over HTTP)

``gateway.api.middleware`` maps every class here (and aiohttp's HTTP exceptions, and asyncpg's
connection errors) to an RFC 9457 problem+json response from one table; handlers raise, they never
build error responses. ``detail`` is shown to the caller, so messages must say what is wrong in
the caller's terms and carry no internals (no SQL, no stack, no personal data of someone else).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pydantic


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def extensions(self) -> dict[str, Any]:
        """Extra problem+json members for this error (RFC 9457 §3.2); none by default."""
        return {}


class BadRequestError(GatewayError):
    """The request cannot be read (bad JSON, bad query parameter)."""


class FieldError:
    """One invalid input field: where (``loc``, e.g. ``["body", "ean"]`` or ``["line", 17]``)
    and why (``msg``)."""

    __slots__ = ("loc", "msg")

    def __init__(self, loc: Sequence[str | int], msg: str) -> None:
        self.loc = tuple(loc)
        self.msg = msg

    def as_json(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg}

    def __repr__(self) -> str:
        return f"FieldError({self.loc!r}, {self.msg!r})"


class ValidationError(BadRequestError):
    """Well-formed input that breaks a rule; ``errors`` lists every offending field."""

    def __init__(self, detail: str, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(detail)
        self.errors = list(errors)

    def extensions(self) -> dict[str, Any]:
        return {"errors": [e.as_json() for e in self.errors]} if self.errors else {}


class InvalidEANError(ValidationError):
    """Not an EAN-18 connection code (18 digits, GS1 mod-10 check digit)."""


class CsvImportError(ValidationError):
    """A registry CSV import refused as a whole; ``errors`` has one entry per bad row,
    ``loc`` being ``["line", <1-based line number>, <column or "row">]``."""


class AuthenticationError(GatewayError):
    """No bearer token, or one the gateway does not know (or was revoked)."""


class ClientCertificateRequiredError(AuthenticationError):
    """Mutual TLS is configured and the connection carries no client certificate; a device or
    data client needs one in addition to its bearer token."""


class ForbiddenError(GatewayError):
    """The caller is known but may not do this (e.g. a meter not bound to the device)."""


class NotFoundError(GatewayError):
    """The addressed resource does not exist (or is not visible to the caller)."""


class ConflictError(GatewayError):
    """The resource exists already, or its state does not allow the change."""


class PayloadTooLargeError(GatewayError):
    """The request body is larger than the configured limit."""


class UnsupportedMediaTypeError(GatewayError):
    """The request body's media type is not one the endpoint accepts."""


class TooManyRequestsError(GatewayError):
    """Refused unheard: too many recent authentication failures from the caller's address or
    with its credential; ``retry_after_s`` (whole seconds, at least 1) says when to try again."""

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class ServiceUnavailableError(GatewayError):
    """Temporarily unable to serve; the caller should retry later.

    Raise sites do not choose the delay: the problem middleware answers every 503 with the
    configured ``Retry-After`` (``METERPOORT_RETRY_AFTER_S``), so one setting governs them all.
    """


class DatabaseUnavailableError(ServiceUnavailableError):
    """PostgreSQL cannot be reached, is restarting, or no pooled connection came free in time."""


class ConfigurationError(GatewayError):
    """Settings that cannot work; raised at start-up and reported by the CLI."""


def validation_error(exc: pydantic.ValidationError, where: str = "body") -> ValidationError:
    """A ValidationError (422) listing every invalid field of a pydantic error, without echoing
    the input (it may hold personal data or a secret)."""
    fields = [FieldError((where, *e["loc"]), e["msg"]) for e in exc.errors(include_input=False)]
    names = ", ".join(".".join(str(p) for p in f.loc[1:]) or where for f in fields)
    return ValidationError(f"invalid {where}: {names}", fields)
