"""The consent domain: levels, consents, purposes and the storage policy (standard library only).

Public names are re-exported here; see ``consent.policy`` for the rule itself.
"""

from consent.errors import (
    ConsentEndedError,
    ConsentError,
    ConsentLifetimeError,
    InvalidConsentError,
    UnknownLevelError,
    UnknownPurposeError,
)
from consent.levels import (
    DEFAULT_LEVEL,
    INTERVAL_GRANULARITIES,
    INTERVAL_GRANULARITY,
    LEVEL_GRANULARITIES,
    Commodity,
    Granularity,
    Level,
    parse_level,
)
from consent.model import (
    DATA_CLASS_INTERVAL,
    DEFAULT_MAX_LIFETIME,
    DEFAULT_PURPOSES,
    Channel,
    Consent,
    EndReason,
    OnRevoke,
    Purpose,
    new_consent,
    purpose_named,
)
from consent.policy import (
    CompiledPolicy,
    ConnectionState,
    compile_policies,
    interval_consent_active,
    storable_granularities,
)

__all__ = [
    "DATA_CLASS_INTERVAL",
    "DEFAULT_LEVEL",
    "DEFAULT_MAX_LIFETIME",
    "DEFAULT_PURPOSES",
    "INTERVAL_GRANULARITIES",
    "INTERVAL_GRANULARITY",
    "LEVEL_GRANULARITIES",
    "Channel",
    "Commodity",
    "CompiledPolicy",
    "ConnectionState",
    "Consent",
    "ConsentEndedError",
    "ConsentError",
    "ConsentLifetimeError",
    "EndReason",
    "Granularity",
    "InvalidConsentError",
    "Level",
    "OnRevoke",
    "Purpose",
    "UnknownLevelError",
    "UnknownPurposeError",
    "compile_policies",
    "interval_consent_active",
    "new_consent",
    "parse_level",
    "purpose_named",
    "storable_granularities",
]
