"""The TLS settings in-process, over real sockets where a request is involved:

* ``gateway.api.tls.server_context``: TLS 1.2 at least; each unusable combination of files is a
  ConfigurationError that names the file and the fault (``serve`` reports it without a
  traceback: ``tests/e2e/test_tls.py``);
* ``X-Forwarded-Proto`` is believed from a trusted proxy only: the portal sends
  ``Strict-Transport-Security`` when a trusted proxy says the client came over HTTPS, and not
  when an untrusted peer says so (``X-Forwarded-For``: ``test_auth_throttle.py``);
* the forwarder's TLS files (``p1_reader.gateway_client.tls_context``): a clear error each.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from ipaddress import ip_network
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.tls import server_context
from gateway.errors import ConfigurationError
from gateway.settings import Settings
from p1_reader.errors import TLSSetupError
from p1_reader.gateway_client import tls_context
from tests.conftest import GatewayTestServer
from tests.support.pki import CA, Issued

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA.create(tmp_path, "private")


@pytest.fixture
def server(ca: CA) -> Issued:
    return ca.server()


def with_tls(settings: Settings, **files: Path | None) -> Settings:
    return settings.model_copy(update={f"tls_{name}_file": path for name, path in files.items()})


def test_server_context_speaks_tls_1_2_at_least(
    gateway_settings: Settings, ca: CA, server: Issued
) -> None:
    assert server_context(gateway_settings) is None  # no files: plain HTTP
    context = server_context(with_tls(gateway_settings, cert=server.cert, key=server.key))
    assert context is not None
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_NONE  # no client CA: no client certificates
    mutual = server_context(
        with_tls(gateway_settings, cert=server.cert, key=server.key, client_ca=ca.cert_file)
    )
    assert mutual is not None and mutual.verify_mode is ssl.CERT_OPTIONAL


def test_server_context_names_what_is_wrong(
    gateway_settings: Settings, ca: CA, server: Issued, tmp_path: Path
) -> None:
    other = ca.client("device")
    cases: list[tuple[Settings, str]] = [
        (with_tls(gateway_settings, cert=server.cert), "both a certificate and its key"),
        (with_tls(gateway_settings, key=server.key), "both a certificate and its key"),
        (with_tls(gateway_settings, client_ca=ca.cert_file), "needs HTTPS"),
        (with_tls(gateway_settings, cert=server.cert, key=other.key), "key values mismatch"),
        # a certificate where the key belongs: not a key at all
        (with_tls(gateway_settings, cert=server.cert, key=server.cert), str(server.cert)),
        (
            with_tls(gateway_settings, cert=server.cert, key=server.key, client_ca=server.key),
            f"cannot read CA certificates from {server.key}",
        ),
    ]
    unreadable = tmp_path / "unreadable.key"
    unreadable.write_bytes(server.key.read_bytes())
    unreadable.chmod(0)
    try:
        unreadable.read_bytes()
    except PermissionError:
        # only when file permissions hold (not as root)
        cases.append(
            (
                with_tls(gateway_settings, cert=server.cert, key=unreadable),
                f"cannot read {unreadable}",
            )
        )
    for settings, says in cases:
        with pytest.raises(ConfigurationError) as caught:
            server_context(settings)
        assert says in caught.value.detail, (says, caught.value.detail)


def test_tls_paths_are_checked_like_every_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"(?i)path does not point to a file"):
        Settings(tls_cert_file=tmp_path / "missing.pem")


def test_forwarder_tls_files_give_clear_errors(ca: CA, tmp_path: Path) -> None:
    device = ca.client("device")
    assert tls_context(None, None, None) is None  # the system's CAs, no client certificate
    context = tls_context(str(ca.cert_file), str(device.cert), str(device.key))
    assert context is not None and context.verify_mode is ssl.CERT_REQUIRED
    # one PEM file holding the certificate and its key
    both = tmp_path / "both.pem"
    both.write_bytes(device.cert.read_bytes() + device.key.read_bytes())
    assert tls_context(None, str(both), None) is not None
    cases = [
        ((str(tmp_path / "nope.pem"), None, None), "cannot use the CA bundle"),
        ((None, str(device.cert), None), "cannot use the client certificate"),
        ((None, str(device.cert), str(ca.client("other").key)), "key values mismatch"),
        ((None, None, str(device.key)), "--client-key needs --client-cert"),
    ]
    for args, says in cases:
        with pytest.raises(TLSSetupError, match=says):
            tls_context(*args)


# --- X-Forwarded-Proto ---------------------------------------------------------------------------


@pytest.fixture
async def behind(
    request: pytest.FixtureRequest, gateway_settings: Settings
) -> AsyncIterator[Client]:
    """The gateway on plain HTTP; the test's address (127.0.0.1) is a trusted proxy when the
    parameter says so."""
    from gateway.api.app import create_app

    trusted = [ip_network("127.0.0.1/32")] if request.param else []
    app = create_app(gateway_settings.model_copy(update={"trusted_proxies": trusted}))
    client: Client = TestClient(GatewayTestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.parametrize("behind", [True], indirect=True)
async def test_a_trusted_proxy_says_the_client_came_over_https(behind: Client) -> None:
    resp = await behind.get("/portal", headers={"X-Forwarded-Proto": "https"})
    assert resp.status == 200
    assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
    # the proxy nearest the gateway wrote the last value
    resp = await behind.get("/portal", headers={"X-Forwarded-Proto": "https, http"})
    assert "Strict-Transport-Security" not in resp.headers
    # plain HTTP without a word from the proxy: no HSTS (RFC 6797 §7.2)
    resp = await behind.get("/portal")
    assert "Strict-Transport-Security" not in resp.headers


@pytest.mark.parametrize("behind", [False], indirect=True)
async def test_an_untrusted_peer_cannot_claim_https(behind: Client) -> None:
    resp = await behind.get("/portal", headers={"X-Forwarded-Proto": "https"})
    assert resp.status == 200
    assert "Strict-Transport-Security" not in resp.headers
