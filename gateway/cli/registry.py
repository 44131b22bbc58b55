"""``admin meters add|import|end`` and ``admin devices add``: the registry, through the same
service functions as the admin HTTP API (direct database access)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pydantic

from gateway.cli.common import data_dir_arg, print_json, run_db
from gateway.errors import ValidationError, validation_error
from gateway.services import registry, registry_csv
from gateway.settings import Settings
from gateway.times import parse_time


def _time_arg(value: str, name: str, tz: ZoneInfo) -> dt.datetime:
    try:
        return parse_time(value, tz)
    except ValueError as exc:
        raise ValidationError(f"--{name}: {exc}") from exc


def cmd_meters_add(args: argparse.Namespace, settings: Settings) -> int:
    tz = ZoneInfo(settings.tz)
    fields: dict[str, Any] = {
        "ean": args.ean,
        "commodity": args.commodity,
        "meter_id": args.meter_id,
        "customer_id": args.customer_id,
        "contract_start": _time_arg(args.contract_start, "contract-start", tz),
    }
    if args.contract_end is not None:
        fields["contract_end"] = _time_arg(args.contract_end, "contract-end", tz)
    try:
        new = registry.ConnectionIn.model_validate(fields)
    except pydantic.ValidationError as exc:
        raise validation_error(exc, where="arguments") from exc
    print_json(run_db(args, settings, lambda conn: registry.add_connection(conn, new)))
    return 0


def cmd_meters_import(args: argparse.Namespace, settings: Settings) -> int:
    path: str = args.csv
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8-sig")
    tz = ZoneInfo(settings.tz)
    started = time.perf_counter()
    count = run_db(args, settings, lambda conn: registry_csv.import_connections_csv(conn, text, tz))
    print_json({"imported": count, "seconds": round(time.perf_counter() - started, 3)})
    return 0


def cmd_meters_end(args: argparse.Namespace, settings: Settings) -> int:
    at = _time_arg(args.at, "at", ZoneInfo(settings.tz))
    ean = registry.validate_ean(args.ean)
    print_json(
        run_db(
            args, settings, lambda conn: registry.end_current_contract(conn, ean, at, args.reason)
        )
    )
    return 0


def cmd_devices_add(args: argparse.Namespace, settings: Settings) -> int:
    try:
        new = registry.DeviceIn.model_validate({"meter_ids": args.meter_id})
    except pydantic.ValidationError as exc:
        raise validation_error(exc, where="arguments") from exc

    async def add(conn: Any) -> registry.NewDevice:
        return await registry.add_device(conn, new.meter_ids)

    device: registry.NewDevice = run_db(args, settings, add)
    print_json(device.as_json())
    return 0


def add_admin_parser(admin_sub: Any) -> None:
    """Register ``admin meters add|import|end`` and ``admin devices add``."""
    meters = admin_sub.add_parser("meters", help="connections (EAN, meter, customer, contract)")
    meters_sub = meters.add_subparsers(dest="meters_command", required=True, metavar="ACTION")
    add = meters_sub.add_parser("add", help="register one connection; prints it as JSON")
    add.add_argument("--ean", required=True)
    add.add_argument("--commodity", required=True, choices=sorted(registry.COMMODITIES))
    add.add_argument("--meter-id", required=True)
    add.add_argument("--customer-id", required=True)
    add.add_argument("--contract-start", required=True, help="RFC 3339 or YYYY-MM-DD (local)")
    add.add_argument("--contract-end", default=None, help="RFC 3339 or YYYY-MM-DD (local)")
    data_dir_arg(add)
    add.set_defaults(func=cmd_meters_add)

    imp = meters_sub.add_parser(
        "import",
        help="import a CSV all-or-nothing (columns: ean,commodity,meter_id,"
        "customer_id,contract_start[,contract_end]); '-' reads stdin",
    )
    imp.add_argument("csv")
    data_dir_arg(imp)
    imp.set_defaults(func=cmd_meters_import)

    end = meters_sub.add_parser("end", help="end a contract (ends its consents too)")
    end.add_argument("ean")
    end.add_argument("--at", required=True, help="RFC 3339 or YYYY-MM-DD (local)")
    end.add_argument("--reason", required=True, choices=sorted(registry.END_REASONS))
    data_dir_arg(end)
    end.set_defaults(func=cmd_meters_end)

    devices = admin_sub.add_parser("devices", help="field devices")
    devices_sub = devices.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    dev_add = devices_sub.add_parser(
        "add", help="register a device; prints {device_id, token} (the token only this once)"
    )
    dev_add.add_argument("--meter-id", action="append", required=True, help="repeatable")
    data_dir_arg(dev_add)
    dev_add.set_defaults(func=cmd_devices_add)
