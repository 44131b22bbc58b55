-- 0009: the oldest audit rows may be removed once their retention has passed (SPEC §2: the audit
-- trail is kept as long as the data it justifies plus 1 year) without `audit verify` losing its
-- footing. gateway.audit.prune first APPENDS an `audit.prune` row announcing the removal
-- (detail: through_seq, and through_hash = the hash of row through_seq), then deletes rows up to
-- through_seq, oldest first. `audit verify` starts from that announcement: the first remaining
-- row must link to through_hash. A removal nobody announced is still a missing row.
--
-- The append-only trigger now lets a DELETE through for exactly those rows: ones an audit.prune
-- row LATER in the chain covers. Updates and TRUNCATE stay refused.

CREATE INDEX audit_log_prune_idx ON audit_log (((detail ->> 'through_seq')::bigint))
    WHERE kind = 'audit.prune';

CREATE OR REPLACE FUNCTION meterpoort_audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF EXISTS (
            SELECT 1 FROM audit_log p
            WHERE p.kind = 'audit.prune' AND p.seq > OLD.seq
              AND (p.detail ->> 'through_seq')::bigint >= OLD.seq
        ) THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit rows are removed only by `audit prune`, after an audit.prune row'
                     ' announces it; `audit verify` checks the chain';
END
$fn$;
