"""Network P1 dongles for reader tests, on real sockets on 127.0.0.1.

* :class:`TcpBridge` — a P1-to-Ethernet bridge / ser2net in raw mode: every accepted connection
  is served the next byte script of a list; a script either ends with the bridge dropping the
  connection (as when the bridge reboots or Wi-Fi drops) or keeps it open.
* :class:`HomeWizardMeter` — a HomeWizard Wi-Fi P1 meter's local API: ``GET /api/v1/telegram``
  answers from a script of (status, body) answers, and once the script is used up keeps giving
  the last telegram it had (as a dongle whose meter went quiet does).
* :class:`Rfc2217Server` — pyserial's own RFC 2217 server side (``rfc2217.PortManager``) in front
  of a pseudo-terminal, in a thread; the test writes the meter's bytes into the pty master.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import socket
import threading
import tty
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import serial
import serial.rfc2217
from aiohttp import web

TELEGRAM_PATH = "/api/v1/telegram"


@dataclass
class Script:
    """What one accepted connection gets: ``data`` in ``chunk``-byte pieces, ``pause`` seconds
    apart, then a drop (``drop=True``) or an open, silent connection."""

    data: bytes
    drop: bool = True
    chunk: int = 97
    pause: float = 0.002


@dataclass
class TcpBridge:
    """``async with TcpBridge(scripts) as bridge:`` serves ``socket://127.0.0.1:{bridge.port}``."""

    scripts: Sequence[Script]
    connections: int = 0
    #: set when every script has been served in full
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self._server is not None
        sockets = self._server.sockets
        number: int = sockets[0].getsockname()[1]
        return number

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    async def __aenter__(self) -> TcpBridge:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        index = self.connections
        self.connections += 1
        try:
            if index >= len(self.scripts):
                await asyncio.sleep(3600)  # a further connection: open and silent
                return
            script = self.scripts[index]
            data = script.data
            for at in range(0, len(data), script.chunk):
                writer.write(data[at : at + script.chunk])
                await writer.drain()
                await asyncio.sleep(script.pause)
            if index == len(self.scripts) - 1:
                self.done.set()
            if not script.drop:
                await asyncio.sleep(3600)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            # a drop mid-stream: no goodbye, the socket just closes
            writer.transport.abort()


@dataclass
class Answer:
    """One answer of the fake HomeWizard meter."""

    status: int
    body: bytes
    content_type: str = "text/plain"


def telegram(data: bytes) -> Answer:
    return Answer(200, data)


#: the documented answers (HomeWizard API documentation, v1 error handling and v2 telegram)
NO_TELEGRAM = Answer(503, b"telegram:no-telegram-received")
API_DISABLED = Answer(
    403,
    json.dumps({"error": {"id": 202, "description": "API not enabled"}}).encode(),
    "application/json",
)
NOT_FOUND = Answer(404, b"Not Found")
#: not an answer: the dongle drops the connection (Wi-Fi gone, reboot)
DROP = Answer(0, b"")


@dataclass
class HomeWizardMeter:
    """``async with HomeWizardMeter(answers) as meter:`` serves ``meter.url``."""

    answers: Sequence[Answer]
    requests: int = 0
    #: set once the script is used up
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _last: Answer | None = None
    _runner: web.AppRunner | None = None
    _port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}{TELEGRAM_PATH}"

    async def _telegram(self, request: web.Request) -> web.Response:
        index = self.requests
        self.requests += 1
        if index < len(self.answers):
            answer = self.answers[index]
            if answer.status == 200:
                self._last = answer
        else:
            self.done.set()
            answer = self._last or NO_TELEGRAM
        if answer is DROP:
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError  # nothing more to say on a dead connection
        return web.Response(
            status=answer.status, body=answer.body, content_type=answer.content_type
        )

    async def __aenter__(self) -> HomeWizardMeter:
        app = web.Application()
        app.router.add_get(TELEGRAM_PATH, self._telegram)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self._port = server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


class _PtyPort(serial.Serial):  # type: ignore[misc]
    """The server's side of the pty: a pseudo-terminal has no modem lines (TIOCMGET/TIOCMBIS
    fail with ENOTTY), which PortManager reads and sets; report them idle instead."""

    cts = dsr = ri = cd = False

    def _update_dtr_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_break_state(self) -> None:
        pass


class _Sender:
    """What PortManager writes its Telnet answers to."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn

    def write(self, data: bytes) -> None:
        self._conn.sendall(data)


class Rfc2217Server:
    """An RFC 2217 server on 127.0.0.1 in front of a pty; one client at a time.

    ``master`` is where the test writes the meter's bytes; ``line()`` is the (baud rate, bits
    per character) the client set on the pty; ``drop()`` closes the client's connection.
    """

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)
        self._path = os.ttyname(self._slave)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0
        self._client: socket.socket | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rfc2217-test-server", daemon=True)

    @property
    def url(self) -> str:
        return f"rfc2217://127.0.0.1:{self.port}"

    def __enter__(self) -> Rfc2217Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.drop()
        self._listener.close()
        self._thread.join(5)
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def line(self) -> tuple[int, int]:
        import termios

        attrs: list[Any] = termios.tcgetattr(self._slave)
        speed = {termios.B9600: 9600, termios.B115200: 115200}.get(attrs[4], attrs[4])
        size = {termios.CS7: 7, termios.CS8: 8}[attrs[2] & termios.CSIZE]
        return speed, size

    def drop(self) -> None:
        client = self._client
        if client is not None:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._client = conn
            try:
                self._serve(conn)
            finally:
                self._client = None
                conn.close()

    def _serve(self, conn: socket.socket) -> None:
        port = _PtyPort(self._path, timeout=0)
        manager = serial.rfc2217.PortManager(port, _Sender(conn))
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([conn, port.fileno()], [], [], 0.2)
                if conn in ready:
                    try:
                        data = conn.recv(1024)
                    except OSError:
                        return
                    if not data:
                        return
                    port.write(b"".join(manager.filter(data)))
                if port.fileno() in ready:
                    data = port.read(4096)
                    if data:
                        try:
                            conn.sendall(b"".join(manager.escape(data)))
                        except OSError:
                            return
        finally:
            port.close()
