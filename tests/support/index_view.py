"""What a ConsentIndex answers, as plain data: compares two indexes through their public query
methods only (their internal layout is free to change)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from consent.levels import Commodity, Granularity
from gateway.ingest.consent_index import ConsentIndex

#: (meter id, commodity, probe time) → (EAN, under a contract, the route's window, what may be
#: stored) or None. The index knows whether a contract was in force, not which one: the ingest
#: statement finds that in the database.
IndexView = dict[
    tuple[str, Commodity, dt.datetime],
    tuple[str, bool, tuple[int, int], frozenset[Granularity]] | None,
]


def index_view(
    index: ConsentIndex, meters: Iterable[str], times: Iterable[dt.datetime], now: dt.datetime
) -> IndexView:
    """For every meter of both commodities and every probe time: where a reading measured then
    goes and what of it may be stored when processed at ``now``."""
    view: IndexView = {}
    probes = list(times)
    for meter in meters:
        for commodity in Commodity:
            for t in probes:
                route = index.route(meter, commodity, t)
                view[meter, commodity, t] = (
                    None
                    if route is None
                    else (
                        route.ean,
                        route.under_contract,
                        (route.lo_s, route.hi_s),
                        index.granularities(meter, commodity, t, now),
                    )
                )
    return view


def differences(a: IndexView, b: IndexView) -> list[str]:
    """The probes on which two views disagree, readable."""
    return [
        f"{meter} {commodity.value} at {t.isoformat()}: {a.get(key)} != {b.get(key)}"
        for key in sorted(a.keys() | b.keys(), key=lambda k: (k[0], k[1].value, k[2]))
        for meter, commodity, t in [key]
        if a.get(key) != b.get(key)
    ]
