"""The two middlewares: request metrics, ids and the access log; errors → RFC 9457 problem+json.

Every request gets an id: the client's ``X-Request-Id`` when it is a plain token (at most 128
letters, digits and ``._:-``), otherwise a fresh UUID4. Every answer echoes it as
``X-Request-Id`` (``echo_request_id``, also on streamed answers and problems), and the access log
(logger ``gateway.access``, one JSON line per request through ``serve``'s formatter) names it,
with the method, the route template (never the path: it holds EANs), status, duration and the
client address behind trusted proxies. No path, query string, header value or body is logged.

``PROBLEMS`` is the one table mapping the gateway's error hierarchy (gateway/errors.py) to
problem types, ``DOMAIN_PROBLEMS`` the consent domain's (consent/errors.py); aiohttp's HTTP
exceptions map by status code (``HTTP_PROBLEMS``) and PostgreSQL connection failures to a 503
with the configured ``Retry-After``. A client that hangs up before its answer is counted as a
client abort, not as a database outage, and a body whose framing breaks mid-way is a 400.
Anything else is a bug: logged with its stack, answered as a 500 problem that says nothing
about it. Requests aiohttp cannot parse never reach a middleware: ``gateway.api.protocol``
answers them with the same ``problem_body``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from consent.errors import ConsentEndedError, ConsentError
from gateway import errors, metrics
from gateway.api.client_address import IPNetwork, address_text, client_address
from gateway.storage.db import CONNECTION_ERRORS

log = logging.getLogger(__name__)
#: one line per request (``make_metrics_middleware``); its own logger so operators can route it
access_log = logging.getLogger("gateway.access")
#: the fields of an access-log record, in the order ``make_metrics_middleware`` passes them:
#: method and route template (text), status (int), duration_ms (float), request_id (text) and
#: client (text, or None without an address)
ACCESS_FIELDS = ("method", "route", "status", "duration_ms", "request_id", "client")

REQUEST_ID_HEADER = "X-Request-Id"
#: the request's id (the client's, when acceptable, or a fresh one), set by the metrics middleware
REQUEST_ID_KEY = web.RequestKey("request_id", str)
# a client's id is kept only when it is a short plain token: it lands in logs and answers
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

PROBLEM_BASE = "https://meterpoort.nl/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ProblemType:
    """One stable problem type: HTTP status, URI slug and short human title."""

    status: int
    slug: str
    title: str

    @property
    def uri(self) -> str:
        return PROBLEM_BASE + self.slug


INTERNAL = ProblemType(500, "internal-error", "Internal server error")
REQUEST_TIMEOUT = ProblemType(408, "request-timeout", "Request timeout")
INVALID_BODY = ProblemType(400, "invalid-body-framing", "Invalid body framing")
UNSUPPORTED_MEDIA_TYPE = ProblemType(415, "unsupported-media-type", "Unsupported media type")
TOO_MANY_REQUESTS = ProblemType(429, "too-many-requests", "Too many requests")
DATABASE_UNAVAILABLE = ProblemType(503, "database-unavailable", "Database unavailable")

#: The gateway's errors → problem types; the most specific class in an error's MRO wins.
PROBLEMS: dict[type[errors.GatewayError], ProblemType] = {
    errors.GatewayError: INTERNAL,
    errors.ConfigurationError: INTERNAL,
    errors.BadRequestError: ProblemType(400, "bad-request", "Bad request"),
    errors.ValidationError: ProblemType(422, "validation-error", "Invalid input"),
    errors.InvalidEANError: ProblemType(422, "invalid-ean", "Invalid EAN"),
    errors.CsvImportError: ProblemType(422, "invalid-csv", "Invalid CSV import"),
    errors.AuthenticationError: ProblemType(401, "unauthorized", "Authentication required"),
    errors.ClientCertificateRequiredError: ProblemType(
        401, "client-certificate-required", "Client certificate required"
    ),
    errors.ForbiddenError: ProblemType(403, "forbidden", "Forbidden"),
    errors.NotFoundError: ProblemType(404, "not-found", "Not found"),
    errors.ConflictError: ProblemType(409, "conflict", "Conflict"),
    errors.PayloadTooLargeError: ProblemType(413, "payload-too-large", "Payload too large"),
    errors.UnsupportedMediaTypeError: UNSUPPORTED_MEDIA_TYPE,
    errors.TooManyRequestsError: TOO_MANY_REQUESTS,
    errors.ServiceUnavailableError: ProblemType(503, "service-unavailable", "Service unavailable"),
    errors.DatabaseUnavailableError: DATABASE_UNAVAILABLE,
}

#: The consent domain's refusals (``consent.errors``), which services may let through as they are.
DOMAIN_PROBLEMS: dict[type[ConsentError], ProblemType] = {
    ConsentError: ProblemType(422, "validation-error", "Invalid input"),
    ConsentEndedError: ProblemType(409, "conflict", "Conflict"),
}

#: aiohttp's HTTP exceptions (raised by routing and body reading) by status code.
HTTP_PROBLEMS: dict[int, ProblemType] = {
    p.status: p
    for p in (
        ProblemType(400, "bad-request", "Bad request"),
        ProblemType(401, "unauthorized", "Authentication required"),
        ProblemType(403, "forbidden", "Forbidden"),
        ProblemType(404, "not-found", "Not found"),
        ProblemType(405, "method-not-allowed", "Method not allowed"),
        ProblemType(406, "not-acceptable", "Not acceptable"),
        REQUEST_TIMEOUT,
        ProblemType(413, "payload-too-large", "Payload too large"),
        UNSUPPORTED_MEDIA_TYPE,
        TOO_MANY_REQUESTS,
        ProblemType(503, "service-unavailable", "Service unavailable"),
    )
}

#: status recorded for a request whose client hung up first (nginx's convention; never sent)
CLIENT_CLOSED_REQUEST = 499

# headers of an aiohttp HTTP exception worth keeping on the problem response
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


def problem_type_for(exc: errors.GatewayError | ConsentError) -> ProblemType:
    """The problem type of a gateway or domain error: the nearest class in its MRO listed in
    PROBLEMS or DOMAIN_PROBLEMS."""
    for cls in type(exc).__mro__:
        found = PROBLEMS.get(cls) or DOMAIN_PROBLEMS.get(cls)
        if found is not None:
            return found
    return INTERNAL


def problem_body(
    problem: ProblemType,
    detail: str,
    instance: str | None = None,
    extensions: dict[str, Any] | None = None,
) -> bytes:
    """The JSON of a problem answer (counted in ``meterpoort_problems_total``); ``instance``
    is left out when the request target is unknown (it could not be parsed)."""
    body: dict[str, Any] = {
        "type": problem.uri,
        "title": problem.title,
        "status": problem.status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    if extensions:
        body.update(extensions)
    metrics.PROBLEMS.labels(problem.slug).inc()
    return json.dumps(body).encode("utf-8")


def problem_response(
    request: web.Request,
    problem: ProblemType,
    detail: str,
    extensions: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A problem+json response; ``instance`` is the request path (no query: it may hold data)."""
    return web.Response(
        status=problem.status,
        body=problem_body(problem, detail, request.path, extensions),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def _http_detail(exc: web.HTTPException, request: web.Request, max_body: int) -> str:
    if exc.status == 404:
        return f"there is no resource at {request.path}"
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return f"{request.method} is not allowed here; allowed: {allowed}"
    if exc.status == 413:
        return f"the request body is larger than the limit of {max_body} bytes"
    if exc.status == 408:
        return "the request body stalled; send it again without pauses"
    return exc.reason


def make_problem_middleware(retry_after_s: int, max_body_bytes: int) -> web.middleware:  # type: ignore[valid-type]
    """The middleware turning every error into problem+json."""

    @web.middleware
    async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except errors.GatewayError as exc:
            problem = problem_type_for(exc)
            headers: dict[str, str] = {}
            if isinstance(exc, errors.ServiceUnavailableError):
                headers["Retry-After"] = str(retry_after_s)
                if isinstance(exc, errors.DatabaseUnavailableError):
                    metrics.DB_UNAVAILABLE.inc()
            elif isinstance(exc, errors.AuthenticationError):
                headers["WWW-Authenticate"] = "Bearer"
            elif isinstance(exc, errors.TooManyRequestsError):
                headers["Retry-After"] = str(exc.retry_after_s)
            if isinstance(exc, errors.ServiceUnavailableError):
                # an outage answers every request with it: worth a warning, not an error flood
                log.warning("request refused: %s %s", type(exc).__name__, exc.detail)
            elif problem.status >= 500:
                log.error("request failed: %s %s", type(exc).__name__, exc.detail)
            return problem_response(request, problem, exc.detail, exc.extensions(), headers)
        except ConsentError as exc:
            # the domain's messages name the field and the reason in the caller's terms
            return problem_response(request, problem_type_for(exc), str(exc))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # redirects and the like are not errors
            problem = HTTP_PROBLEMS.get(exc.status) or ProblemType(
                exc.status, f"http-{exc.status}", exc.reason
            )
            kept = {h: exc.headers[h] for h in _KEPT_HEADERS if h in exc.headers}
            return problem_response(
                request, problem, _http_detail(exc, request, max_body_bytes), headers=kept
            )
        except web.RequestPayloadError:
            # the chunked encoding or compression broke mid-body; its message quotes the bytes.
            # The stream cannot be framed past this point: the connection closes after the
            # answer, and aiohttp must not drain the broken body after it (it would log that as
            # an unhandled exception and drop the connection before the answer)
            request.protocol.close()
            request.content.feed_eof()
            log.info("refused a request: its body framing is broken")
            return problem_response(
                request, INVALID_BODY, "the body does not match its transfer or content encoding"
            )
        except CONNECTION_ERRORS as exc:
            if request.transport is None:
                # aiohttp fails the body read with ConnectionResetError when the client hangs
                # up; that is the client's doing, not a database outage. Nobody reads this answer.
                metrics.HTTP_CLIENT_ABORTS.inc()
                log.debug("client closed the connection before its answer")
                return web.Response(status=CLIENT_CLOSED_REQUEST)
            metrics.DB_UNAVAILABLE.inc()
            log.warning("database unavailable: %s", type(exc).__name__)
            return problem_response(
                request,
                DATABASE_UNAVAILABLE,
                "the database is temporarily unavailable; retry later",
                headers={"Retry-After": str(retry_after_s)},
            )
        except TimeoutError:
            # asyncpg pool acquisition and command timeouts surface as TimeoutError
            metrics.DB_UNAVAILABLE.inc()
            log.warning("request timed out waiting for the database")
            return problem_response(
                request,
                DATABASE_UNAVAILABLE,
                "the database did not answer in time; retry later",
                headers={"Retry-After": str(retry_after_s)},
            )
        except Exception:
            log.exception(
                "unexpected error answering %s %s",
                request.method,
                _route(request),
                extra={"request_id": request.get(REQUEST_ID_KEY)},
            )
            return problem_response(
                request, INTERNAL, "an unexpected error occurred; it has been logged"
            )

    return problem_middleware


def _route(request: web.Request) -> str:
    """The route template (``/v1/admin/meters/{ean}``), never the concrete path (it holds EANs)."""
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


def new_request_id() -> str:
    """A fresh random UUID4 in its canonical text form.

    Hand-formatted: ``str(uuid.uuid4())`` builds a UUID object (an int from the bytes, the
    version bits set by integer arithmetic, then text from the int) and cost a tenth of the
    middleware's time on a single-telegram request. The same 122 random bits from
    ``os.urandom``, drawn for 256 ids at a time (``_RandomHex``); the version nibble is ``4``
    and the variant nibble one of ``89ab``."""
    h = _random_hex.take32()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


# the RFC 9562 variant (binary 10xx) of a random hex digit, keeping its two low bits
_VARIANT: dict[str, str] = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


class _RandomHex:
    """Hex digits of ``os.urandom``, drawn 4 KiB at a time: one ``getrandom`` system call per
    256 request ids instead of one per request (a system call costs more than the formatting
    on a loaded virtual machine). A forked child starts with an empty pool, so no two processes
    hand out the same digits."""

    __slots__ = ("_hex", "_pos")

    _BYTES = 4096

    def __init__(self) -> None:
        self._hex = ""
        self._pos = 0

    def take32(self) -> str:
        """32 hex digits (16 random bytes) no caller got before."""
        pos = self._pos
        if pos >= len(self._hex):
            self._hex = os.urandom(self._BYTES).hex()
            pos = 0
        self._pos = pos + 32
        return self._hex[pos : pos + 32]

    def drop(self) -> None:
        """Forget the drawn digits (in a forked child: they are the parent's too)."""
        self._hex = ""
        self._pos = 0


_random_hex = _RandomHex()
os.register_at_fork(after_in_child=_random_hex.drop)


def request_id(request: web.BaseRequest) -> str:
    """The id of ``request``: its ``X-Request-Id`` when that is a plain token, else a new UUID4."""
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _CLIENT_REQUEST_ID.fullmatch(given):
        return given
    return new_request_id()


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the request id on every answer, including streamed ones (their
    handler sends the head itself) and redirects raised as exceptions."""
    rid = request.get(REQUEST_ID_KEY)
    if rid is not None:
        response.headers[REQUEST_ID_HEADER] = rid


def make_metrics_middleware(
    log_requests: bool, trusted_proxies: Sequence[IPNetwork]
) -> web.middleware:  # type: ignore[valid-type]
    """The outermost middleware: it gives the request its id, counts and times it by route
    template and, with ``log_requests``, writes its access-log line."""

    @web.middleware
    async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        rid = request[REQUEST_ID_KEY] = request_id(request)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = _route(request)
            metrics.HTTP_REQUESTS_BY(route, request.method, str(status)).inc()
            metrics.HTTP_REQUEST_SECONDS_BY(route).observe(elapsed)
            if log_requests and access_log.isEnabledFor(logging.INFO):
                client = client_address(request, trusted_proxies)
                access_log.info(
                    "request",
                    extra={
                        "method": request.method,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "request_id": rid,
                        "client": None if client is None else address_text(client),
                    },
                )

    return metrics_middleware
