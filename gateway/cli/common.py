"""What the commands share: the ``--data-dir`` option, flags checked by the settings' own rules,
running one database action, JSON out."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import pydantic

from gateway.jsonenc import dumps
from gateway.settings import Settings
from gateway.storage import db

#: a command: parsed arguments and the settings in, the exit status out
Command = Callable[[argparse.Namespace, Settings], int]


def data_dir_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--data-dir`` (where the embedded PostgreSQL lives) to ``parser``."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="embedded PostgreSQL data directory (default ./var; ignored with DATABASE_URL)",
    )


def setting_type(name: str) -> Callable[[str], Any]:
    """An argparse ``type`` for a flag that overrides setting ``name``: the text is checked by
    the setting's own type and bounds (``gateway.settings``), so ``--port 99999`` is refused by
    the parser, as ``METERPOORT_PORT=99999`` is by the settings, before anything starts."""
    field = Settings.model_fields[name]
    # Annotated needs at least one annotation: a field without bounds (a FilePath) has none
    checked: Any = (
        Annotated[field.annotation, *field.metadata]  # a type built at run time
        if field.metadata
        else field.annotation
    )
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(checked)

    def parse(text: str) -> Any:
        try:
            return adapter.validate_python(text)
        except pydantic.ValidationError as exc:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {exc.errors()[0]['msg'].lower()}"
            ) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def with_data_dir(args: argparse.Namespace, settings: Settings) -> Settings:
    """``settings`` with the command's ``--data-dir``, when given."""
    data_dir = getattr(args, "data_dir", None)
    if data_dir is None:
        return settings
    return settings.model_copy(update={"data_dir": data_dir})


def run_db(
    args: argparse.Namespace,
    settings: Settings,
    action: Callable[[asyncpg.Connection], Coroutine[Any, Any, Any]],
) -> Any:
    """Run ``action`` on one connection to the command's database; its result."""

    async def run() -> Any:
        async with db.open_connection(with_data_dir(args, settings)) as conn:
            return await action(conn)

    return asyncio.run(run())


def print_json(data: Any) -> None:
    """One JSON object on stdout (datetimes RFC 3339, UUIDs as strings)."""
    print(dumps(data))
