-- 0012: incremental sync for billing (GET /v1/readings?changed_since=, readings.changed webhooks).
--
-- What changed since a client's last pull is decided by TRANSACTION, not by time: every reading
-- row records the (64-bit, never wrapping) id of the transaction that last stored it, and a
-- sync token carries the snapshot its pull ran in. "Changed since the token" is then "stored by
-- a transaction the token's snapshot did not see": exact whatever order transactions commit in
-- (a clock or sequence watermark misses the rows of a transaction that commits after a later
-- one). gateway.storage.readings_query explains the query, gateway.ingest.sql the upsert.
--
-- changed_xid is nullable and added without a default first: rows already stored keep NULL (no
-- table rewrite), and NULL counts as "before every token". Rows written from now on get the
-- writing transaction's id from the default; the ingest upsert sets it again when a better
-- reading replaces a period. 8 bytes per row (SPEC B6: measured with bench/storage.py).
ALTER TABLE readings_e_pt15m ADD COLUMN changed_xid bigint;
ALTER TABLE readings_e_p1d ADD COLUMN changed_xid bigint;
ALTER TABLE readings_e_p1m ADD COLUMN changed_xid bigint;
ALTER TABLE readings_g_pt1h ADD COLUMN changed_xid bigint;
ALTER TABLE readings_g_p1d ADD COLUMN changed_xid bigint;
ALTER TABLE readings_g_p1m ADD COLUMN changed_xid bigint;
ALTER TABLE readings_e_pt15m ALTER COLUMN changed_xid SET DEFAULT pg_current_xact_id()::text::bigint;
ALTER TABLE readings_e_p1d ALTER COLUMN changed_xid SET DEFAULT pg_current_xact_id()::text::bigint;
ALTER TABLE readings_e_p1m ALTER COLUMN changed_xid SET DEFAULT pg_current_xact_id()::text::bigint;
ALTER TABLE readings_g_pt1h ALTER COLUMN changed_xid SET DEFAULT pg_current_xact_id()::text::bigint;
ALTER TABLE readings_g_p1d ALTER COLUMN changed_xid SET DEFAULT pg_current_xact_id()::text::bigint;
ALTER TABLE readings_g_p1m ALTER COLUMN changed_xid SET DEFAULT pg_current_xact_id()::text::bigint;

-- Rows arrive in (roughly) transaction order, so a BRIN index on changed_xid narrows a sync
-- pull to the few pages written since the token for a few bytes per 128 pages.
CREATE INDEX readings_e_pt15m_changed_idx ON readings_e_pt15m USING brin (changed_xid);
CREATE INDEX readings_e_p1d_changed_idx ON readings_e_p1d USING brin (changed_xid);
CREATE INDEX readings_e_p1m_changed_idx ON readings_e_p1m USING brin (changed_xid);
CREATE INDEX readings_g_pt1h_changed_idx ON readings_g_pt1h USING brin (changed_xid);
CREATE INDEX readings_g_p1d_changed_idx ON readings_g_p1d USING brin (changed_xid);
CREATE INDEX readings_g_p1m_changed_idx ON readings_g_p1m USING brin (changed_xid);

-- Deleted readings, as ranges: the tombstones of the sync feed. One row per EAN, table and run
-- of consecutive deleted periods (a run breaks where a period between two deleted ones was
-- kept, so a tombstone never covers a reading that still exists). Written by the trigger below,
-- so every deletion through the reading tables is recorded, whichever service makes it.
CREATE TABLE reading_tombstones (
    ean                bigint      NOT NULL,
    tombstone_id       bigserial   NOT NULL,
    table_name         text        NOT NULL REFERENCES reading_tables (table_name),
    first_period_start timestamptz NOT NULL,
    last_period_start  timestamptz NOT NULL,
    readings           integer     NOT NULL CHECK (readings > 0),
    -- why: a consent end reason (revoked, expired, contract-ended, move-out, switch, erasure),
    -- 'level-lowered', or 'deleted' when the deleting code named none
    reason             text        NOT NULL,
    -- the ended consent's purpose: only clients with that purpose could have seen these
    -- readings (any other consent covering them kept them); NULL: every client of the
    -- granularity
    purpose            text,
    changed_xid        bigint      NOT NULL DEFAULT pg_current_xact_id()::text::bigint,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ean, tombstone_id),
    CHECK (first_period_start <= last_period_start)
);
CREATE INDEX reading_tombstones_changed_idx ON reading_tombstones USING brin (changed_xid);
CREATE INDEX reading_tombstones_created_idx ON reading_tombstones (created_at);

