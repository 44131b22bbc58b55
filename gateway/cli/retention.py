"""``python -m gateway retention run [--now TIME] [--dry-run] [--data-dir DIR]``.

Runs retention and consent expiry once (``gateway.jobs.retention``), as the hourly in-process job
does, and prints the report as one JSON object on stdout. With ``--dry-run`` nothing is changed
and the counts are what a real run would delete. ``--now`` runs as of another instant: in the
past, to repeat a run; in the future only with ``--dry-run`` (a preview — deleting data before its
time cannot be undone). When another process holds the retention lock, prints
``{"ran": false, "reason": "another process holds the retention lock"}`` and exits 0: that
process is doing the work.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from typing import Any
from zoneinfo import ZoneInfo

from gateway.cli.common import TIME_HELP, TimeArg, data_dir_arg, parse_time_arg
from gateway.errors import FieldError, ValidationError
from gateway.jobs import retention
from gateway.settings import Settings
from gateway.storage import db

#: how far ``--now`` may be ahead of the database clock without ``--dry-run`` (clock skew)
_FUTURE_TOLERANCE = dt.timedelta(minutes=5)


def _now_error(message: str) -> ValidationError:
    return ValidationError(f"--now: {message}", [FieldError(("--now",), message)])


def _now_arg(value: TimeArg, settings: Settings) -> dt.datetime:
    try:
        return value.resolve(ZoneInfo(settings.tz))
    except ValidationError as exc:
        raise _now_error(exc.detail) from None


async def _run(
    settings: Settings, now: dt.datetime | None, dry_run: bool
) -> retention.RetentionReport | None:
    policy = settings.retention.policy(spool_horizon_days=settings.spool_horizon_days)
    async with db.open_connection(settings) as conn:
        db_now: dt.datetime = await conn.fetchval("SELECT now()")
        if now is None:
            now = db_now
        elif now > db_now + _FUTURE_TOLERANCE and not dry_run:
            raise _now_error(
                f"{now.isoformat()} is after the database clock ({db_now.isoformat()}): a run"
                " would delete data before its time; use --dry-run to preview"
            )
        return await retention.run_retention_locked(conn, now, policy, dry_run=dry_run)


def cmd_retention_run(args: argparse.Namespace, settings: Settings) -> int:
    """Run retention once; print the report (or that another process holds the lock)."""
    if args.data_dir is not None:
        settings = settings.model_copy(update={"data_dir": args.data_dir})
    now = None if args.now is None else _now_arg(args.now, settings)
    report = asyncio.run(_run(settings, now, args.dry_run))
    out: dict[str, Any]
    if report is None:
        out = {"ran": False, "reason": retention.LOCK_HELD_MESSAGE}
        print(f"retention: {retention.LOCK_HELD_MESSAGE}; nothing done", file=sys.stderr)
    else:
        out = {"ran": True, **report.as_json()}
    print(json.dumps(out, sort_keys=True), flush=True)
    return 0


def add_parser(sub: Any) -> None:
    """Register ``retention run`` (called by ``gateway.cli.main.build_parser``)."""
    parser = sub.add_parser("retention", help="retention of readings and consent records")
    actions = parser.add_subparsers(dest="retention_command", required=True, metavar="ACTION")
    run = actions.add_parser(
        "run", help="expire consents and delete data past its retention period, once"
    )
    run.add_argument(
        "--now",
        default=None,
        metavar="TIME",
        type=parse_time_arg,
        help="run as of this instant (default: the database clock; future only with"
        f" --dry-run): {TIME_HELP}",
    )
    run.add_argument(
        "--dry-run", action="store_true", help="change nothing; report what would be deleted"
    )
    data_dir_arg(run)
    run.set_defaults(func=cmd_retention_run)
