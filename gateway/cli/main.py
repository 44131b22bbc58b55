"""``python -m gateway``: every command, one parser.

Commands build one ``Settings`` (environment, ``.env``) in ``main`` and override it with their
flags. Admin commands talk to the database directly (``DATABASE_URL``, or the embedded server in
``--data-dir``) through the same service functions as the HTTP API. Commands that create
something print one JSON object on stdout; diagnostics go to stderr.

Adding a command: a module with ``add_parser(subparsers)`` (a top-level command setting
``func(args, settings) -> int``) or ``add_admin_parser(admin_subparsers)`` (``admin …``), called
from ``build_parser`` below.
"""

from __future__ import annotations

import argparse
import errno
import importlib.metadata
import sys
from collections.abc import Sequence

import pydantic

from gateway.cli import (
    audit,
    backup,
    clients,
    config_reference,
    registry,
    retention,
    serve,
    signing_keys,
    token,
)
from gateway.cli.common import Command
from gateway.errors import GatewayError, ValidationError
from gateway.settings import Settings
from gateway.storage import db

# bind failures of the HTTP listener, which are not database trouble
_LISTEN_ERRNOS = frozenset((errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES))


def build_parser() -> argparse.ArgumentParser:
    """The full ``python -m gateway`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="Meterpoort gateway: smart-meter consent and data-access service.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"meterpoort {importlib.metadata.version('meterpoort')}",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve.add_parser(sub)
    admin = sub.add_parser("admin", help="registry administration (direct database access)")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True, metavar="OBJECT")
    registry.add_admin_parser(admin_sub)
    clients.add_admin_parser(admin_sub)
    for module in (audit, token, retention, signing_keys, backup, config_reference):
        module.add_parser(sub)
    return parser


def _report(exc: GatewayError) -> None:
    print(f"error: {exc.detail}", file=sys.stderr)
    if isinstance(exc, ValidationError):
        for field in exc.errors:
            where = " ".join(str(p) for p in field.loc)
            print(f"  {where}: {field.msg}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status (1 on a reported error)."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except pydantic.ValidationError as exc:
        print(f"error: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    serve.configure_logging(settings.log_level)
    func: Command = args.func
    try:
        return func(args, settings)
    except GatewayError as exc:
        _report(exc)
        return 1
    except db.CONNECTION_ERRORS as exc:
        if isinstance(exc, OSError) and exc.errno in _LISTEN_ERRNOS:
            print(f"error: cannot listen for HTTP: {exc.strerror} ({exc})", file=sys.stderr)
            return 1
        print(f"error: cannot reach the database: {exc}", file=sys.stderr)
        return 1
