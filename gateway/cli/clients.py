"""``python -m gateway admin clients add|rotate|revoke|list`` (direct database access).

``add --name N --granularity P1D [--granularity PT15M …] [--purpose P …] [--webhook-url URL]``
prints ``{client_id, token, …}`` — the token only this once; ``rotate ID`` prints the client with
its new token (the old one stops working); ``revoke ID`` prints the revoked client. Registered by
``gateway.cli.main.build_parser``.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import asyncpg
import pydantic

from consent.model import DEFAULT_PURPOSES
from gateway.cli.common import checked_type, data_dir_arg, print_json, run_db, uuid_type
from gateway.errors import validation_error
from gateway.services import clients
from gateway.settings import Settings

_client_id = uuid_type("a client id")


def cmd_clients_add(args: argparse.Namespace, settings: Settings) -> int:
    """Register a client; prints it with its token (shown only here)."""
    try:
        new = clients.ClientIn.model_validate(
            {
                "name": args.name,
                "granularities": args.granularity,
                "purposes": args.purpose or [],
                "webhook_url": args.webhook_url,
            }
        )
    except pydantic.ValidationError as exc:
        raise validation_error(exc, where="arguments") from exc

    async def add(conn: asyncpg.Connection) -> clients.NewToken:
        return await clients.add_client(conn, new)

    created: clients.NewToken = run_db(args, settings, add)
    print_json(created.as_json())
    return 0


def cmd_clients_rotate(args: argparse.Namespace, settings: Settings) -> int:
    """Issue a new token; prints the client with it (the old token stops working)."""
    client_id: uuid.UUID = args.id

    async def rotate(conn: asyncpg.Connection) -> clients.NewToken:
        return await clients.rotate_client(conn, client_id)

    rotated: clients.NewToken = run_db(args, settings, rotate)
    print_json(rotated.as_json())
    return 0


def cmd_clients_revoke(args: argparse.Namespace, settings: Settings) -> int:
    """Revoke a client's token; prints the revoked client."""
    client_id: uuid.UUID = args.id

    async def revoke(conn: asyncpg.Connection) -> dict[str, Any]:
        return await clients.revoke_client(conn, client_id)

    print_json(run_db(args, settings, revoke))
    return 0


def cmd_clients_list(args: argparse.Namespace, settings: Settings) -> int:
    """Print every client (without tokens)."""
    print_json({"clients": run_db(args, settings, clients.list_clients)})
    return 0


def add_admin_parser(admin_sub: Any) -> None:
    """Register ``admin clients add|rotate|revoke|list``."""
    parser = admin_sub.add_parser("clients", help="data clients (billing system, recipients)")
    sub = parser.add_subparsers(dest="clients_command", required=True, metavar="ACTION")

    add = sub.add_parser(
        "add", help="register a client; prints {client_id, token, ...} (the token only this once)"
    )
    add.add_argument(
        "--name",
        required=True,
        type=checked_type(clients.ClientName, "a client name (1 to 128 characters)"),
    )
    add.add_argument(
        "--granularity",
        action="append",
        required=True,
        choices=clients.GRANULARITIES,
        help="a granularity it may read (repeatable)",
    )
    add.add_argument(
        "--purpose",
        action="append",
        default=None,
        choices=sorted(DEFAULT_PURPOSES),
        help="a consent purpose (repeatable)",
    )
    add.add_argument(
        "--webhook-url",
        default=None,
        metavar="URL",
        type=checked_type(clients.WebhookUrl, "a webhook URL (absolute http:// or https://)"),
        help="where consent ends are pushed (absolute http:// or https:// URL)",
    )
    data_dir_arg(add)
    add.set_defaults(func=cmd_clients_add)

    rotate = sub.add_parser("rotate", help="issue a new token (prints it; the old one stops)")
    rotate.add_argument("id", metavar="ID", type=_client_id)
    data_dir_arg(rotate)
    rotate.set_defaults(func=cmd_clients_rotate)

    revoke = sub.add_parser("revoke", help="revoke a client's token")
    revoke.add_argument("id", metavar="ID", type=_client_id)
    data_dir_arg(revoke)
    revoke.set_defaults(func=cmd_clients_revoke)

    listing = sub.add_parser("list", help="list clients (without tokens)")
    data_dir_arg(listing)
    listing.set_defaults(func=cmd_clients_list)
