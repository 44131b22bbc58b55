-- 0013: the consent index catches up from a change log instead of reloading everything
-- (issue 14). Every gateway process holds the routing of every meter in memory
-- (gateway.ingest.consent_index); a NOTIFY tells it which EANs changed, but notifications sent
-- while its LISTEN connection was down are lost. Instead of a periodic full reload (seconds of
-- CPU per process with millions of connections), a process asks this log "which EANs changed
-- since the snapshot my index is current to" on a timer and after a lost LISTEN.
--
-- Changes are told apart by TRANSACTION, as in 0012: each row records the id of the transaction
-- that wrote it, and "changed since" means "written by a transaction the process's snapshot did
-- not see" (changed_xid >= the snapshot's xmin for the index, then pg_visible_in_snapshot). A
-- sequence or clock watermark would skip a change whose transaction commits after a later one.
--
-- ean '' records that a device changed (credential caches forget their devices); '*' that one
-- statement touched so many EANs that reloading everything is cheaper than a row per EAN.
CREATE TABLE index_changes (
    ean         text        NOT NULL,
    changed_xid bigint      NOT NULL DEFAULT pg_current_xact_id()::text::bigint,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX index_changes_changed_idx ON index_changes (changed_xid);
CREATE INDEX index_changes_at_idx ON index_changes (at);

-- The log is pruned by age (gateway.ingest.consent_index.prune_change_log); every row written
-- by a transaction below `pruned_below` may be gone. A process whose snapshot's xmin is below it
-- may have missed a pruned change, so it reloads everything (the only full reload after start).
CREATE TABLE index_changes_mark (
    id           boolean PRIMARY KEY DEFAULT true CHECK (id),
    pruned_below bigint  NOT NULL
);
INSERT INTO index_changes_mark (pruned_below) VALUES (0);

-- What feeds the index: connections, contracts (level included), meter installations and
-- consents. Statement triggers, like the NOTIFY ones of 0002/0011 (which stay: they are the fast
-- path; this log is what makes a missed notification harmless).
CREATE FUNCTION meterpoort_log_index_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    eans text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT ean) INTO eans FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(DISTINCT ean) INTO eans FROM old_rows;
    ELSE
        SELECT array_agg(DISTINCT ean) INTO eans
        FROM (SELECT ean FROM new_rows UNION ALL SELECT ean FROM old_rows) AS u;
    END IF;
    IF eans IS NULL THEN
        RETURN NULL;
    ELSIF cardinality(eans) > 5000 THEN
        INSERT INTO index_changes (ean) VALUES ('*');
    ELSE
        INSERT INTO index_changes (ean) SELECT unnest(eans);
    END IF;
    RETURN NULL;
END $$;

-- A device's meter ids decide which telegrams it may push: a change is logged for every EAN any
-- of its old or new meters was ever installed on (an index may keep only meters some device can
-- push for), and as '' for the credential caches.
CREATE FUNCTION meterpoort_log_device_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ids text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(m) INTO ids FROM new_rows, unnest(meter_ids) AS m;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(m) INTO ids FROM old_rows, unnest(meter_ids) AS m;
    ELSE
        SELECT array_agg(m) INTO ids
        FROM (SELECT meter_ids FROM new_rows UNION ALL SELECT meter_ids FROM old_rows) AS u,
             unnest(u.meter_ids) AS m;
    END IF;
    IF ids IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO index_changes (ean)
    SELECT '' UNION SELECT DISTINCT i.ean FROM meter_installations i WHERE i.meter_id = ANY(ids);
    RETURN NULL;
END $$;

CREATE TRIGGER meterpoort_log_connections_ins AFTER INSERT ON connections
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_log_index_change();
CREATE TRIGGER meterpoort_log_connections_upd AFTER UPDATE ON connections
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_log_index_change();
CREATE TRIGGER meterpoort_log_connections_del AFTER DELETE ON connections
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_log_index_change();
CREATE TRIGGER meterpoort_log_contracts_ins AFTER INSERT ON contracts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_log_index_change();
CREATE TRIGGER meterpoort_log_contracts_upd AFTER UPDATE ON contracts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_log_index_change();
CREATE TRIGGER meterpoort_log_contracts_del AFTER DELETE ON contracts
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_log_index_change();
CREATE TRIGGER meterpoort_log_installations_ins AFTER INSERT ON meter_installations
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_log_index_change();
CREATE TRIGGER meterpoort_log_installations_upd AFTER UPDATE ON meter_installations
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_log_index_change();
CREATE TRIGGER meterpoort_log_installations_del AFTER DELETE ON meter_installations
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_log_index_change();
CREATE TRIGGER meterpoort_log_consents_ins AFTER INSERT ON consents
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_log_index_change();
CREATE TRIGGER meterpoort_log_consents_upd AFTER UPDATE ON consents
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_log_index_change();
CREATE TRIGGER meterpoort_log_consents_del AFTER DELETE ON consents
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_log_index_change();
CREATE TRIGGER meterpoort_log_devices_ins AFTER INSERT ON devices
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_log_device_change();
CREATE TRIGGER meterpoort_log_devices_upd AFTER UPDATE ON devices
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_log_device_change();
CREATE TRIGGER meterpoort_log_devices_del AFTER DELETE ON devices
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_log_device_change();
