-- 0006: data clients (the supplier's billing system and other recipients) and what the
-- reconciliation API needs from consent events.
--
-- Citus (SPEC §7, deploy/citus.md): `clients` has no EAN; it is small and read on every client
-- request, so it is a reference table like `devices` (tests/integration/test_citus_compat.py
-- REFERENCE_TABLES).

CREATE TABLE clients (
    client_id     uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name          text        NOT NULL CHECK (name <> ''),
    -- SHA-256 of the bearer token (gateway.auth.hash_token); the token is shown once
    token_hash    bytea       NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    -- what the client may read: granularities (ISO 8601) and consent purposes
    granularities text[]      NOT NULL CHECK (cardinality(granularities) >= 1
                                  AND granularities <@ ARRAY['P1M', 'P1D', 'PT1H', 'PT15M']),
    purposes      text[]      NOT NULL DEFAULT '{}',
    webhook_url   text        CHECK (webhook_url ~ '^https?://'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    rotated_at    timestamptz,
    revoked_at    timestamptz
);

-- GET /v1/consents?changed_since= must find changes by the time they were RECORDED: an end can
-- be back-dated (`at` in the past), and a client that polled since would never see it by `at`.
-- Existing rows get the migration's time (they are "new" to every client once).
ALTER TABLE consent_events ADD COLUMN recorded_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX consent_events_recorded_at_idx ON consent_events (recorded_at);
-- expiries are not events: the reconciliation API derives them from consents.expires_at
CREATE INDEX consents_expires_at_idx ON consents (expires_at) WHERE expires_at IS NOT NULL;
