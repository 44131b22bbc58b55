"""What the commands share: the ``--data-dir`` option, argument types that check a value by the
same rules as its setting or API field (a bad value is a usage error, exit 2, naming the format),
one parser for time arguments, running one database action, JSON out."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Final
from zoneinfo import ZoneInfo

import asyncpg
import pydantic

from gateway.errors import ValidationError
from gateway.jsonenc import dumps
from gateway.services import registry
from gateway.settings import Settings
from gateway.storage import db
from gateway.times import in_range

#: a command: parsed arguments and the settings in, the exit status out
Command = Callable[[argparse.Namespace, Settings], int]


def data_dir_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--data-dir`` (where the embedded PostgreSQL lives) to ``parser``."""
    parser.add_argument(
        "--data-dir",
        type=setting_type("data_dir"),
        default=None,
        metavar="DIR",
        help="embedded PostgreSQL data directory (default METERPOORT_DATA_DIR or ./var;"
        " ignored with DATABASE_URL)",
    )


def checked_type(annotation: Any, expected: str) -> Callable[[str], Any]:
    """An argparse ``type`` that validates the text with pydantic against ``annotation`` (the
    type an API field or setting uses, so the rule lives once) and, when it fails, is a usage
    error saying what was ``expected`` and why."""
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(annotation)

    def parse(text: str) -> Any:
        try:
            return adapter.validate_python(text)
        except pydantic.ValidationError as exc:
            reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise argparse.ArgumentTypeError(
                f"{text[:80]!r} is not {expected}: {reason[:1].lower()}{reason[1:]}"
            ) from None

    return parse


def setting_type(name: str) -> Callable[[str], Any]:
    """An argparse ``type`` for a flag that overrides setting ``name``: the text is checked by
    the setting's own type and bounds (``gateway.settings``), so ``--port 99999`` is refused by
    the parser, as ``METERPOORT_PORT=99999`` is by the settings, before anything starts."""
    field = Settings.model_fields[name]
    annotation: Any = field.annotation
    if field.metadata:  # bounds (Field(ge=…)) live in the metadata
        annotation = Annotated[annotation, *field.metadata]
    parse = checked_type(annotation, f"a valid METERPOORT_{name.upper()}")
    parse.__name__ = name  # argparse names the type in some messages
    return parse


def uuid_type(what: str) -> Callable[[str], uuid.UUID]:
    """An argparse ``type`` for the id of ``what`` (a UUID)."""

    def parse(text: str) -> uuid.UUID:
        try:
            return uuid.UUID(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text[:80]!r} is not {what}: expected a UUID"
                " (e.g. 0b8e7f3c-5d1a-4c2e-9f60-2a7d3c1e4b59)"
            ) from None

    parse.__name__ = what
    return parse


#: ``--ean``: the registry's own EAN rule (length, digits, check digit)
ean_type = checked_type(registry.Ean, "an EAN-18 (18 digits ending in a GS1 check digit)")
ean_type.__name__ = "EAN"
#: ``--customer-id``: the registry's customer id rule
customer_id_type = checked_type(
    registry.CustomerId, "a customer id (letters, digits and . _ : @ | = -, at most 128)"
)
customer_id_type.__name__ = "customer id"
#: ``--meter-id``: a meter equipment id as the telegram carries it, decoded
meter_id_type = checked_type(
    registry.MeterId, "a meter id (1 to 96 printable ASCII characters, no spaces)"
)
meter_id_type.__name__ = "meter id"


# ---------------------------------------------------------------------------------------------
# time arguments

#: what every time argument accepts (named in help texts and errors)
TIME_FORMATS: Final = (
    "YYYY-MM-DD (local midnight), YYYY-MM-DDTHH:MM[:SS[.ffffff]] (local time), or that time"
    " followed by Z or ±HH:MM (e.g. 2024-03-01T00:00:00Z, 2024-03-01T01:00+01:00);"
    " local = METERPOORT_TZ, default Europe/Amsterdam"
)
#: the short form for help texts
TIME_HELP: Final = (
    "YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS] (local: METERPOORT_TZ), or such a time with Z or ±HH:MM"
)

# ISO 8601 extended format only: datetime.fromisoformat alone would also take week dates and
# basic forms ("20240301") that the help does not promise, and says nothing useful when it fails
_TIME_RE: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|z|[+-]\d{2}:\d{2})?)?"
)


@dataclass(frozen=True, slots=True)
class TimeArg:
    """A time argument as typed: an instant (it had an offset), or a local date or wall-clock
    time read in the installation's time zone, which is known only once the settings are
    (``resolve``)."""

    text: str
    value: dt.datetime  # aware, or naive local

    def resolve(self, tz: ZoneInfo) -> dt.datetime:
        """The instant in UTC; a local time is read in ``tz``. ValidationError out of range."""
        # a wall-clock time that a DST change skips or repeats takes the offset in force before
        # the change (fold=0), as the API's local dates do
        local = self.value if self.value.tzinfo is not None else self.value.replace(tzinfo=tz)
        try:
            return in_range(local.astimezone(dt.UTC))
        except (ValueError, OverflowError) as exc:
            raise ValidationError(f"{self.text!r}: {exc}") from None


def parse_time_arg(text: str) -> TimeArg:
    """A time argument in one of ``TIME_FORMATS``; a usage error naming them otherwise."""
    value = text.strip()
    if not _TIME_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a time: expected {TIME_FORMATS}")
    try:
        parsed = dt.datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError as exc:  # the right shape, but no such day or hour (2024-02-30, 25:00)
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a time: {exc}") from None
    # the calendar's edges cannot take a time zone conversion; the range check says so clearly
    if not dt.datetime(1900, 1, 2) <= parsed.replace(tzinfo=None) < dt.datetime(8999, 12, 31):
        raise argparse.ArgumentTypeError(f"{text[:80]!r}: out of range: a time from 1900 to 8999")
    return TimeArg(text, parsed)


parse_time_arg.__name__ = "time"


# ---------------------------------------------------------------------------------------------
# running


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
