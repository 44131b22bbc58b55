"""``python -m gateway backup FILE [--data-dir DIR]`` and ``python -m gateway restore FILE
[--data-dir DIR]``: a logical backup of the gateway database and its restore into an empty one
(``gateway.storage.dump``; docs/operations.md has the procedure and the same commands by hand).

``backup`` needs an existing database (``DATABASE_URL``, or the embedded one in ``--data-dir``,
which may be serving meanwhile: ``pg_dump`` reads one consistent snapshot). It reads the audit
head first and prints ``{file, bytes, audit_head}``: the dump holds at least that row, so
``audit verify --expect-head`` after a restore shows no tail was lost.

``restore`` refuses a database that holds any gateway table (it never merges into or overwrites
a live registry); with ``--data-dir`` it creates the embedded cluster there. After the archive is
in, the migrations the archive lacks are applied (a dump of an older version), the source
cluster's transaction ids are cleared (``dump.forget_transaction_ids``) and the audit chain is
verified; it prints ``{restored, migrations_applied, audit}`` and exits 1 if the chain is
broken. Neither command copies key files: the signing key is backed up beside the dump.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import data_dir_arg, print_json, with_data_dir
from gateway.errors import ConfigurationError
from gateway.keys import SIGNING_KEY_FILE
from gateway.settings import Settings
from gateway.storage import audit, db, dump


async def _backup(settings: Settings, target: Path) -> str:
    async with db.database_url(settings, create=False) as dsn:
        conn = await db.connect(dsn)
        try:
            head: bytes | None = await conn.fetchval(
                "SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1"
            )
        finally:
            await conn.close()
        await asyncio.to_thread(dump.dump, dsn, target)
    return (head or audit.GENESIS_HASH).hex()


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    """Dump the database to FILE."""
    target: Path = args.file
    if target.exists():
        raise ConfigurationError(f"{target} exists: a backup never overwrites a file")
    head = asyncio.run(_backup(with_data_dir(args, settings), target))
    print_json({"file": str(target), "bytes": target.stat().st_size, "audit_head": head})
    return 0


async def _restore(settings: Settings, source: Path) -> tuple[list[str], audit.VerifyResult]:
    async with db.database_url(settings, create=True) as dsn:
        conn = await db.connect(dsn)
        try:
            used = await conn.fetchval(
                "SELECT count(*) FROM pg_tables WHERE tablename IN"
                " ('schema_migrations', 'audit_log', 'connections')"
            )
            if used:
                raise ConfigurationError(
                    "the target database already holds gateway tables: restore into an empty "
                    "database (a new --data-dir, or a freshly created database)"
                )
            await asyncio.to_thread(dump.restore, dsn, source)
            applied = await db.migrate(conn)
            await dump.forget_transaction_ids(conn)
            return applied, await audit.verify(conn)
        finally:
            await conn.close()


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    """Restore FILE into an empty database, migrate it, verify the audit chain."""
    source: Path = args.file
    if not source.is_file():
        raise ConfigurationError(f"no backup file {source}")
    settings = with_data_dir(args, settings)
    applied, result = asyncio.run(_restore(settings, source))
    print_json({"restored": str(source), "migrations_applied": applied, "audit": result.summary()})
    if settings.signing_key_file is None and not (settings.data_dir / SIGNING_KEY_FILE).exists():
        print(
            f"warning: no {SIGNING_KEY_FILE} in {settings.data_dir}: copy the backed-up signing "
            "key (and retired-keys/) there before `serve`, or receipts, cursors and sync tokens "
            "issued before the backup stop verifying",
            file=sys.stderr,
        )
    return 0 if result.ok else 1


def add_parser(sub: Any) -> None:
    """Register ``backup`` and ``restore`` (called by ``gateway.cli.main``)."""
    backup = sub.add_parser("backup", help="pg_dump the gateway database to FILE (custom format)")
    backup.add_argument("file", type=Path, metavar="FILE")
    data_dir_arg(backup)
    backup.set_defaults(func=cmd_backup)
    restore = sub.add_parser(
        "restore",
        help="pg_restore FILE into an empty database (a new --data-dir), migrate, verify audit",
    )
    restore.add_argument("file", type=Path, metavar="FILE")
    data_dir_arg(restore)
    restore.set_defaults(func=cmd_restore)
