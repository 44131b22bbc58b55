-- Cache coherence across gateway processes: statement triggers NOTIFY channel
-- 'meterpoort_consent' with the EANs whose connection or consents changed, so every process's
-- in-memory consent index follows changes made by any process or tool (psql, CSV import).
-- A statement touching more than 100 EANs sends one '*' ("reload everything") instead.
-- The database still enforces the interval rule itself; this only keeps caches fresh.
CREATE OR REPLACE FUNCTION meterpoort_notify_consent() RETURNS trigger
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
        FROM (SELECT ean FROM new_rows UNION SELECT ean FROM old_rows) AS u;
    END IF;
    IF eans IS NULL THEN
        RETURN NULL;
    ELSIF cardinality(eans) > 100 THEN
        PERFORM pg_notify('meterpoort_consent', '*');
    ELSE
        PERFORM pg_notify('meterpoort_consent', e) FROM unnest(eans) AS e;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER meterpoort_notify_connections_ins AFTER INSERT ON connections
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_notify_consent();
CREATE OR REPLACE TRIGGER meterpoort_notify_connections_upd AFTER UPDATE ON connections
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_notify_consent();
CREATE OR REPLACE TRIGGER meterpoort_notify_connections_del AFTER DELETE ON connections
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_notify_consent();

CREATE OR REPLACE TRIGGER meterpoort_notify_consents_ins AFTER INSERT ON consents
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_notify_consent();
CREATE OR REPLACE TRIGGER meterpoort_notify_consents_upd AFTER UPDATE ON consents
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_notify_consent();
CREATE OR REPLACE TRIGGER meterpoort_notify_consents_del AFTER DELETE ON consents
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_notify_consent();
