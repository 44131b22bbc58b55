"""HTTPS served by the gateway itself: the server's TLS context, built from the settings.

``serve`` builds the context once per process (the supervisor to check the files before
PostgreSQL starts, each ``--workers`` process for its own listener: a context cannot be passed to
a spawned process). TLS 1.2 is the oldest version offered; ciphers are Python's defaults for a
server (``ssl.create_default_context``), which leave out the broken ones.

Mutual TLS: with ``tls_client_ca_file`` the handshake asks every client for a certificate but
does not insist (``CERT_OPTIONAL``): the customer portal's browsers and the operators' scrapers
connect without one. A certificate that is presented must verify against that CA, or the
handshake fails. Which requests need one is decided per caller in ``gateway.api.auth``.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from gateway.errors import ConfigurationError
from gateway.settings import Settings

#: the oldest protocol version the gateway speaks (TLS 1.0/1.1 are deprecated by RFC 8996)
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def _no_password() -> bytes:
    # without a callback OpenSSL would prompt on the terminal for an encrypted key's password
    # and hang a service started by systemd; an encrypted key is refused instead
    return b""


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context to serve with, or None for plain HTTP; ConfigurationError (naming the
    file and the fault) for a setting that cannot work."""
    cert, key, client_ca = (
        settings.tls_cert_file,
        settings.tls_key_file,
        settings.tls_client_ca_file,
    )
    if (cert is None) != (key is None):
        raise ConfigurationError(
            "HTTPS needs both a certificate and its key: set tls_cert_file and tls_key_file "
            "(--tls-cert and --tls-key), or neither"
        )
    if cert is None or key is None:
        if client_ca is not None:
            raise ConfigurationError(
                "tls_client_ca_file (--tls-client-ca) needs HTTPS: set tls_cert_file and "
                "tls_key_file too (mutual TLS cannot pass through a TLS-terminating proxy)"
            )
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    for path in (cert, key, *([client_ca] if client_ca is not None else [])):
        _check_readable(path)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        raise ConfigurationError(
            f"cannot use the TLS certificate {cert} with the key {key}: {_reason(exc)} (both "
            "PEM, the key unencrypted and matching the certificate's public key)"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            raise ConfigurationError(
                f"cannot read CA certificates from {client_ca}: {_reason(exc)} (PEM expected)"
            ) from None
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def _check_readable(path: Path) -> None:
    # OpenSSL reports an unreadable file as a bare "[Errno 13]"; this names the file
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from None


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason in words (``KEY_VALUES_MISMATCH`` → ``key values mismatch``)."""
    reason = exc.reason or str(exc)
    return reason.replace("_", " ").lower()
