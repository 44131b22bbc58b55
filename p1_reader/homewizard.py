"""The HTTP edge: a HomeWizard Wi-Fi P1 meter's local API, ``http://HOST/api/v1/telegram``.

The dongle reads the P1 port itself and keeps the last telegram whose CRC it validated; its
local API hands that telegram out as ``text/plain``, unchanged. There is no stream to follow, so
the connection polls (once a second by default: DSMR 5 meters send every second, older ones
every ten) and drops an answer that repeats the telegram it already handed out. Repeats are
recognised by the telegram timestamp ``0-0:1.0.0`` (a meter sends one telegram per timestamp),
or, in a DSMR 2.2/3 telegram, which has none, by its whole text. What is new goes through the
reader's framer and parser like bytes from a port.

The documented answers and what the reader does about them (HomeWizard API documentation, v1
"Telegram" and "Error Handling", v2 "Telegram"):

============================ ===============================================================
``200`` text/plain           the last valid telegram: new ones are read, repeats dropped
``503``                      the dongle has no telegram (yet): P1 cable out, meter silent,
                             just booted. Transient: reconnect with backoff
``403`` (older firmware:     ``{"error": {"id": 202, "description": "API not enabled"}}``:
``400`` with id 202)         the local API is switched off. Refused: logged as an error with
                             the fix, retried at the longest backoff
``401``                      API v2 wants a token: use the v1 URL. Refused
``404`` and other 4xx        not a telegram endpoint (wrong path, not a P1 meter). Refused
other 5xx, network, timeout  transient: reconnect with backoff
============================ ===============================================================

The answer's content is never logged (privacy), only its status and, for errors, the
documented error id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import aiohttp

from p1_reader.errors import SourceError, SourceRefusedError
from p1_reader.gateway_client import USER_AGENT
from p1_reader.profiles import SerialProfile
from p1_reader.sources import LastTelegram

log = logging.getLogger(__name__)

#: largest answer read (a telegram is at most 8 KiB; anything bigger is not a telegram)
MAX_ANSWER = 16384
#: per-request limit (the dongle answers from memory; a slow answer means a bad Wi-Fi link)
REQUEST_TIMEOUT = 10.0
#: HomeWizard's error id for "API not enabled"
API_DISABLED = 202
_TIMESTAMP = b"0-0:1.0.0("


def repeat_key(body: bytes) -> bytes:
    """What makes a telegram the same as another: its ``0-0:1.0.0`` value, else all of it."""
    at = body.find(_TIMESTAMP)
    while at > 0 and body[at - 1] not in b"\r\n":
        at = body.find(_TIMESTAMP, at + 1)
    if at >= 0:
        end = body.find(b")", at)
        if end > 0:
            return body[at : end + 1]
    return body


class HomeWizardConnection:
    """Polls one HomeWizard P1 meter; :meth:`read` returns the next new telegram's bytes."""

    def __init__(
        self,
        path: str,
        profile: SerialProfile,
        session: aiohttp.ClientSession,
        *,
        poll_interval: float,
        last: LastTelegram,
    ) -> None:
        self.path = path
        self.profile = profile
        self._session = session
        self._interval = poll_interval
        self._last = last
        self._next_poll = 0.0
        self._pending: bytes | None = None
        self._closed = False
        #: answers dropped as repeats (tests and debugging)
        self.repeats = 0

    def describe(self) -> str:
        return f"HomeWizard local API, polled every {self._interval:g} s"

    async def read(self) -> bytes:
        """Poll until the dongle has a telegram it has not handed out before."""
        while True:
            body = await self._poll()
            key = repeat_key(body)
            if key == self._last.key:
                self.repeats += 1
                continue
            self._last.key = key
            # the dongle stores the telegram as the meter sent it; some answers end right after
            # "!CRC": end the line, so that the stream framer sees the telegram complete now
            if not body.endswith(b"\n"):
                body += b"\r\n"
            return body

    async def start(self) -> None:
        """Ask once now; the answer is what the first :meth:`read` looks at."""
        self._pending = await self.fetch()

    async def _poll(self) -> bytes:
        if self._pending is not None:
            body, self._pending = self._pending, None
            return body
        delay = self._next_poll - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        return await self.fetch()

    async def fetch(self) -> bytes:
        """One GET: the telegram's bytes, or the answer sorted into SourceError kinds."""
        self._next_poll = time.monotonic() + self._interval
        try:
            async with self._session.get(self.path) as resp:
                if resp.status == 200:
                    body = await resp.content.read(MAX_ANSWER + 1)
                    if len(body) > MAX_ANSWER:
                        raise SourceRefusedError(
                            f"{self.path}: answer over {MAX_ANSWER} bytes: not a telegram endpoint"
                        )
                    return body
                detail = await _error_detail(resp)
        except (aiohttp.ClientError, OSError) as exc:
            raise SourceError(f"{self.path}: {type(exc).__name__}: {exc}") from exc
        except TimeoutError:
            raise SourceError(f"{self.path}: no answer within {REQUEST_TIMEOUT:g} s") from None
        raise _answer_error(self.path, resp.status, detail)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._session.close()


async def _error_detail(resp: aiohttp.ClientResponse) -> int | None:
    """The documented error id of a JSON error answer, if there is one."""
    with contextlib.suppress(aiohttp.ClientError, ValueError, UnicodeDecodeError):
        body = json.loads(await resp.content.read(1024))
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("id"), int):
            return int(error["id"])
    return None


def _answer_error(path: str, status: int, error_id: int | None) -> SourceError:
    if status == 503:
        return SourceError(
            f"{path}: the meter has no telegram (503): is its P1 cable plugged into the meter?"
        )
    if status == 403 or error_id == API_DISABLED:
        return SourceRefusedError(
            f"{path}: the local API is disabled ({status}): switch on 'Local API' for this "
            "P1 meter in the HomeWizard Energy app"
        )
    if status == 401:
        return SourceRefusedError(
            f"{path}: the device wants a token (401, API v2): use http://HOST/api/v1/telegram"
        )
    if 400 <= status < 500:
        return SourceRefusedError(
            f"{path}: {status}: not a telegram endpoint (a HomeWizard P1 meter serves "
            "/api/v1/telegram)"
        )
    return SourceError(f"{path}: the dongle answered {status}")


async def open_homewizard(
    path: str,
    profile: SerialProfile,
    *,
    poll_interval: float = 1.0,
    last: LastTelegram | None = None,
) -> HomeWizardConnection:
    """Open a poller and ask once, so that an unreachable or refusing dongle fails the open."""
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        headers={"User-Agent": USER_AGENT, "Accept": "text/plain"},
    )
    conn = HomeWizardConnection(
        path, profile, session, poll_interval=poll_interval, last=last or LastTelegram()
    )
    try:
        await conn.start()
    except BaseException:
        await conn.close()
        raise
    return conn
