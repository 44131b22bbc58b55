-- 0001: registry, devices, consents, levels, readings.
--
-- Citus compatibility (SPEC §7, deploy/citus.md, tests/integration/test_citus_compat.py): every
-- table but `devices` (a reference table) carries the connection key `ean`, and every primary key
-- and unique constraint of such a table includes it. Rules that would need a unique index without
-- the EAN (a meter id is used by one active connection per commodity) are enforced by the registry
-- code under an advisory lock instead.
--
-- EAN: text (18 digits) in registry/consent tables, bigint in reading tables (an 18-digit number
-- fits int8; 8 bytes instead of 19 keep an interval reading ≤ 120 bytes incl. its index, B6).

CREATE TABLE connections (
    ean            text        PRIMARY KEY CHECK (ean ~ '^[0-9]{18}$'),
    -- the reading tables' key; unique because `ean` is (no separate unique constraint: Citus)
    ean_num        bigint      GENERATED ALWAYS AS (ean::bigint) STORED NOT NULL,
    commodity      text        NOT NULL CHECK (commodity IN ('electricity', 'gas')),
    meter_id       text        NOT NULL CHECK (meter_id <> ''),
    customer_id    text        NOT NULL CHECK (customer_id <> ''),
    contract_start timestamptz NOT NULL,
    contract_end   timestamptz,
    end_reason     text        CHECK (end_reason IN ('contract-ended', 'move-out')),
    level          text        NOT NULL DEFAULT 'daily' CHECK (level IN ('none', 'monthly', 'daily')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (contract_end IS NULL OR contract_end > contract_start),
    CHECK (end_reason IS NULL OR contract_end IS NOT NULL)
);
CREATE INDEX connections_meter_id_idx ON connections (meter_id, commodity);
CREATE INDEX connections_customer_id_idx ON connections (customer_id);
CREATE INDEX connections_ean_num_idx ON connections (ean_num);

-- Level changes over time (the current level is connections.level); append-only.
CREATE TABLE level_events (
    ean      text        NOT NULL,
    event_id uuid        NOT NULL DEFAULT gen_random_uuid(),
    level    text        NOT NULL CHECK (level IN ('none', 'monthly', 'daily')),
    at       timestamptz NOT NULL DEFAULT now(),
    channel  text,
    PRIMARY KEY (ean, event_id)
);

-- Field devices; a Citus reference table (small, read by every worker).
CREATE TABLE devices (
    device_id  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash bytea       NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    meter_ids  text[]      NOT NULL CHECK (cardinality(meter_ids) >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE TABLE consents (
    ean            text        NOT NULL,
    consent_id     uuid        NOT NULL,
    customer_id    text        NOT NULL,
    purpose        text        NOT NULL,
    data_class     text        NOT NULL DEFAULT 'interval',
    notice_version text        NOT NULL,
    channel        text        NOT NULL,
    granted_at     timestamptz NOT NULL,
    expires_at     timestamptz,
    ended_at       timestamptz,
    end_reason     text        CHECK (end_reason IN
                       ('revoked', 'expired', 'contract-ended', 'move-out', 'erasure')),
    PRIMARY KEY (ean, consent_id),
    CHECK ((ended_at IS NULL) = (end_reason IS NULL)),
    CHECK (expires_at IS NULL OR expires_at > granted_at)
);
CREATE INDEX consents_customer_id_idx ON consents (customer_id);
CREATE INDEX consents_consent_id_idx ON consents (consent_id);

-- Grant/revoke/expire/end history; never updated or deleted by the application.
CREATE TABLE consent_events (
    ean        text        NOT NULL,
    event_id   uuid        NOT NULL DEFAULT gen_random_uuid(),
    consent_id uuid        NOT NULL,
    kind       text        NOT NULL,
    at         timestamptz NOT NULL,
    detail     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (ean, event_id)
);
CREATE INDEX consent_events_consent_id_idx ON consent_events (consent_id, at);

-- Readings: one table per commodity and granularity (no granularity column to store), keyed by
-- (ean, period_start), RANGE-partitioned on period_start so retention drops whole partitions.
-- Register columns are nullable: totals-only meters have no T1/T2 split.
CREATE TABLE readings_e_pt15m (
    ean          bigint      NOT NULL,
    period_start timestamptz NOT NULL,
    measured_at  timestamptz NOT NULL,
    import_t1_wh bigint,
    import_t2_wh bigint,
    export_t1_wh bigint,
    export_t2_wh bigint,
    PRIMARY KEY (ean, period_start)
) PARTITION BY RANGE (period_start);
CREATE TABLE readings_e_p1d (LIKE readings_e_pt15m INCLUDING ALL) PARTITION BY RANGE (period_start);
CREATE TABLE readings_e_p1m (LIKE readings_e_pt15m INCLUDING ALL) PARTITION BY RANGE (period_start);

CREATE TABLE readings_g_pt1h (
    ean          bigint      NOT NULL,
    period_start timestamptz NOT NULL,
    measured_at  timestamptz NOT NULL,
    volume_dm3   bigint      NOT NULL,
    PRIMARY KEY (ean, period_start)
) PARTITION BY RANGE (period_start);
CREATE TABLE readings_g_p1d (LIKE readings_g_pt1h INCLUDING ALL) PARTITION BY RANGE (period_start);
CREATE TABLE readings_g_p1m (LIKE readings_g_pt1h INCLUDING ALL) PARTITION BY RANGE (period_start);

-- A DEFAULT partition per table catches readings outside the created ranges (imports, clocks
-- far off); meterpoort_ensure_partitions moves such rows out when it creates their partition.
CREATE TABLE readings_e_pt15m_default PARTITION OF readings_e_pt15m DEFAULT;
CREATE TABLE readings_e_p1d_default PARTITION OF readings_e_p1d DEFAULT;
CREATE TABLE readings_e_p1m_default PARTITION OF readings_e_p1m DEFAULT;
CREATE TABLE readings_g_pt1h_default PARTITION OF readings_g_pt1h DEFAULT;
CREATE TABLE readings_g_p1d_default PARTITION OF readings_g_p1d DEFAULT;
CREATE TABLE readings_g_p1m_default PARTITION OF readings_g_p1m DEFAULT;

-- Which partition step each reading table uses: interval tables by UTC month (retention of
-- interval data is 4 years, dropped month by month), daily/monthly tables by UTC year.
CREATE TABLE reading_tables (
    table_name text PRIMARY KEY,
    commodity  text NOT NULL CHECK (commodity IN ('electricity', 'gas')),
    granularity text NOT NULL CHECK (granularity IN ('PT15M', 'PT1H', 'P1D', 'P1M')),
    step       text NOT NULL CHECK (step IN ('month', 'year')),
    UNIQUE (commodity, granularity)
);
INSERT INTO reading_tables VALUES
    ('readings_e_pt15m', 'electricity', 'PT15M', 'month'),
    ('readings_e_p1d',   'electricity', 'P1D',   'year'),
    ('readings_e_p1m',   'electricity', 'P1M',   'year'),
    ('readings_g_pt1h',  'gas',         'PT1H',  'month'),
    ('readings_g_p1d',   'gas',         'P1D',   'year'),
    ('readings_g_p1m',   'gas',         'P1M',   'year');

-- Create the partitions covering [p_from, p_to) of every reading table; returns how many were
-- created. Safe to call concurrently (transaction-level advisory lock) and repeatedly.
CREATE FUNCTION meterpoort_ensure_partitions(p_from timestamptz, p_to timestamptz)
RETURNS integer LANGUAGE plpgsql AS $fn$
DECLARE
    spec    record;
    lo      timestamptz;
    hi      timestamptz;
    part    text;
    created integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('meterpoort_ensure_partitions'));
    FOR spec IN SELECT table_name, step FROM reading_tables ORDER BY table_name LOOP
        lo := date_trunc(spec.step, p_from AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
        WHILE lo < p_to LOOP
            hi := (date_trunc(spec.step, lo AT TIME ZONE 'UTC') + ('1 ' || spec.step)::interval)
                  AT TIME ZONE 'UTC';
            part := spec.table_name || '_' || to_char(lo AT TIME ZONE 'UTC',
                        CASE spec.step WHEN 'month' THEN '"y"YYYY"m"MM' ELSE '"y"YYYY' END);
            IF to_regclass(quote_ident(part)) IS NULL THEN
                EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                               part, spec.table_name);
                -- rows that landed in the default partition for this range move first, or the
                -- ATTACH below would fail its check of the default partition
                EXECUTE format('WITH moved AS (DELETE FROM %I WHERE period_start >= $1 '
                               'AND period_start < $2 RETURNING *) INSERT INTO %I SELECT * FROM moved',
                               spec.table_name || '_default', part) USING lo, hi;
                EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                               spec.table_name, part, lo, hi);
                created := created + 1;
            END IF;
            lo := hi;
        END LOOP;
    END LOOP;
    RETURN created;
END
$fn$;
