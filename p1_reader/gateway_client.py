"""The forwarder's HTTP client: one ``POST {gateway}/v1/telegrams`` in, one classified answer out.

The gateway's answers (SPEC §5) come in a handful of kinds that call for different reactions
(acknowledge, split the batch, wait long, back off). This module only sorts an answer into an
:class:`Outcome` — it never sleeps, retries or touches the spool — so that the forwarding loop in
:mod:`p1_reader.forwarder` decides what to do with pure values, and tests can drive that loop
against any HTTP server. It is the only forwarder module that imports ``aiohttp``.
"""

from __future__ import annotations

import email.utils
import enum
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import aiohttp

from p1_reader.errors import TLSSetupError

USER_AGENT = "meterpoort-p1-reader/0.1"
#: the gateway's problem type for a device without a client certificate (mutual TLS)
CERTIFICATE_REQUIRED = "https://meterpoort.nl/problems/client-certificate-required"
#: longest gateway-supplied text kept in an outcome (it ends up in logs)
_MAX_DETAIL = 200


class OutcomeKind(enum.Enum):
    """What the answer to a batch means for that batch."""

    DELIVERED = "delivered"
    TOO_LARGE = "too-large"
    REFUSED = "refused"  # 400/422: split to isolate
    AUTH = "auth"  # 401/403
    CONFIG = "config"  # other 4xx
    RETRY = "retry"  # 408/429/5xx/network
    TLS = "tls"  # certificates: the gateway's not trusted, or ours missing; waits like AUTH


@dataclass(frozen=True, slots=True)
class Outcome:
    """The classified answer to one batch; ``rejected`` holds (index, reason, detail), and
    ``omitted`` how many more were rejected than the gateway listed (it bounds its answer)."""

    kind: OutcomeKind
    status: int = 0
    detail: str = ""
    retry_after: float | None = None
    accepted: int = 0
    rejected: tuple[tuple[int, str, str], ...] = ()
    omitted: int = 0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _problem_detail(body: Any) -> str:
    if isinstance(body, dict):
        parts = [str(body.get(k)) for k in ("type", "detail") if body.get(k)]
        return " — ".join(parts)[:_MAX_DETAIL]
    return ""


def outcome_of(body: Any) -> Outcome:
    """The per-telegram outcome ``{accepted, rejected: [{index, reason, detail}]}`` of a body."""
    accepted = body.get("accepted") if isinstance(body, dict) else None
    raw_rejected = body.get("rejected", []) if isinstance(body, dict) else None
    if not isinstance(accepted, int) or not isinstance(raw_rejected, list):
        return Outcome(OutcomeKind.RETRY, 200, "200 without {accepted, rejected}")
    rejected: list[tuple[int, str, str]] = []
    for item in raw_rejected:
        if not isinstance(item, dict):
            continue
        index = item.get("index")
        rejected.append(
            (
                index if isinstance(index, int) else -1,
                str(item.get("reason", "unknown"))[:64],
                str(item.get("detail", ""))[:_MAX_DETAIL],
            )
        )
    omitted = body.get("rejected_omitted", 0)
    return Outcome(
        OutcomeKind.DELIVERED,
        200,
        accepted=accepted,
        rejected=tuple(rejected),
        omitted=omitted if isinstance(omitted, int) and omitted > 0 else 0,
    )


