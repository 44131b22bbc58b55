-- 0014: smaller interval readings (SPEC §6 B6: ≤ 120 bytes per stored interval reading, table
-- plus indexes), in two steps.
--
-- 1. The electricity registers become int4. DSMR's energy registers are F9(3,3) kWh: at most
--    999,999.999 kWh = 999,999,999 Wh, well inside int4 (2,147,483,647). An electricity row
--    then takes 16 bytes less heap: 72 bytes of tuple instead of 88 (ean, period_start,
--    measured_at 8 each, four registers 4 each, changed_xid 8: no padding, as changed_xid
--    starts at a multiple of 8). Ingest refuses a telegram with a larger register with a reason
--    of its own (gateway.ingest.pipeline, schema.REGISTER_MAX), so no write batch fails on one.
--    ALTER COLUMN TYPE on a partitioned table changes every partition (DEFAULT included) and
--    rewrites each one with fresh indexes; partitions created later copy the parent's columns
--    (meterpoort_ensure_partitions: LIKE parent), so they are int4 too.
--    Gas keeps bigint: its row is ean, period_start, measured_at, volume_dm3, changed_xid, and
--    an int4 volume would be followed by 4 bytes of padding before changed_xid (8-byte
--    aligned), so the tuple stays 64 bytes: a rewrite of every gas table for nothing. Ingest
--    holds gas volumes to the same maximum (DSMR F8(3,3) m³ tops at 99,999,999 dm³).
--    Fails as a whole ("integer out of range", nothing changed) when a stored register is above
--    the int4 range; docs/operations.md shows how to find such rows.
--
-- 2. Closed interval partitions get their indexes rebuilt once. Live ingest inserts quarter
--    after quarter across all EANs into a primary key ordered by (ean, period_start): each
--    insert lands inside the key range, so leaf pages split and stay about half full (45 bytes
--    of index per reading against 32 rebuilt, bench/storage.py). A partition whose periods all
--    lie beyond the spool horizon can receive no more readings, so the retention job rebuilds
--    its indexes (REINDEX TABLE CONCURRENTLY, gateway.jobs.compaction) and records it here, so
--    each partition is rebuilt once. Coordinator-local on Citus (deploy/citus.md).
ALTER TABLE readings_e_pt15m
    ALTER COLUMN import_t1_wh TYPE integer,
    ALTER COLUMN import_t2_wh TYPE integer,
    ALTER COLUMN export_t1_wh TYPE integer,
    ALTER COLUMN export_t2_wh TYPE integer;
ALTER TABLE readings_e_p1d
    ALTER COLUMN import_t1_wh TYPE integer,
    ALTER COLUMN import_t2_wh TYPE integer,
    ALTER COLUMN export_t1_wh TYPE integer,
    ALTER COLUMN export_t2_wh TYPE integer;
ALTER TABLE readings_e_p1m
    ALTER COLUMN import_t1_wh TYPE integer,
    ALTER COLUMN import_t2_wh TYPE integer,
    ALTER COLUMN export_t1_wh TYPE integer,
    ALTER COLUMN export_t2_wh TYPE integer;

CREATE TABLE reading_compactions (
    -- the partition as regclass text (what the retention report names); its row goes when
    -- retention drops the partition
    partition    text        PRIMARY KEY,
    table_name   text        NOT NULL REFERENCES reading_tables (table_name),
    compacted_at timestamptz NOT NULL DEFAULT now(),
    -- pg_indexes_size of the partition before and after the rebuild
    index_bytes_before bigint NOT NULL,
    index_bytes_after  bigint NOT NULL
);
