"""The registry from the command line, through the same service functions as the admin HTTP API
(direct database access): ``admin meters add|import|end|exchange``, ``admin contracts
add|end|import`` and ``admin devices add|rebind|revoke|list``. Each prints one JSON object."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pydantic

from gateway.cli.common import (
    TIME_HELP,
    TimeArg,
    customer_id_type,
    data_dir_arg,
    ean_type,
    meter_id_type,
    parse_time_arg,
    print_json,
    run_db,
    uuid_type,
)
from gateway.errors import ValidationError, validation_error
from gateway.services import contract_events_csv, devices, registry, registry_csv
from gateway.settings import Settings


def _time_arg(value: TimeArg, name: str, tz: ZoneInfo) -> dt.datetime:
    try:
        return value.resolve(tz)
    except ValidationError as exc:
        raise ValidationError(f"--{name}: {exc.detail}") from None


def _read_csv(path: str) -> str:
    """The text of CSV file ``path`` ('-': stdin); a ValidationError when it cannot be read
    (not an OSError, which the CLI would report as an unreachable database)."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValidationError(f"cannot read {path}: not UTF-8 text") from None


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
    text = _read_csv(args.csv)
    tz = ZoneInfo(settings.tz)
    started = time.perf_counter()
    count = run_db(args, settings, lambda conn: registry_csv.import_connections_csv(conn, text, tz))
    print_json({"imported": count, "seconds": round(time.perf_counter() - started, 3)})
    return 0


def cmd_meters_end(args: argparse.Namespace, settings: Settings) -> int:
    at = _time_arg(args.at, "at", ZoneInfo(settings.tz))
    ean: str = args.ean
    print_json(
        run_db(
            args, settings, lambda conn: registry.end_current_contract(conn, ean, at, args.reason)
        )
    )
    return 0


def cmd_meters_exchange(args: argparse.Namespace, settings: Settings) -> int:
    ean: str = args.ean
    at = _time_arg(args.at, "at", ZoneInfo(settings.tz))
    try:
        change = registry.MeterExchangeIn.model_validate({"meter_id": args.meter_id, "at": at})
    except pydantic.ValidationError as exc:
        raise validation_error(exc, where="arguments") from exc
    print_json(run_db(args, settings, lambda conn: registry.exchange_meter(conn, ean, change)))
    return 0


def cmd_contracts_add(args: argparse.Namespace, settings: Settings) -> int:
    tz = ZoneInfo(settings.tz)
    fields: dict[str, Any] = {
        "ean": args.ean,
        "customer_id": args.customer_id,
        "start": _time_arg(args.start, "start", tz),
    }
    if args.end is not None:
        fields["end"] = _time_arg(args.end, "end", tz)
    if args.previous_end_reason is not None:
        fields["previous_end_reason"] = args.previous_end_reason
    try:
        new = registry.ContractIn.model_validate(fields)
    except pydantic.ValidationError as exc:
        raise validation_error(exc, where="arguments") from exc
    print_json(run_db(args, settings, lambda conn: registry.add_contract(conn, new)))
    return 0


def cmd_contracts_end(args: argparse.Namespace, settings: Settings) -> int:
    contract_id: uuid.UUID = args.contract_id
    at = _time_arg(args.at, "at", ZoneInfo(settings.tz))
    print_json(
        run_db(
            args,
            settings,
            lambda conn: registry.end_contract(conn, contract_id, at, args.reason),
        )
    )
    return 0


def cmd_contracts_import(args: argparse.Namespace, settings: Settings) -> int:
    text = _read_csv(args.csv)
    tz = ZoneInfo(settings.tz)
    started = time.perf_counter()
    counts = run_db(
        args,
        settings,
        lambda conn: contract_events_csv.import_contract_events_csv(conn, text, tz),
    )
    print_json({**counts, "seconds": round(time.perf_counter() - started, 3)})
    return 0


def cmd_devices_add(args: argparse.Namespace, settings: Settings) -> int:
    try:
        new = devices.DeviceIn.model_validate({"meter_ids": args.meter_id})
    except pydantic.ValidationError as exc:
        raise validation_error(exc, where="arguments") from exc

    async def add(conn: Any) -> devices.NewDevice:
        return await devices.add_device(conn, new.meter_ids)

    device: devices.NewDevice = run_db(args, settings, add)
    print_json(device.as_json())
    return 0


def cmd_devices_rebind(args: argparse.Namespace, settings: Settings) -> int:
    device_id: uuid.UUID = args.device_id
    try:
        new = devices.DeviceIn.model_validate({"meter_ids": args.meter_id})
    except pydantic.ValidationError as exc:
        raise validation_error(exc, where="arguments") from exc
    print_json(
        run_db(args, settings, lambda conn: devices.rebind_device(conn, device_id, new.meter_ids))
    )
    return 0


def cmd_devices_revoke(args: argparse.Namespace, settings: Settings) -> int:
    device_id: uuid.UUID = args.device_id
    print_json(run_db(args, settings, lambda conn: devices.revoke_device(conn, device_id)))
    return 0


def cmd_devices_list(args: argparse.Namespace, settings: Settings) -> int:
    print_json({"devices": run_db(args, settings, devices.list_devices)})
    return 0


