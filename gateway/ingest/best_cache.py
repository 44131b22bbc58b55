"""The newest committed period per EAN and table: which readings cannot improve what is stored.

The pipeline asks it before doing any period arithmetic; the writer tells it what committed.
"""

from __future__ import annotations

from typing import Final

from gateway.ingest.periods import AMSTERDAM, Bucketer
from gateway.ingest.sql import E_P1D, E_PT15M, G_P1D, G_PT1H

#: the EANs one process remembers at most (``BestCache(max_entries)``'s default)
MAX_ENTRIES: Final = 400_000
_EMPTY_SLOTS: Final = (0,) * 9
_DAY_TABLES: Final = frozenset((E_P1D, G_P1D))


class BestCache:
    """Per EAN, the newest period of each of its three tables with a committed measured time.

    An entry is a tuple ``(i_start, i_end, i_best, d_start, d_end, d_best, m_start, m_end,
    m_best)`` for the interval (``PT15M``/``PT1H``), ``P1D`` and ``P1M`` tables of the EAN's
    commodity (an EAN has one commodity, so three slots suffice); an empty slot is all zeros.
    ``best`` is a measured time (epoch s) a committed transaction offered to the database,
    which keeps the earliest, so the stored reading is at or before it: a reading with
    ``best <= ts < end`` cannot improve that period and is skipped without a query — with one
    dict look-up and no period arithmetic, the common case (90 telegrams per quarter hour, one
    improves). Only the newest period per slot is kept: a late reading of an older period is a
    miss, i.e. simply offered to the database again, which decides.

    Bounded: two generations of at most ``max_entries // 2`` EANs; the older one is dropped
    whole. The times an entry holds are shared objects (``_shared``): every EAN of a period has
    the same bounds, and thousands of meters send in the same second, so an entry is its key,
    its tuple and its dict slot: 239 bytes instead of 383 with nine integers of its own (at the
    400 000 bound, 91 MiB instead of 146 per process; bench/registry.py prints it).

    An entry is only as good as the registry it was made under. A change of an EAN's contracts,
    meters, level or consents can delete stored rows (a move-out deletes what was measured after
    it) and makes the database refuse rows the stale routing offered; an entry left from before
    would then skip the next tenant's first reading of a period for good (its device was told
    "accepted"). So whoever reloads an EAN's routing ``forget``s it (``forget_all`` after a full
    reload), and a write records its rows only when nothing it could have been routed by was
    forgotten since it was queued: ``mark()`` when queuing, ``lower(…, since=mark)`` after the
    commit. Rows deleted otherwise (erasure, retention) can still leave an entry behind; it can
    then only make the gateway store *less* for that period, never more.
    """

    __slots__ = (
        "_bucketer",
        "_cleared",
        "_cur",
        "_epoch",
        "_forgotten",
        "_half",
        "_old",
        "_shared",
    )

    #: EANs remembered as forgotten before the record falls back to "everything forgotten"
    FORGOTTEN_LIMIT: Final = 10_000
    #: distinct times kept for sharing before the record starts afresh (a quarter hour's
    #: seconds and bounds are about a thousand)
    SHARED_LIMIT: Final = 100_000

    def __init__(self, max_entries: int = MAX_ENTRIES, bucketer: Bucketer | None = None) -> None:
        self._half = max(1, max_entries // 2)
        self._bucketer = bucketer or Bucketer(AMSTERDAM)
        self._cur: dict[int, tuple[int, ...]] = {}
        self._old: dict[int, tuple[int, ...]] = {}
        # forget bookkeeping: a counter, the count when each EAN was last forgotten, and the
        # count of the last forget_all
        self._epoch = 0
        self._forgotten: dict[int, int] = {}
        self._cleared = 0
        # one int object per distinct time: what entries refer to instead of copies
        self._shared: dict[int, int] = {}

    def mark(self) -> int:
        """A marker of "now" for ``lower(…, since=…)``: taken when rows are routed."""
        return self._epoch

    def forget(self, ean: int) -> None:
        """Drop the EAN's entry; rows routed before this are not recorded when they commit."""
        self._epoch += 1
        self._cur.pop(ean, None)
        self._old.pop(ean, None)
        if len(self._forgotten) >= self.FORGOTTEN_LIMIT:
            self._forgotten.clear()
            self._cleared = self._epoch
        self._forgotten[ean] = self._epoch

    def forget_all(self) -> None:
        """Drop every entry (after a full reload of the routing)."""
        self._epoch += 1
        self.clear()
        self._forgotten.clear()
        self._cleared = self._epoch

    def entry(self, ean: int) -> tuple[int, ...] | None:
        """The EAN's slots (see the class docstring), or None."""
        value = self._cur.get(ean)
        if value is None:
            value = self._old.get(ean)
            if value is not None:
                self._put(ean, value)
        return value

    def get(self, key: tuple[int, int, int]) -> int | None:
        """The cached measured time for ``(ean, table, period_start)``, or None."""
        ean, table, start = key
        value = self.entry(ean)
        if value is None:
            return None
        slot = 3 * (table % 3)
        if value[slot] != start or value[slot + 1] == 0:
            return None
        return value[slot + 2]

    def lower(self, key: tuple[int, int, int], measured_at: int, since: int | None = None) -> None:
        """Record that ``measured_at`` was committed for ``(ean, table, period_start)`` (keeps
        the minimum; a period older than the slot's is not recorded). ``since``: the ``mark()``
        taken when the row was routed; nothing is recorded if the EAN was forgotten after it."""
        ean, table, start = key
        if since is not None and (self._cleared > since or self._forgotten.get(ean, -1) > since):
            return
        value = self.entry(ean) or _EMPTY_SLOTS
        slot = 3 * (table % 3)
        if value[slot + 1] and value[slot] == start:
            if measured_at >= value[slot + 2]:
                return
            start, end = value[slot], value[slot + 1]
        elif value[slot + 1] and start < value[slot]:
            return
        else:
            end = self._end(table, start)
            start, end = self._share(start), self._share(end)
        updated = list(value)
        updated[slot : slot + 3] = (start, end, self._share(measured_at))
        self._put(ean, tuple(updated))

    def _share(self, t: int) -> int:
        """The one object this cache holds for the time ``t``."""
        shared = self._shared
        if len(shared) >= self.SHARED_LIMIT:
            shared.clear()  # entries keep their objects; new ones share from here on
        return shared.setdefault(t, t)

    def _end(self, table: int, start: int) -> int:
        if table == E_PT15M:
            return start + 900
        if table == G_PT1H:
            return start + 3600
        bounds = self._bucketer.bounds(start)
        return bounds[1] if table in _DAY_TABLES else bounds[3]

    def _put(self, ean: int, value: tuple[int, ...]) -> None:
        if len(self._cur) >= self._half and ean not in self._cur:
            self._old, self._cur = self._cur, {}
        self._cur[ean] = value

    def clear(self) -> None:
        self._cur.clear()
        self._old.clear()

    def __len__(self) -> int:
        return len(self._cur) + len(self._old)