-- The deleting code names its reason and purpose with transaction-local settings
-- (gateway.storage.tombstones.label); the trigger consumes them (resets them to ''), so a
-- later DELETE in the same transaction that names nothing is recorded as 'deleted' for every
-- client rather than under a stale reason. Reason 'retention' records nothing: expiry by rule
-- is documented, not announced (README, billing section).
CREATE FUNCTION meterpoort_record_tombstones() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    why      text := coalesce(nullif(current_setting('meterpoort.delete_reason', true), ''), 'deleted');
    purp     text := nullif(current_setting('meterpoort.delete_purpose', true), '');
    -- the longest step between consecutive periods of this table: further apart, a period
    -- lies between them (P1D: a local day is 23 to 25 hours; P1M: a month 28 to 31 days)
    step     interval := CASE TG_ARGV[0] WHEN 'PT15M' THEN interval '15 minutes'
                                         WHEN 'PT1H' THEN interval '1 hour'
                                         WHEN 'P1D' THEN interval '25 hours'
                                         ELSE interval '31 days' END;
BEGIN
    PERFORM set_config('meterpoort.delete_reason', '', true),
            set_config('meterpoort.delete_purpose', '', true);
    IF why = 'retention' THEN
        RETURN NULL;
    END IF;
    INSERT INTO reading_tombstones (ean, table_name, first_period_start, last_period_start,
                                    readings, reason, purpose)
    SELECT ean, TG_TABLE_NAME, min(period_start), max(period_start), count(*), why, purp
    FROM (
        SELECT ean, period_start,
               count(*) FILTER (WHERE gap > step) OVER (PARTITION BY ean ORDER BY period_start) AS run
        FROM (
            SELECT ean, period_start,
                   period_start - lag(period_start) OVER (PARTITION BY ean ORDER BY period_start) AS gap
            FROM gone
        ) g
    ) r
    GROUP BY ean, run;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER meterpoort_tombstones AFTER DELETE ON readings_e_pt15m REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_record_tombstones('PT15M');
CREATE TRIGGER meterpoort_tombstones AFTER DELETE ON readings_e_p1d REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_record_tombstones('P1D');
CREATE TRIGGER meterpoort_tombstones AFTER DELETE ON readings_e_p1m REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_record_tombstones('P1M');
CREATE TRIGGER meterpoort_tombstones AFTER DELETE ON readings_g_pt1h REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_record_tombstones('PT1H');
CREATE TRIGGER meterpoort_tombstones AFTER DELETE ON readings_g_p1d REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_record_tombstones('P1D');
CREATE TRIGGER meterpoort_tombstones AFTER DELETE ON readings_g_p1m REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_record_tombstones('P1M');

-- readings.changed webhooks: one event per client and minute, about many EANs. The outbox was
-- per EAN (kind, ordering and distribution key); such an event has no single EAN, so it is
-- stored under the empty EAN '' (a CHECK ties the two together). Its deliveries are ordered
-- per client like any other event of one "EAN", which is the order a client wants them in;
-- under Citus they all live on the shard of '' (a handful of rows a minute).
ALTER TABLE outbox_events DROP CONSTRAINT outbox_events_kind_check;
ALTER TABLE outbox_events ADD CONSTRAINT outbox_events_kind_check CHECK (kind IN (
    'consent.granted', 'consent.ended', 'level.changed', 'readings.changed'));
ALTER TABLE outbox_events ADD CONSTRAINT outbox_events_ean_check
    CHECK ((kind = 'readings.changed') = (ean = ''));

-- Where the readings.changed job left off: the snapshot of its last run (changes not visible
-- in it are the next run's), and when. One row; the job locks it.
CREATE TABLE readings_changed_mark (
    id       boolean     PRIMARY KEY DEFAULT true CHECK (id),
    snapshot pg_snapshot NOT NULL,
    at       timestamptz NOT NULL
);
INSERT INTO readings_changed_mark (snapshot, at) VALUES (pg_current_snapshot(), now());