class GatewayClient:
    """An HTTP session to the gateway's telegram endpoint; use as ``async with``."""

    def __init__(
        self,
        endpoint: str,
        token: str,
        *,
        request_timeout: float,
        ca_bundle: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        # built before any connection so that an unreadable CA bundle fails the start, not the
        # first request
        self._ssl: ssl.SSLContext | bool = tls_context(ca_bundle, client_cert, client_key) or True
        self.endpoint = endpoint
        self._token = token
        self._request_timeout = request_timeout
        self._wall_clock = wall_clock
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> GatewayClient:
        # limit=1: batches go strictly one after the other, so one kept-alive connection is all
        # the forwarder ever needs
        connector = aiohttp.TCPConnector(ssl=self._ssl, limit=1)
        timeout = aiohttp.ClientTimeout(total=self._request_timeout)
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Content-Type": "text/plain",
            "User-Agent": USER_AGENT,
        }
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, body: bytes) -> Outcome:
        """Send one batch (telegrams back to back) and classify the answer; never raises for
        network trouble, which is an outcome like any other."""
        if self._session is None:
            raise RuntimeError("GatewayClient.post outside 'async with'")
        try:
            async with self._session.post(self.endpoint, data=body) as response:
                status = response.status
                if status == 200:
                    return await _read_ok(response)
                try:
                    problem = await response.json(content_type=None)
                except (ValueError, aiohttp.ClientError):
                    problem = None
                if (
                    status == 422
                    and isinstance(problem, dict)
                    and isinstance(problem.get("accepted"), int)
                    and isinstance(problem.get("rejected"), list)
                ):
                    # every telegram of the batch was refused on its own merits: the problem
                    # carries the per-telegram outcome, so the batch is answered, not retried
                    return outcome_of(problem)
                detail = _problem_detail(problem) or (response.reason or "")
                retry_after = parse_retry_after(
                    response.headers.get("Retry-After"), now=self._wall_clock()
                )
        except aiohttp.ClientConnectorCertificateError as exc:
            # no retry fixes a certificate the forwarder does not trust (until the operator
            # does); OpenSSL's reason says why, e.g. "unable to get local issuer certificate"
            reason = getattr(exc.certificate_error, "verify_message", None) or str(
                exc.certificate_error
            )
            detail = f"the gateway's certificate is not trusted ({reason}): check --ca-bundle"
            return Outcome(OutcomeKind.TLS, detail=detail[:_MAX_DETAIL])
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Outcome(OutcomeKind.RETRY, detail=f"{type(exc).__name__}: {exc}"[:_MAX_DETAIL])
        if status == 413:
            return Outcome(OutcomeKind.TOO_LARGE, status, detail)
        if status in (400, 422):
            return Outcome(OutcomeKind.REFUSED, status, detail)
        if (
            status == 401
            and isinstance(problem, dict)
            and problem.get("type") == CERTIFICATE_REQUIRED
        ):
            # the token may be fine: what is missing is ours to configure
            return Outcome(
                OutcomeKind.TLS,
                status,
                "the gateway wants this device's client certificate (--client-cert, --client-key)",
            )
        if status in (401, 403):
            return Outcome(OutcomeKind.AUTH, status, detail)
        if status in (408, 429) or status >= 500:
            return Outcome(OutcomeKind.RETRY, status, detail, retry_after)
        if 400 <= status < 500:
            return Outcome(OutcomeKind.CONFIG, status, detail)
        return Outcome(OutcomeKind.RETRY, status, f"unexpected status {status} {detail}".strip())


def tls_context(
    ca_bundle: str | None, client_cert: str | None, client_key: str | None
) -> ssl.SSLContext | None:
    """The client TLS context for these files, or None for the system's defaults (no private
    CA, no client certificate); TLSSetupError naming the file and the fault otherwise.

    ``client_key`` may be left out when ``client_cert`` holds the key too (one PEM file)."""
    if client_key and not client_cert:
        raise TLSSetupError("--client-key needs --client-cert (the certificate it belongs to)")
    if not ca_bundle and not client_cert:
        return None
    try:
        context = ssl.create_default_context(cafile=ca_bundle or None)
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(f"cannot use the CA bundle {ca_bundle}: {_tls_reason(exc)}") from None
    if client_cert:
        try:
            # the password callback keeps OpenSSL from prompting on a terminal for an
            # encrypted key: a service has nobody to answer it
            context.load_cert_chain(client_cert, client_key or None, password=lambda: b"")
        except (OSError, ssl.SSLError) as exc:
            raise TLSSetupError(
                f"cannot use the client certificate {client_cert}"
                + (f" with the key {client_key}" if client_key else "")
                + f": {_tls_reason(exc)} (PEM; the key unencrypted and matching)"
            ) from None
    return context


def _tls_reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.replace("_", " ").lower()
    return exc.strerror or str(exc)


async def _read_ok(response: aiohttp.ClientResponse) -> Outcome:
    try:
        body = await response.json(content_type=None)
    except ValueError as exc:
        # we cannot tell what was stored: resend (the gateway is idempotent)
        return Outcome(OutcomeKind.RETRY, 200, f"200 with an unreadable body: {exc}"[:_MAX_DETAIL])
    return outcome_of(body)
