-- 0003: the audit trail (SPEC §2 "an activity log of every access to personal data,
-- tamper-evident"; §6 "altering or deleting any row is detected by `audit verify`").
--
-- One append-only table with a hash chain over every row (gateway/audit.py):
--     hash = SHA-256(prev_hash || canonical JSON of {seq, at, kind, actor, subject, ean, detail})
-- The first row's prev_hash is 32 zero bytes. `seq` is gapless: appends are serialised by a
-- transaction-level advisory lock (meterpoort_audit_append() below) and take last seq + 1, so a
-- gap in `seq` means a deleted row (a sequence object would leave gaps on every rollback).
--
-- Append-only: UPDATE/DELETE/TRUNCATE are revoked from PUBLIC, and triggers raise on them —
-- in the embedded setup the application role owns the table, and an owner keeps its privileges,
-- so the triggers are what actually block. A superuser (or the owner) can still disable the
-- triggers or drop the table; `python -m gateway audit verify` detects altered rows and missing
-- rows in the middle; a truncated tail is only detectable against a head hash recorded elsewhere
-- (`audit verify --expect-head HASH`).
--
-- Citus (SPEC §7, deploy/citus.md): the chain is GLOBAL — one linear sequence across all
-- connections — so `audit_log` is NOT distributed on `ean` (its primary key `seq` lacks the EAN,
-- on purpose). It stays a local table on the coordinator, like schema_migrations (optionally added
-- to the Citus metadata with citus_add_local_table_to_metadata('audit_log') so it can be joined);
-- the advisory lock serialising appends is taken on the coordinator, to which the gateway
-- connects. (A reference table would also keep one chain, but every append would then be a
-- two-phase write to every node.) `ean` and `subject` are plain columns for the customer's
-- access log and for investigations, not a distribution key.

CREATE TABLE audit_log (
    seq       bigint      PRIMARY KEY CHECK (seq >= 1),
    -- clock_timestamp() taken under the append lock, so `at` follows `seq`
    at        timestamptz NOT NULL,
    -- what happened: consent.grant, level.change, registry.change, token.create, data.read, …
    kind      text        NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_.-]*$'),
    -- who did it: "admin", "device:<uuid>", "client:<uuid>", "customer:<id>", "system:<job>"
    actor     text        NOT NULL CHECK (actor <> ''),
    -- whose personal data it concerns (customer id), if anyone's
    subject   text,
    ean       text,
    -- what exactly (ids, periods, counts); never readings values or raw telegrams
    detail    jsonb       NOT NULL,
    prev_hash bytea       NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash      bytea       NOT NULL CHECK (octet_length(hash) = 32)
);
-- the customer's data access log and investigations read by subject / EAN, newest first
CREATE INDEX audit_log_subject_idx ON audit_log (subject, seq) WHERE subject IS NOT NULL;
CREATE INDEX audit_log_ean_idx ON audit_log (ean, seq) WHERE ean IS NOT NULL;

REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;

CREATE FUNCTION meterpoort_audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit rows are never changed or removed; `audit verify` checks the chain';
END
$fn$;

CREATE TRIGGER audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION meterpoort_audit_refuse_change();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_audit_refuse_change();

-- Append one row (gateway/audit.py `append` is the only caller): take the append lock, read the
-- head, hash and insert, in ONE round trip — the lock is held until the caller's transaction
-- ends, so every round trip made under it limits the audited transactions per second.
-- The caller passes the row's canonical JSON in three pieces around the two values only known
-- here (the timestamp and seq): content = part_a || at || part_b || seq || part_c, e.g.
--   {"actor":"admin","at":"  2026-01-01T00:00:00.000000Z  ","detail":{},"ean":null,
--   "kind":"token.create","seq":  17  ,"subject":null}
-- VOLATILE plpgsql: under READ COMMITTED the SELECT after the lock gets a fresh snapshot, so it
-- sees the head committed by the previous lock holder.
CREATE FUNCTION meterpoort_audit_append(
    p_lock_key bigint, p_kind text, p_actor text, p_subject text, p_ean text, p_detail jsonb,
    p_part_a bytea, p_part_b bytea, p_part_c bytea)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_seq  bigint;
    v_prev bytea;
    v_at   timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock_key);
    SELECT a.seq, a.hash INTO v_seq, v_prev FROM audit_log a ORDER BY a.seq DESC LIMIT 1;
    IF v_seq IS NULL THEN
        v_seq := 0;
        v_prev := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
    END IF;
    v_seq := v_seq + 1;
    -- taken under the lock, so `at` never goes backwards along the chain (barring clock steps)
    v_at := clock_timestamp();
    INSERT INTO audit_log (seq, at, kind, actor, subject, ean, detail, prev_hash, hash)
    VALUES (v_seq, v_at, p_kind, p_actor, p_subject, p_ean, p_detail, v_prev,
            sha256(v_prev || p_part_a
                   || convert_to(to_char(v_at AT TIME ZONE 'UTC',
                                         'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), 'UTF8')
                   || p_part_b || convert_to(v_seq::text, 'UTF8') || p_part_c));
    RETURN v_seq;
END
$fn$;
