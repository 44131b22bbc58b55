"""``python -m gateway audit verify [--data-dir DIR] [--expect-head HASH]`` and
``python -m gateway audit prune --before TIME [--dry-run]``.

``verify`` recomputes the audit hash chain from the first row. Prints ``ok: N rows, head <hash>``
and exits 0, or ``broken: row <seq>: <problem>: <details>`` naming the FIRST broken row and exits
1. Record the printed head somewhere outside the database now and then: passed back as
``--expect-head``, it also catches a truncated tail (which leaves a valid, shorter chain).
Read-only: it connects without migrating (an auditor's role needs only SELECT on audit_log).

``prune`` removes the rows recorded before ``--before`` once their retention has passed (SPEC §2:
as long as the data they justify plus 1 year; whether that has passed is the operator's call, the
hourly job does it by itself only with ``METERPOORT_RETENTION_AUDIT_YEARS`` set). An
``audit.prune`` row announcing the removal is appended first, so ``verify`` still checks the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from typing import Any
from zoneinfo import ZoneInfo

from gateway.cli.common import TIME_HELP, TimeArg, data_dir_arg, parse_time_arg
from gateway.errors import ConfigurationError, ValidationError
from gateway.settings import Settings
from gateway.storage import audit, db


async def _verify(settings: Settings, expect_head: str | None) -> audit.VerifyResult:
    async with db.database_url(settings, create=False) as dsn:
        conn = await db.connect(dsn)
        try:
            exists = await conn.fetchval("SELECT to_regclass('audit_log') IS NOT NULL")
            if not exists:
                raise ConfigurationError(
                    "the database has no audit_log table: run `python -m gateway migrate` first"
                )
            return await audit.verify(conn, expect_head=expect_head)
        finally:
            await conn.close()


def cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    """Verify the chain; exit 0 if intact, 1 naming the first broken row otherwise."""
    if args.data_dir is not None:
        settings = settings.model_copy(update={"data_dir": args.data_dir})
    expect_head: str | None = args.expect_head
    result = asyncio.run(_verify(settings, expect_head))
    print(result.summary(), flush=True)
    if not result.ok:
        print(
            "error: the audit trail fails verification; keep the database as it is for"
            " investigation",
            file=sys.stderr,
        )
    return 0 if result.ok else 1


async def _prune(settings: Settings, before: dt.datetime, dry_run: bool) -> audit.PruneResult:
    async with db.database_url(settings, create=False) as dsn:
        conn = await db.connect(dsn)
        try:
            await db.migrate(conn)
            return await audit.prune(conn, before, actor="admin", dry_run=dry_run)
        finally:
            await conn.close()


def _before_arg(value: TimeArg, settings: Settings) -> dt.datetime:
    try:
        moment = value.resolve(ZoneInfo(settings.tz))  # a local date or time of the installation
    except ValidationError as exc:
        raise ValidationError(f"--before {exc.detail}") from None
    if moment > dt.datetime.now(dt.UTC):
        raise ValidationError(
            f"--before {value.text!r} is in the future: that would remove every row"
        )
    return moment


def _head_arg(text: str) -> str:
    try:
        audit.parse_head(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (expected 64 hex digits)") from None
    return text


_head_arg.__name__ = "head hash"


def cmd_audit_prune(args: argparse.Namespace, settings: Settings) -> int:
    """Remove the audit rows recorded before ``--before`` (announced in the chain first)."""
    if args.data_dir is not None:
        settings = settings.model_copy(update={"data_dir": args.data_dir})
    before = _before_arg(args.before, settings)
    result = asyncio.run(_prune(settings, before, args.dry_run))
    verb = "would remove" if args.dry_run else "removed"
    if result.rows == 0:
        print(f"nothing recorded before {before.isoformat()}", flush=True)
    else:
        announced = f" (announced by row {result.announced_seq})" if result.announced_seq else ""
        print(
            f"{verb} {result.rows} rows {result.first_seq}..{result.through_seq}{announced}",
            flush=True,
        )
    return 0


def add_parser(sub: Any) -> None:
    """Register ``audit verify`` (called by ``gateway.cli.main.build_parser``)."""
    audit_parser = sub.add_parser("audit", help="audit trail (hash-chained activity log)")
    audit_sub = audit_parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_sub.add_parser(
        "verify",
        help="recompute the hash chain; print 'ok: N rows, head HASH' or the first broken row",
    )
    data_dir_arg(verify)
    verify.add_argument(
        "--expect-head",
        default=None,
        type=_head_arg,
        metavar="HASH",
        help="a head hash printed earlier: fail unless the chain still contains it (catches a"
        " truncated tail)",
    )
    verify.set_defaults(func=cmd_audit_verify)
    prune = audit_sub.add_parser(
        "prune",
        help="remove the rows recorded before a time, announced by an audit.prune row first",
    )
    prune.add_argument(
        "--before",
        required=True,
        metavar="TIME",
        type=parse_time_arg,
        help=TIME_HELP,
    )
    prune.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    data_dir_arg(prune)
    prune.set_defaults(func=cmd_audit_prune)
