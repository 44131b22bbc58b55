"""``python -m gateway token customer CUSTOMER_ID [--data-dir DIR] [--ttl 1h] [--audience AUD]``.

Mints a dev customer token: an EdDSA JWT (issuer ``meterpoort-dev``, audience the configured
``customer_jwt_audience``) signed with ``<data_dir>/dev-customer-key.pem``. Prints the bare token
on stdout and nothing else. ``serve`` trusts that key only when ``METERPOORT_DEV_MODE=1``, and
creates it then; production customer tokens come from the supplier's identity provider.

The command refuses a data directory without that key, and (without ``DATABASE_URL``) one
without a gateway database: a token signed with a key of its own would be trusted by no gateway.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import uuid
from pathlib import Path
from typing import Any

import jwt

from gateway.api.customer_auth import (
    DEV_ISSUER,
    MAX_CUSTOMER_ID_LEN,
    CustomerAuthConfig,
    dev_kid,
)
from gateway.cli.common import customer_id_type, data_dir_arg, setting_type, with_data_dir
from gateway.errors import ConfigurationError, FieldError, ValidationError
from gateway.keys import DEV_CUSTOMER_KEY_FILE, dev_customer_key
from gateway.settings import Settings
from gateway.storage import db

#: longest lifetime of a dev token
MAX_TTL = dt.timedelta(days=30)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> dt.timedelta:
    """``90s``, ``15m``, ``1h``, ``7d`` or plain seconds → a positive timedelta up to 30 days."""
    value = text.strip().lower()
    unit = _UNITS.get(value[-1:], None)
    digits = value[:-1] if unit is not None else value
    if not digits.isdigit():
        raise ValidationError(
            f"--ttl {text!r}: expected a number with an optional unit s, m, h or d (e.g. 1h)",
            [FieldError(("arguments", "ttl"), "not a duration")],
        )
    ttl = dt.timedelta(seconds=int(digits) * (unit or 1))
    if not dt.timedelta(0) < ttl <= MAX_TTL:
        raise ValidationError(
            f"--ttl {text!r}: must be more than 0 and at most 30 days",
            [FieldError(("arguments", "ttl"), "out of range")],
        )
    return ttl


def _ttl_arg(text: str) -> dt.timedelta:
    try:
        return parse_ttl(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(exc.detail.removeprefix("--ttl ")) from None


_ttl_arg.__name__ = "duration"


def existing_dev_key(settings: Settings) -> Path:
    """The dev key file of ``settings.data_dir``; ConfigurationError naming the directory when
    it holds no gateway database (unless ``DATABASE_URL`` says where that is) or no dev key."""
    db.require_database(settings)
    path = Path(settings.data_dir) / DEV_CUSTOMER_KEY_FILE
    if not path.is_file():
        raise ConfigurationError(
            f"no dev customer key {path}: a gateway serving --data-dir {settings.data_dir} in dev"
            " mode creates it (METERPOORT_DEV_MODE=1 python -m gateway serve --data-dir"
            f" {settings.data_dir}); only that gateway trusts tokens signed with it"
        )
    return path


def mint_dev_token(
    data_dir: Path,
    customer_id: str,
    audience: str,
    ttl: dt.timedelta,
    now: dt.datetime | None = None,
) -> str:
    """A dev customer token for ``customer_id``, signed with the data directory's dev key."""
    if not customer_id or len(customer_id) > MAX_CUSTOMER_ID_LEN or not customer_id.isprintable():
        raise ValidationError(
            f"customer id must be 1 to {MAX_CUSTOMER_ID_LEN} printable characters",
            [FieldError(("arguments", "customer_id"), "invalid customer id")],
        )
    key = dev_customer_key(data_dir)
    issued = dt.datetime.now(dt.UTC) if now is None else now
    claims: dict[str, Any] = {
        "iss": DEV_ISSUER,
        "aud": audience,
        "sub": customer_id,
        "iat": int(issued.timestamp()),
        "nbf": int(issued.timestamp()),
        "exp": int((issued + ttl).timestamp()),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(
        claims, key, algorithm="EdDSA", headers={"kid": dev_kid(key.public_key()), "typ": "JWT"}
    )


def cmd_token_customer(args: argparse.Namespace, settings: Settings) -> int:
    """Print a dev customer token for ``args.customer_id``."""
    settings = with_data_dir(args, settings)
    existing_dev_key(settings)
    audience = args.audience or CustomerAuthConfig.from_settings(settings).audience
    token = mint_dev_token(settings.data_dir, args.customer_id, audience, args.ttl)
    print(token)
    if not settings.dev_mode:
        print(
            "note: the gateway accepts this token only when started with METERPOORT_DEV_MODE=1",
            file=sys.stderr,
        )
    return 0


def add_parser(sub: Any) -> None:
    """Register ``token customer``."""
    token = sub.add_parser("token", help="mint tokens for development")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="KIND")
    customer = token_sub.add_parser(
        "customer",
        help="a customer JWT signed with the dev key in the data directory (prints the token);"
        " a gateway in dev mode (METERPOORT_DEV_MODE=1) creates that key",
    )
    customer.add_argument("customer_id", metavar="CUSTOMER_ID", type=customer_id_type)
    data_dir_arg(customer)
    customer.add_argument(
        "--ttl",
        default=dt.timedelta(hours=1),
        type=_ttl_arg,
        help="lifetime: 90s, 15m, 1h, 7d or seconds, at most 30 days (default 1h)",
    )
    customer.add_argument(
        "--audience",
        default=None,
        type=setting_type("customer_jwt_audience"),
        help="aud claim (default: METERPOORT_CUSTOMER_JWT_AUDIENCE)",
    )
    customer.set_defaults(func=cmd_token_customer)
