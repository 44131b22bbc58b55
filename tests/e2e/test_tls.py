"""HTTPS and mutual TLS as operators run them: ``python -m gateway serve --tls-cert/--tls-key
[--tls-client-ca]`` and ``python -m p1_reader forward --input <capture> --ca-bundle
[--client-cert/--client-key]``, every part a process, over real sockets, with a PKI made in the
test (``tests.support.pki``): a private CA with a server certificate for 127.0.0.1 and a device
certificate, and another CA whose device certificate the gateway must not accept.

* HTTPS: a forwarder that trusts the private CA delivers (readings stored, spool drained); one
  that does not fails with an error that says the certificate is not trusted, and keeps its
  telegrams spooled.
* mTLS: no client certificate → the gateway answers 401 ``client-certificate-required`` and
  stores nothing, the forwarder keeps its telegrams; a certificate from the other CA → the TLS
  handshake fails; the right certificate → stored. Data clients need one too; browsers (the
  portal) and the admin API connect without.
* ``serve --tls-cert`` naming a missing file: a usage error naming it, before PostgreSQL starts;
  a key that does not match the certificate: a configuration error, no traceback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from p1_reader.spool import read_all
from tests.support import free_port
from tests.support.pki import CA, Issued
from tests.support.served_chain import (
    ADMIN,
    E_EAN,
    E_ID,
    G_EAN,
    G_ID,
    Proc,
    eventually,
    expected,
    process_env,
    readings,
    stored,
    telegram_of,
)

UTC = dt.UTC
STEP = 30.0
PROBLEM = "application/problem+json"


@dataclass(frozen=True)
class Pki:
    ca: CA
    server: Issued
    device: Issued
    other_ca: CA
    stranger: Issued


@pytest.fixture
def pki(workdir: Path) -> Pki:
    directory = workdir / "pki"
    directory.mkdir()
    ca = CA.create(directory, "private")
    other = CA.create(directory, "other")
    # the stranger's certificate names the same device: only its issuer differs
    return Pki(ca, ca.server(), ca.client("device-1"), other, other.client("device-1"))


def trusting(pki: Pki, cert: Issued | None = None) -> ssl.SSLContext:
    """A client context that trusts the private CA, presenting ``cert`` if given."""
    context = ssl.create_default_context(cafile=pki.ca.cert_file)
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    return context


@dataclass
class Gateway:
    proc: Proc
    base: str
    env: dict[str, str]


@pytest.fixture
async def serving(
    request: pytest.FixtureRequest,
    database_url: str,
    pki: Pki,
    workdir: Path,
) -> AsyncIterator[Gateway]:
    """``serve`` with the server certificate; with the client CA (and two workers) when the
    indirect parameter is True."""
    mtls: bool = getattr(request, "param", False)
    env = process_env(database_url)
    port = free_port()
    args = ["-m", "gateway", "serve", "--port", str(port), "--data-dir", str(workdir / "var")]
    args += ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]
    if mtls:
        # two workers: each builds its own TLS context in its spawned process
        args += ["--tls-client-ca", str(pki.ca.cert_file), "--workers", "2"]
    proc = await Proc.start("serve-tls", args, env, workdir)
    base = f"https://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=trusting(pki)),
            timeout=aiohttp.ClientTimeout(total=5),
        ) as http:

            async def ready() -> bool:
                try:
                    async with http.get(base + "/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(ready, "serve answers /readyz over HTTPS", limit=STEP, procs=[proc])
        banner = "".join(proc.out)
        assert f"serving on {base}" in banner, banner
        yield Gateway(proc, base, env)
    finally:
        code = await proc.stop()
        assert code == 0, proc.stderr


async def admin_call(gw: Gateway, pki: Pki, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """An admin API call over HTTPS, without a client certificate (the admin API needs none)."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting(pki))) as http,
        http.post(gw.base + path, json=body, headers={"Authorization": f"Bearer {ADMIN}"}) as resp,
    ):
        assert resp.status == 201, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def register_device(gw: Gateway, pki: Pki) -> str:
    """The electricity and gas connection and a device for both meters; the device token."""
    start = (dt.datetime.now(UTC) - dt.timedelta(days=30)).isoformat()
    for ean, kind, meter in ((E_EAN, "electricity", E_ID), (G_EAN, "gas", G_ID)):
        body = {
            "ean": ean,
            "commodity": kind,
            "meter_id": meter,
            "customer_id": "cust-tls",
            "contract_start": start,
        }
        await admin_call(gw, pki, "/v1/admin/meters", body)
    device = await admin_call(gw, pki, "/v1/admin/devices", {"meter_ids": [E_ID, G_ID]})
    token: str = device["token"]
    return token


