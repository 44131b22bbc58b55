"""The whole chain with a network dongle, every part a process: ``python -m gateway serve``
serves, ``python -m p1_reader forward --port URL`` reads a P1-to-Ethernet bridge
(``socket://``) or a HomeWizard P1 meter (``http://``) served by this test on 127.0.0.1, and the
readings must reach the database. Each dongle drops out once mid-run (the bridge mid-telegram);
the reader reconnects, and exactly the whole telegrams are stored, each delivered once.

Registry, device, telegrams and expected rows as in ``test_serve_and_reader``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from p1_reader.spool import read_all
from tests.support import free_port
from tests.support.p1_network import DROP, NO_TELEGRAM, HomeWizardMeter, Script, TcpBridge, telegram
from tests.support.served_chain import (
    E_EAN,
    E_ID,
    G_EAN,
    G_ID,
    UTC,
    Proc,
    eventually,
    expected,
    process_env,
    readings,
    run_cli,
    stored,
    telegram_of,
)

COUNT = 8


@pytest.mark.parametrize("kind", ["socket", "http"])
async def test_forward_process_reads_a_network_dongle_into_the_serving_gateway(
    database_url: str,
    pool: asyncpg.Pool,
    workdir: Path,
    kind: str,
) -> None:
    env = process_env(database_url)
    start = (dt.datetime.now(UTC) - dt.timedelta(days=30)).date().isoformat()
    for ean, commodity, meter in ((E_EAN, "electricity", E_ID), (G_EAN, "gas", G_ID)):
        await run_cli(
            ["-m", "gateway", "admin", "meters", "add", "--ean", ean, "--commodity", commodity,
             "--meter-id", meter, "--customer-id", "cust-net", "--contract-start", start],
            env,
            workdir,
        )  # fmt: skip
    device = await run_cli(
        ["-m", "gateway", "admin", "devices", "add", "--meter-id", E_ID, "--meter-id", G_ID],
        env,
        workdir,
    )

    rs = readings(COUNT)
    telegrams = [telegram_of(r) for r in rs]
    if kind == "socket":
        # the earliest reading's telegram is cut by the drop: the day/month rows tell if it got in
        cut = telegrams[0]
        dongle: TcpBridge | HomeWizardMeter = TcpBridge(
            [
                Script(telegrams[1] + telegrams[2] + cut[: len(cut) // 2]),
                Script(cut[len(cut) // 2 + 40 :] + b"".join(telegrams[3:]), drop=False),
            ]
        )
        stored_readings = rs[1:]
        outages = 1  # the drop
    else:
        t = [telegram(x) for x in telegrams]
        dongle = HomeWizardMeter(
            [NO_TELEGRAM, t[0], t[0], t[1], DROP, DROP, t[1], t[2], t[2], NO_TELEGRAM, *t[3:]]
        )
        stored_readings = rs
        outages = 2  # the dropped connection, the 503 (the 503 at the start fails an open)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    spool_dir = workdir / "spool"
    serve = await Proc.start(
        "serve",
        ["-m", "gateway", "serve", "--port", str(port), "--data-dir", str(workdir / "var")],
        env,
        workdir,
    )
    forwarder: Proc | None = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(dongle)
            http = await stack.enter_async_context(
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
            )

            async def ready() -> bool:
                try:
                    async with http.get(base + "/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(ready, "serve answers /readyz", procs=[serve])
            forwarder = await Proc.start(
                "forward",
                ["-m", "p1_reader", "forward", "--port", dongle.url, "--poll-interval", "50ms",
                 "--gateway", base, f"--token={device['token']}", "--spool-dir", str(spool_dir),
                 "--send-all", "--batch-size", "4", "--batch-interval", "200ms",
                 "--backoff-initial", "100ms", "--backoff-max", "1s", "--stats-interval", "1s"],
                env,
                workdir,
            )  # fmt: skip
            fwd = forwarder
            n = len(stored_readings)
            summary = re.compile(rf"delivered {n} \(accepted {n}, rejected 0")
            await eventually(
                lambda: summary.search(fwd.stderr) is not None,
                "every whole telegram delivered",
                procs=[serve, fwd],
            )
            await asyncio.wait_for(dongle.done.wait(), 20)
            # stopped while the dongle is still there: its going away is no part of the test
            assert await forwarder.stop() == 0, forwarder.stderr
        assert await serve.stop() == 0, serve.stderr
    finally:
        for proc in (forwarder, serve):
            if proc is not None and proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    await proc.kill()

    assert read_all(spool_dir) == []
    log = forwarder.stderr
    # one warning and one recovery per outage; the telegrams each read once
    dropped = log.count("p1_reader.reader: disconnected:")
    assert dropped == outages, log
    assert log.count("recovered") == dropped + log.count("p1_reader.reader: unavailable:")
    assert re.search(rf"read {len(stored_readings)}, thinned 0", log), log
    assert "Traceback" not in log and "Traceback" not in serve.stderr
    assert "96.1.1" not in log and "kWh" not in log
    assert await stored(pool) == expected(stored_readings)