def _ean_arg(parser: argparse.ArgumentParser) -> None:
    # every command names the connection the same way: --ean, checked by the registry's rule
    parser.add_argument(
        "--ean", required=True, type=ean_type, help="the connection's EAN-18 (18 digits)"
    )


def add_admin_parser(admin_sub: Any) -> None:
    """Register ``admin meters …``, ``admin contracts …`` and ``admin devices …``."""
    meters = admin_sub.add_parser("meters", help="connections (EAN, meter, customer, contract)")
    meters_sub = meters.add_subparsers(dest="meters_command", required=True, metavar="ACTION")
    add = meters_sub.add_parser("add", help="register one connection; prints it as JSON")
    _ean_arg(add)
    add.add_argument("--commodity", required=True, choices=sorted(registry.COMMODITIES))
    add.add_argument("--meter-id", required=True, type=meter_id_type)
    add.add_argument("--customer-id", required=True, type=customer_id_type)
    add.add_argument(
        "--contract-start", required=True, type=parse_time_arg, metavar="TIME", help=TIME_HELP
    )
    add.add_argument(
        "--contract-end", default=None, type=parse_time_arg, metavar="TIME", help=TIME_HELP
    )
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
    _ean_arg(end)
    end.add_argument("--at", required=True, type=parse_time_arg, metavar="TIME", help=TIME_HELP)
    end.add_argument("--reason", required=True, choices=sorted(registry.END_REASONS))
    data_dir_arg(end)
    end.set_defaults(func=cmd_meters_end)

    exchange = meters_sub.add_parser(
        "exchange",
        help="a meter exchange: the installed meter leaves at --at, --meter-id is installed"
        " from then; prints the connection with its history",
    )
    _ean_arg(exchange)
    exchange.add_argument(
        "--meter-id", required=True, type=meter_id_type, help="the new meter's equipment id"
    )
    exchange.add_argument(
        "--at", required=True, type=parse_time_arg, metavar="TIME", help=TIME_HELP
    )
    data_dir_arg(exchange)
    exchange.set_defaults(func=cmd_meters_exchange)

    contracts = admin_sub.add_parser("contracts", help="supply contracts on a connection")
    contracts_sub = contracts.add_subparsers(
        dest="contracts_command", required=True, metavar="ACTION"
    )
    k_add = contracts_sub.add_parser(
        "add", help="register a contract (a move-in, a switch to us); prints it as JSON"
    )
    _ean_arg(k_add)
    k_add.add_argument("--customer-id", required=True, type=customer_id_type)
    k_add.add_argument(
        "--start", required=True, type=parse_time_arg, metavar="TIME", help=TIME_HELP
    )
    k_add.add_argument("--end", default=None, type=parse_time_arg, metavar="TIME", help=TIME_HELP)
    k_add.add_argument(
        "--previous-end-reason",
        choices=sorted(registry.END_REASONS),
        default=None,
        help="a handover: end the contract open at --start with this reason (its daily"
        " readings since become the new contract's)",
    )
    data_dir_arg(k_add)
    k_add.set_defaults(func=cmd_contracts_add)

    k_end = contracts_sub.add_parser(
        "end", help="end a contract (ends its consents too); prints it as JSON"
    )
    k_end.add_argument("contract_id", type=uuid_type("a contract id"), metavar="CONTRACT_ID")
    k_end.add_argument("--at", required=True, type=parse_time_arg, metavar="TIME", help=TIME_HELP)
    k_end.add_argument("--reason", required=True, choices=sorted(registry.END_REASONS))
    data_dir_arg(k_end)
    k_end.set_defaults(func=cmd_contracts_end)

    k_imp = contracts_sub.add_parser(
        "import",
        help="import contract events from a CSV all-or-nothing and idempotently (columns:"
        " event,ean,customer_id,at[,end_reason]; event start or end); '-' reads stdin",
    )
    k_imp.add_argument("csv")
    data_dir_arg(k_imp)
    k_imp.set_defaults(func=cmd_contracts_import)

    devices_cmd = admin_sub.add_parser("devices", help="field devices")
    devices_sub = devices_cmd.add_subparsers(
        dest="devices_command", required=True, metavar="ACTION"
    )
    dev_add = devices_sub.add_parser(
        "add", help="register a device; prints {device_id, token} (the token only this once)"
    )
    dev_add.add_argument(
        "--meter-id", action="append", required=True, type=meter_id_type, help="repeatable"
    )
    data_dir_arg(dev_add)
    dev_add.set_defaults(func=cmd_devices_add)

    rebind = devices_sub.add_parser(
        "rebind", help="bind a device to other meter ids (its token stays valid)"
    )
    rebind.add_argument("device_id", type=uuid_type("a device id"), metavar="DEVICE_ID")
    rebind.add_argument(
        "--meter-id", action="append", required=True, type=meter_id_type, help="repeatable"
    )
    data_dir_arg(rebind)
    rebind.set_defaults(func=cmd_devices_rebind)

    revoke = devices_sub.add_parser("revoke", help="revoke a device's token at once")
    revoke.add_argument("device_id", type=uuid_type("a device id"), metavar="DEVICE_ID")
    data_dir_arg(revoke)
    revoke.set_defaults(func=cmd_devices_revoke)

    dev_list = devices_sub.add_parser("list", help="every device (never a token)")
    data_dir_arg(dev_list)
    dev_list.set_defaults(func=cmd_devices_list)