@pytest.fixture
def capture(workdir: Path) -> tuple[Path, list[Any]]:
    """A telegram capture file (back-to-back telegrams, as read from a P1 port) of recent
    readings: the gateway stores them (it refuses telegrams older than its spool horizon)."""
    rs = readings(6)
    path = workdir / "capture.txt"
    path.write_bytes(b"".join(telegram_of(r) for r in rs))
    return path, rs


async def forward(
    gw: Gateway,
    token: str,
    capture: Path,
    spool: Path,
    *tls: str,
    env: dict[str, str] | None = None,
) -> Proc:
    """``p1_reader forward --input capture`` to the gateway (exits once the spool is delivered)."""
    args = [
        "-m", "p1_reader", "forward", "--input", str(capture), "--gateway", gw.base,
        f"--token={token}", "--spool-dir", str(spool), "--send-all", "--batch-interval", "100ms",
        "--backoff-initial", "100ms", "--backoff-max", "500ms", "--auth-retry", "300ms", *tls,
    ]  # fmt: skip
    return await Proc.start("forward", args, env or gw.env, spool.parent)


async def tls_exchange(gw: Gateway, context: ssl.SSLContext) -> bytes:
    """Handshake with the gateway and ask for /healthz; the first bytes of the answer. A plain
    blocking socket (in a thread): asyncio reports the server's TLS alert as a bare EOF."""
    host, port = gw.base.removeprefix("https://").split(":")

    def exchange() -> bytes:
        with (
            socket.create_connection((host, int(port)), timeout=STEP) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            return tls.recv(64)

    return await asyncio.to_thread(exchange)


def spooled(spool: Path) -> int:
    """Telegrams in the spool that were not acknowledged."""
    return len(read_all(spool))


async def nothing_stored(pool: asyncpg.Pool) -> bool:
    return all(not rows for rows in (await stored(pool)).values())


async def exited(proc: Proc) -> int:
    """The exit status of a process that ends by itself."""
    async with asyncio.timeout(STEP):
        await proc.process.wait()
    return await proc.stop()


async def delivered(proc: Proc) -> None:
    """The forwarder exits 0 by itself: input read, spool delivered."""
    async with asyncio.timeout(STEP):
        code = await proc.process.wait()
    await proc.stop()
    assert code == 0, proc.stderr


async def keeps_failing(proc: Proc, what: str, spool: Path, count: int) -> None:
    """The forwarder logs ``what``, keeps running and keeps every telegram spooled; it stops on
    SIGTERM."""
    await eventually(lambda: what in proc.stderr, f"forwarder logs {what!r}", limit=STEP)
    await asyncio.sleep(1.0)  # several retries
    assert proc.alive(), proc.stderr
    assert await proc.stop() == 0, proc.stderr
    assert spooled(spool) == count, proc.stderr


# --- HTTPS ---------------------------------------------------------------------------------------


async def test_forwarder_delivers_over_https_when_it_trusts_the_private_ca(
    serving: Gateway,
    pki: Pki,
    pool: asyncpg.Pool,
    capture: tuple[Path, list[Any]],
    workdir: Path,
) -> None:
    token = await register_device(serving, pki)
    path, rs = capture

    # the system's CAs do not know the private CA: a clear error, telegrams kept
    untrusting = await forward(serving, token, path, workdir / "spool-untrusting")
    await keeps_failing(
        untrusting,
        "the gateway's certificate is not trusted",
        workdir / "spool-untrusting",
        len(rs),
    )
    assert "unable to get local issuer certificate): check --ca-bundle" in untrusting.stderr
    assert await nothing_stored(pool)

    # the CA bundle from the environment, as a systemd EnvironmentFile would give it
    env = {**serving.env, "P1_READER_CA_BUNDLE": str(pki.ca.cert_file)}
    trusting_proc = await forward(serving, token, path, workdir / "spool-trusting", env=env)
    await delivered(trusting_proc)
    assert spooled(workdir / "spool-trusting") == 0
    assert await stored(pool) == expected(rs)


async def test_serve_refuses_unusable_tls_files(
    database_url: str,
    pki: Pki,
    workdir: Path,
) -> None:
    env = process_env(database_url)
    base = ["-m", "gateway", "serve", "--port", str(free_port())]
    base += ["--data-dir", str(workdir / "var")]
    missing = workdir / "no-such-cert.pem"

    proc = await Proc.start(
        "serve-missing", [*base, "--tls-cert", str(missing), "--tls-key", str(pki.server.key)],
        env, workdir,
    )  # fmt: skip
    assert await exited(proc) == 2  # argparse: a usage error, checked like the setting
    assert "--tls-cert" in proc.stderr and "no-such-cert.pem" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (workdir / "var").exists()  # refused before the embedded PostgreSQL started

    # the device's key with the server's certificate: readable files that do not match
    proc = await Proc.start(
        "serve-mismatch",
        [*base, "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.device.key)],
        env,
        workdir,
    )
    assert await exited(proc) == 1
    assert "key values mismatch" in proc.stderr and str(pki.server.cert) in proc.stderr
    assert "Traceback" not in proc.stderr

    # a certificate without its key
    proc = await Proc.start("serve-half", [*base, "--tls-cert", str(pki.server.cert)], env, workdir)
    assert await exited(proc) == 1
    assert "both a certificate and its key" in proc.stderr, proc.stderr


# --- mutual TLS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("serving", [True], indirect=True, ids=["mtls"])
async def test_mutual_tls_needs_the_device_certificate_from_the_client_ca(
    serving: Gateway,
    pki: Pki,
    pool: asyncpg.Pool,
    capture: tuple[Path, list[Any]],
    workdir: Path,
) -> None:
    token = await register_device(serving, pki)
    path, rs = capture
    ca = ["--ca-bundle", str(pki.ca.cert_file)]

    # no client certificate: the gateway answers 401, stores nothing; the telegrams stay
    bare = await forward(serving, token, path, workdir / "spool-bare", *ca)
    await keeps_failing(
        bare, "the gateway wants this device's client certificate", workdir / "spool-bare", len(rs)
    )
    assert await nothing_stored(pool)

    # a certificate from another CA: the handshake fails, no request reaches the gateway
    stranger = await forward(
        serving, token, path, workdir / "spool-stranger", *ca,
        "--client-cert", str(pki.stranger.cert), "--client-key", str(pki.stranger.key),
    )  # fmt: skip
    await keeps_failing(stranger, "gateway unavailable", workdir / "spool-stranger", len(rs))
    assert await nothing_stored(pool)
    # the handshake itself, without the forwarder: the device's certificate gets an answer;
    # the stranger's does not. In TLS 1.3 the client finishes its side before the server has
    # checked its certificate, and asyncio closes without sending its alert, so the client
    # sees the connection end (as the forwarder did); in TLS 1.2 the handshake itself fails
    assert (await tls_exchange(serving, trusting(pki, pki.device))).startswith(b"HTTP/1.1 200")
    assert await tls_exchange(serving, trusting(pki, pki.stranger)) == b""
    tls12 = trusting(pki, pki.stranger)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        await tls_exchange(serving, tls12)

    # the device's certificate from the client CA: delivered
    device = await forward(
        serving, token, path, workdir / "spool-device", *ca,
        "--client-cert", str(pki.device.cert), "--client-key", str(pki.device.key),
    )  # fmt: skip
    await delivered(device)
    assert spooled(workdir / "spool-device") == 0
    assert await stored(pool) == expected(rs)


@pytest.mark.parametrize("serving", [True], indirect=True, ids=["mtls"])
async def test_mutual_tls_for_data_clients_but_not_for_browsers(serving: Gateway, pki: Pki) -> None:
    client = await admin_call(
        serving, pki, "/v1/admin/clients", {"name": "billing", "granularities": ["P1D"]}
    )
    today = dt.date.today()
    query = f"/v1/readings?granularity=P1D&from={today}&to={today + dt.timedelta(days=1)}"
    headers = {"Authorization": f"Bearer {client['token']}"}

    async def pull(context: ssl.SSLContext) -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http,
            http.get(serving.base + query, headers=headers) as resp,
        ):
            return resp.status, await resp.json(content_type=None)

    status, body = await pull(trusting(pki))
    assert status == 401, body
    assert body["type"] == "https://meterpoort.nl/problems/client-certificate-required"
    billing = pki.ca.client("billing")
    status, body = await pull(trusting(pki, billing))
    assert status == 200, body
    assert body["readings"] == []

    # the customer portal: a browser without a certificate gets the page, with HSTS (HTTPS)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting(pki))) as http,
        http.get(serving.base + "/portal") as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
