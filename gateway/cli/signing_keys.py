"""``python -m gateway keys list [--data-dir DIR]`` and ``python -m gateway keys rotate
[--data-dir DIR]``: the signing key and the retired ones (``gateway.keys``).

``list`` prints one JSON object: the current key's id and each retired key's id, file and
whether its private half is kept. ``rotate`` retires the data directory's signing key and
generates a new one, printing ``{old_kid, new_kid, retired_path}``; running gateways go on
signing with the key they loaded until restarted (docs/operations.md, key rotation).
Neither touches the database.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.cli.common import print_json, with_data_dir
from gateway.errors import ConfigurationError
from gateway.keys import SIGNING_KEY_FILE, key_ring, rotate_signing_key
from gateway.settings import Settings


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    """Print the current and retired signing keys."""
    settings = with_data_dir(args, settings)
    if settings.signing_key_file is None:
        path = settings.data_dir / SIGNING_KEY_FILE
        if not path.exists():
            # listing must not generate a key in a mistyped directory
            raise ConfigurationError(f"no signing key: {path} does not exist")
    ring = key_ring(settings)
    print_json(
        {
            "current": ring.signing_kid,
            "retired": [
                {
                    "kid": k.kid,
                    "path": str(k.path),
                    "private_half": k.private_key is not None,
                }
                for k in ring.retired
            ],
        }
    )
    return 0


def cmd_keys_rotate(args: argparse.Namespace, settings: Settings) -> int:
    """Retire the signing key and generate a new one."""
    rotation = rotate_signing_key(with_data_dir(args, settings))
    print_json(
        {
            "old_kid": rotation.old_kid,
            "new_kid": rotation.new_kid,
            "retired_path": str(rotation.retired_path),
        }
    )
    return 0


def _data_dir_arg(parser: argparse.ArgumentParser) -> None:
    # the keys live in the data directory whether or not the database does (DATABASE_URL)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data directory holding signing-key.pem and retired-keys/ (default ./var)",
    )


def add_parser(sub: Any) -> None:
    """Register ``keys list`` and ``keys rotate`` (called by ``gateway.cli.main``)."""
    parser = sub.add_parser("keys", help="the receipt/webhook/cursor signing key and its rotation")
    keys_sub = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    listing = keys_sub.add_parser("list", help="print the current and the retired key ids")
    _data_dir_arg(listing)
    listing.set_defaults(func=cmd_keys_list)
    rotate = keys_sub.add_parser(
        "rotate",
        help="retire <data-dir>/signing-key.pem into the retired-keys directory and generate a "
        "new one (restart the gateways afterwards)",
    )
    _data_dir_arg(rotate)
    rotate.set_defaults(func=cmd_keys_rotate)
