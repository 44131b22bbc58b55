"""Levels, granularities and commodities: the small closed vocabularies of the legal model.

A connection's *level* is what may be read remotely without consent (SPEC §2):

====================  ===============================================================
level                 stored granularities
====================  ===============================================================
``none``              nothing
``monthly``           ``P1M``
``daily`` (default)   ``P1M``, ``P1D``
*interval*            ``daily`` plus an active interval consent: also ``PT15M``
                      (electricity) or ``PT1H`` (gas)
====================  ===============================================================

*Interval* is not a stored level: it is ``daily`` while an interval consent is active. A consent
on a connection whose level is ``monthly`` or ``none`` stores no interval readings — the
customer's objection to daily reading is taken to cover shorter periods as well.
"""

from __future__ import annotations

from enum import StrEnum

from consent.errors import UnknownLevelError


class Level(StrEnum):
    """A connection's remote-reading level (stored in ``connections.level``)."""

    NONE = "none"
    MONTHLY = "monthly"
    DAILY = "daily"


class Commodity(StrEnum):
    ELECTRICITY = "electricity"
    GAS = "gas"


class Granularity(StrEnum):
    """ISO 8601 period lengths of stored readings."""

    P1M = "P1M"
    P1D = "P1D"
    #: electricity interval
    PT15M = "PT15M"
    #: gas interval
    PT1H = "PT1H"


DEFAULT_LEVEL = Level.DAILY

#: the interval granularity per commodity
INTERVAL_GRANULARITY: dict[Commodity, Granularity] = {
    Commodity.ELECTRICITY: Granularity.PT15M,
    Commodity.GAS: Granularity.PT1H,
}

#: granularities of one day or longer, lawful without consent, per level
LEVEL_GRANULARITIES: dict[Level, frozenset[Granularity]] = {
    Level.NONE: frozenset(),
    Level.MONTHLY: frozenset({Granularity.P1M}),
    Level.DAILY: frozenset({Granularity.P1M, Granularity.P1D}),
}

#: granularities shorter than a day: each needs an active interval consent
INTERVAL_GRANULARITIES = frozenset(INTERVAL_GRANULARITY.values())


def parse_level(value: str) -> Level:
    """The Level named ``value``; UnknownLevelError for anything else."""
    try:
        return Level(value)
    except ValueError:
        allowed = ", ".join(level.value for level in Level)
        raise UnknownLevelError(f"unknown level {value!r}; expected one of: {allowed}") from None
