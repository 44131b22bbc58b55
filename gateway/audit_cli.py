"""``python -m gateway audit verify [--data-dir DIR] [--expect-head HASH]``.

Recomputes the audit hash chain from the first row. Prints ``ok: N rows, head <hash>`` and exits
0, or ``broken: row <seq>: <problem>: <details>`` naming the FIRST broken row and exits 1.
Record the printed head somewhere outside the database now and then: passed back as
``--expect-head``, it also catches a truncated tail (which leaves a valid, shorter chain).

Read-only: it connects without migrating (an auditor's role needs only SELECT on audit_log).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from gateway import audit, db
from gateway.errors import ConfigurationError, ValidationError
from gateway.settings import Settings


async def _verify(settings: Settings, expect_head: str | None) -> audit.VerifyResult:
    async with db.database_url(settings) as dsn:
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
    if expect_head is not None:
        try:
            audit.parse_head(expect_head)
        except ValueError as exc:
            raise ValidationError(f"--expect-head: {exc}") from exc
    result = asyncio.run(_verify(settings, expect_head))
    print(result.summary(), flush=True)
    if not result.ok:
        print(
            "error: the audit trail fails verification; keep the database as it is for"
            " investigation",
            file=sys.stderr,
        )
    return 0 if result.ok else 1


def add_parser(sub: Any) -> None:
    """Register ``audit verify`` (the ``COMMAND_MODULES`` hook of ``gateway.cli``)."""
    audit_parser = sub.add_parser("audit", help="audit trail (hash-chained activity log)")
    audit_sub = audit_parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_sub.add_parser(
        "verify",
        help="recompute the hash chain; print 'ok: N rows, head HASH' or the first broken row",
    )
    verify.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="embedded PostgreSQL data directory (default ./var; ignored with DATABASE_URL)",
    )
    verify.add_argument(
        "--expect-head",
        default=None,
        metavar="HASH",
        help="a head hash printed earlier: fail unless the chain still contains it (catches a"
        " truncated tail)",
    )
    verify.set_defaults(func=cmd_audit_verify)
