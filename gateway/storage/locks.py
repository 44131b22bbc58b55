"""Every PostgreSQL advisory lock key of the gateway, in one table so that no two clash.

Keys are 64-bit: ``'mtrp'`` (0x6D747270) in the high half, a number per lock in the low half.
Two uses sharing a key would make one skip or wait for the other for no reason (the webhook
expiry sweep once shared the retention job's key, so both retention runs of a start-up could
skip for an hour).
"""

from __future__ import annotations

from typing import Final

_BASE: Final = 0x6D747270_00000000

#: migrations: one process migrates, the others wait
MIGRATION: Final = _BASE + 1
#: registry writes (transaction lock)
REGISTRY: Final = _BASE + 2
#: the audit chain's head (transaction lock)
AUDIT: Final = _BASE + 3
#: the retention job: one process works at a time (session lock)
RETENTION: Final = _BASE + 7
#: the webhook worker's sweep announcing expired consents (one process at a time)
EXPIRY_SWEEP: Final = _BASE + 8
#: the readings.changed job: one process looks for changes at a time (transaction lock)
READINGS_CHANGED: Final = _BASE + 9
#: outbox events of one EAN in commit order: the first of a two-int key (the second is
#: hashtext(ean)), a key space apart from the bigint keys above
OUTBOX_ORDER: Final = 0x6D747270

ALL: Final = {
    "migration": MIGRATION,
    "registry": REGISTRY,
    "audit": AUDIT,
    "retention": RETENTION,
    "expiry_sweep": EXPIRY_SWEEP,
    "readings_changed": READINGS_CHANGED,
    "outbox_order": OUTBOX_ORDER,
}
