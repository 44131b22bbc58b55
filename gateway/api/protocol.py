"""The HTTP connection under the app: protocol errors as problem+json, and read timeouts.

aiohttp answers a request it cannot parse (bad request line, oversized or invalid headers,
conflicting lengths, broken chunking) before any middleware runs: as ``text/plain`` quoting the
input, logged at ERROR with the offending bytes. It offers no hook for that (aio-libs/aiohttp
#3287) other than ``RequestHandler.handle_error``, and no read timeouts at all, so
``GatewayRequestHandler`` subclasses aiohttp's connection protocol for both, and
``make_runner`` is the one way ``serve`` and the tests get a runner that uses it.

Timeouts: a request line and headers must arrive within ``header_read_timeout_s`` of their
first byte (an idle keep-alive connection is not a request, and keeps aiohttp's keep-alive
timeout); a body may pause at most ``body_read_timeout_s`` while its handler waits for it. A
stalled client gets a 408 problem and its connection closed. A partial head pipelined behind a
complete request is left to the keep-alive timeout: aiohttp's parser does not tell where one
request's bytes end and the next one's begin.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
import uuid
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from gateway.api.appkeys import SETTINGS_KEY
from gateway.api.middleware import (
    INTERNAL,
    INVALID_BODY,
    PROBLEM_CONTENT_TYPE,
    REQUEST_ID_HEADER,
    REQUEST_TIMEOUT,
    UNSUPPORTED_MEDIA_TYPE,
    ProblemType,
    problem_body,
    request_id,
)

log = logging.getLogger(__name__)

_MALFORMED = ProblemType(400, "malformed-request", "Malformed request")
_BAD_REQUEST_LINE = ProblemType(400, "bad-request-line", "Bad request line")

#: aiohttp's parse errors → problem type and a detail that names the fault without quoting it
#: (their messages quote the offending bytes, which may hold a token); the first match wins
PROTOCOL_PROBLEMS: tuple[tuple[type[HttpProcessingError], ProblemType, str], ...] = (
    (
        http_exceptions.LineTooLong,
        ProblemType(431, "header-too-large", "Request line or header too large"),
        "the request line or a header field is longer than the server accepts",
    ),
    (
        http_exceptions.InvalidHeader,
        ProblemType(400, "invalid-header", "Invalid header"),
        "a header field is not valid HTTP",
    ),
    (
        http_exceptions.BadStatusLine,
        _BAD_REQUEST_LINE,
        "the request line is not 'METHOD target HTTP/1.x'",
    ),
    (
        http_exceptions.InvalidURLError,
        _BAD_REQUEST_LINE,
        "the request target is not a valid URL",
    ),
    (
        # before its base class below: aiohttp refuses codings it cannot decode (br without
        # Brotli, zstd…) while parsing the head; gateway.api.http.read_body refuses the rest
        http_exceptions.ContentEncodingError,
        UNSUPPORTED_MEDIA_TYPE,
        "the body's Content-Encoding is not one the gateway reads (gzip, deflate or none)",
    ),
    (
        http_exceptions.PayloadEncodingError,
        INVALID_BODY,
        "the body does not match its Content-Length or chunked encoding",
    ),
    (
        HttpProcessingError,
        _MALFORMED,
        "the request is not valid HTTP/1.1 (headers, lengths or framing)",
    ),
)


def protocol_problem(exc: BaseException | None) -> tuple[ProblemType, str]:
    """The problem type and detail for a request aiohttp could not parse (or could not
    answer: anything that is not a parse error is our fault, a 500)."""
    for cls, problem, detail in PROTOCOL_PROBLEMS:
        if isinstance(exc, cls):
            return problem, detail
    return INTERNAL, "an unexpected error occurred; it has been logged"


def _timeout_answer() -> bytes:
    # written straight to the socket: the request has no head yet, so there is no aiohttp
    # request to prepare a Response for; aiohttp's own error path needs its private _ErrInfo
    body = problem_body(REQUEST_TIMEOUT, "the request line and headers did not arrive in time")
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        f"Content-Type: {PROBLEM_CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{REQUEST_ID_HEADER}: {uuid.uuid4()}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GatewayRequestHandler(web.RequestHandler):
    """aiohttp's connection protocol with problem+json protocol errors, logs that quote no
    request bytes, and header and body read timeouts."""

    __slots__ = (
        "_body_deadline",
        "_body_timeout",
        "_body_timer",
        "_event_loop",
        "_handling",
        "_header_timeout",
        "_header_timer",
        "_payload",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        header_read_timeout_s: float,
        body_read_timeout_s: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._event_loop = loop
        self._header_timeout = header_read_timeout_s
        self._body_timeout = body_read_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        #: loop time by which the next body bytes must arrive; None while the clock is stopped
        self._body_deadline: float | None = None
        #: the body of the request being handled (or lingered over), once it is dispatched
        self._payload: StreamReader | None = None
        self._handling = False

    # --- the request's life: dispatched (head complete), answered --------------------------
    def request_dispatched(self, payload: StreamReader) -> None:
        """Called by the request factory: the head is complete, the handler starts."""
        self._cancel_header_timer()
        self._payload = payload
        self._handling = True
        if not payload.is_eof():
            self._arm_body_timer()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        self._handling = False
        self._stop_body_clock()
        payload = self._payload
        if payload is not None and payload.exception() is not None:
            # a stalled or broken body: its rest is not worth waiting for (aiohttp would linger)
            self.force_close()
        return result

    # --- bytes in ------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not data or self.transport is None:
            return
        payload = self._payload
        if self._handling:
            if payload is None or payload.is_eof():
                return
            if self._messages:
                # a message after an unfinished body: aiohttp's C parser met a framing error
                # (bad chunk) and queued it as one, but left the body waiting forever
                if payload.exception() is None:
                    payload.set_exception(web.RequestPayloadError("broken body framing"))
                return
            self._arm_body_timer()
        elif (payload is None or payload.is_eof()) and self._header_timer is None:
            # the first byte of a request head (or of a malformed one): its clock starts
            loop = self._event_loop
            self._header_timer = loop.call_later(self._header_timeout, self._header_late)

    def pause_reading(self) -> None:
        # the body's buffer is full because the handler does not read: not the client's stall
        super().pause_reading()
        self._stop_body_clock()

    def resume_reading(self, resume_parser: bool = True) -> None:
        super().resume_reading(resume_parser)
        payload = self._payload
        if self._handling and payload is not None and not payload.is_eof():
            self._arm_body_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        self._stop_body_clock()
        super().connection_lost(exc)

    # --- the two clocks ------------------------------------------------------------------------
    def _header_late(self) -> None:
        self._header_timer = None
        if self._handling or self.transport is None:
            return
        log.info("closed a connection: its request head did not arrive in time")
        self.transport.write(_timeout_answer())
        self.force_close()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _arm_body_timer(self) -> None:
        # like aiohttp's keep-alive: moving the deadline is cheap; one timer re-arms itself
        self._body_deadline = self._event_loop.time() + self._body_timeout
        if self._body_timer is None:
            self._body_timer = self._event_loop.call_at(self._body_deadline, self._body_late)

    def _stop_body_clock(self) -> None:
        self._body_deadline = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_late(self) -> None:
        self._body_timer = None
        deadline, payload = self._body_deadline, self._payload
        if deadline is None or payload is None or not self._handling:
            return
        if payload.is_eof() or payload.exception() is not None:
            return
        if self._event_loop.time() < deadline:
            self._body_timer = self._event_loop.call_at(deadline, self._body_late)
            return
        log.info("answering 408: a request body stalled")
        # the handler's read raises it; the problem middleware answers 408
        payload.set_exception(web.HTTPRequestTimeout())

    # --- errors aiohttp meets before (or after) the app --------------------------------------
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A problem+json answer for a request aiohttp could not parse, logged at INFO by kind
        only; anything else reaching here is a bug (500, logged without its message)."""
        if request.writer.output_size > 0:
            # aiohttp's contract: an answer has begun, so only closing the connection is left
            raise ConnectionError("the response has begun; no error answer is possible")
        problem, detail = protocol_problem(exc)
        if problem is INTERNAL:
            self.log_exception("unexpected error answering a request", exc_info=exc)
        else:
            log.info("refused a malformed request: %s", problem.slug)
        response = web.Response(
            status=problem.status,
            body=problem_body(problem, detail),
            content_type=PROBLEM_CONTENT_TYPE,
            # it never reached the middleware that sets it; a valid id the client sent counts
            headers={REQUEST_ID_HEADER: request_id(request)},
        )
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's own error log. A body the client broke, met while aiohttp drains it after
        the answer, is an INFO line; anything else keeps its type and stack but not its message
        (aiohttp's errors quote header values, request lines and body bytes)."""
        exc = kw.get("exc_info")
        if isinstance(exc, web.RequestPayloadError | HttpProcessingError):
            log.info("closed a connection: its request body is broken")
            return
        where = ""
        if isinstance(exc, BaseException):
            where = f" ({type(exc).__name__})\n" + "".join(traceback.format_tb(exc.__traceback__))
        log.error("%s%s", args[0] if args else "aiohttp error", where)


class GatewayServer(web.Server):
    """aiohttp's server for the app, making ``GatewayRequestHandler`` connections."""

    def __init__(self, plain: web.Server, **handler_kwargs: Any) -> None:
        super().__init__(
            plain.request_handler,
            request_factory=self._dispatch,
            handler_cancellation=plain.handler_cancellation,
        )
        self._app_request_factory = plain.request_factory
        self._handler_kwargs = handler_kwargs

    def _dispatch(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        assert isinstance(protocol, GatewayRequestHandler)
        protocol.request_dispatched(payload)
        return self._app_request_factory(message, payload, protocol, writer, task)

    def __call__(self) -> GatewayRequestHandler:
        return GatewayRequestHandler(self, loop=asyncio.get_running_loop(), **self._handler_kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose server speaks through ``GatewayRequestHandler``."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        settings = app[SETTINGS_KEY]
        # handler_cancellation off, as aiohttp's default: a handler finishes what a client
        # started (a committed batch stays committed) even when the client hangs up, and its
        # body read then fails as a client abort; the test server would ask for the opposite
        kwargs["handler_cancellation"] = False
        super().__init__(app, **kwargs)
        self._handler_kwargs: dict[str, Any] = {
            # no aiohttp access log: it records request lines and headers (User-Agent, Referer);
            # the metrics middleware logs requests by route template instead (gateway.access)
            "access_log": None,
            "header_read_timeout_s": settings.header_read_timeout_s,
            "body_read_timeout_s": settings.body_read_timeout_s,
        }
        for name in ("keepalive_timeout", "max_line_size", "max_field_size", "max_headers"):
            if name in kwargs:
                self._handler_kwargs[name] = kwargs[name]

    async def _make_server(self) -> web.Server:
        # AppRunner builds the app's server (startup, freezing, request factory); this only
        # swaps the connection class it makes, which aiohttp has no parameter for
        plain = await super()._make_server()
        return GatewayServer(plain, **self._handler_kwargs)


def make_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """The runner for the gateway app (its settings under ``SETTINGS_KEY``): ``serve`` and the
    tests' server both use this. ``kwargs`` go to ``web.AppRunner``."""
    return GatewayRunner(app, **kwargs)
