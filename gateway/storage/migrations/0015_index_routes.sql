-- 0015: the consent index's routes, materialised (issue 14, B5: a gateway process with 2 million
-- connections starts in seconds).
--
-- Every gateway process loads the routing of every meter at start
-- (gateway.ingest.consent_index). Joining all meter installations with their contracts and
-- consents and encoding the result took PostgreSQL about 2 µs a connection, half the start-up.
-- The rows that join yields are kept here instead, one per (installation, overlapping contract),
-- already in the shape the load reads: a full load then only reads this table.
--
-- `index_route_lines` is that join (the one definition); the statement triggers below refresh
-- the rows of every EAN a statement touched, in the same transaction, so the table is exactly
-- the view for every committed state. The one input that moves by itself is time: a consent
-- that is over is no longer loaded. Rows keep the consents not over when they were written; the
-- load drops those that ended since (over stays over), which gives what the view gives then.
CREATE VIEW index_route_lines AS
SELECT x.ean,
       CASE WHEN NOT x.plain THEN 'R' WHEN x.gas THEN 'G' ELSE 'E' END AS kind,
       CASE WHEN x.plain THEN x.numbers END AS numbers,
       x.meter_id,
       CASE WHEN NOT x.plain THEN x.fields END AS fields
FROM (
  SELECT i.ean, i.meter_id, i.commodity = 'gas' AS gas,
         -- "plain": one contract covering the whole installation, no interval consent, a meter
         -- id without COPY escapes (the load converts such rows a chunk at a time)
         k.contract_id IS NOT NULL AND w.spans IS NULL
           AND k.contract_start <= i.installed_from
           AND (k.contract_end IS NULL OR coalesce(k.contract_end >= i.installed_until, false))
           AND i.meter_id !~ '[[:cntrl:]\\]' AS plain,
         -- EAN number, window start and end (epoch seconds rounded up), level depth: four
         -- big-endian int8
         int8send(i.ean::bigint)
           || int8send(ceil(date_part('epoch', i.installed_from))::bigint)
           || int8send(coalesce(ceil(date_part('epoch', i.installed_until))::bigint,
                                4611686018427387904))
           || int8send(coalesce(CASE k.level WHEN 'none' THEN 0 WHEN 'monthly' THEN 1
                                             WHEN 'daily' THEN 2 END, 0)::bigint) AS numbers,
         -- any other row: its fields space-separated ('-': none), then the consent windows
         concat_ws(' ', i.ean, (i.commodity = 'gas')::int,
                   ceil(date_part('epoch', i.installed_from))::bigint,
                   coalesce(ceil(date_part('epoch', i.installed_until))::bigint::text, '-'),
                   coalesce(ceil(date_part('epoch', k.contract_start))::bigint::text, '-'),
                   coalesce(ceil(date_part('epoch', k.contract_end))::bigint::text, '-'),
                   coalesce((CASE k.level WHEN 'none' THEN 0 WHEN 'monthly' THEN 1
                                          WHEN 'daily' THEN 2 END)::text, '-'),
                   w.spans) AS fields
  FROM meter_installations i
  LEFT JOIN contracts k ON k.ean = i.ean
   AND k.contract_start < coalesce(i.installed_until, 'infinity')
   AND coalesce(k.contract_end, 'infinity') > i.installed_from
  -- per contract (an index look-up): a refresh of a few EANs reads only their consents
  LEFT JOIN LATERAL (
    SELECT string_agg(ceil(date_part('epoch', c.granted_at))::bigint || ' '
                      || coalesce(ceil(date_part('epoch', least(c.ended_at, c.expires_at)))
                                  ::bigint::text, '-'),
                      ' ') AS spans
    FROM consents c
    WHERE c.ean = k.ean AND c.contract_id = k.contract_id
      AND c.data_class = 'interval'
      AND coalesce(least(c.ended_at, c.expires_at), 'infinity') > now()
  ) w ON true
) x;

-- kind 'E' / 'G': a plain row of that commodity (numbers, meter_id); 'R': any other (meter_id,
-- fields). No key: an EAN's rows are replaced together. A partition per kind: the load reads
-- each kind by itself (the plain ones a range of pages at a time), and each read scans only
-- its own rows.
CREATE TABLE index_routes (
    ean      text NOT NULL,
    kind     text NOT NULL CHECK (kind IN ('E', 'G', 'R')),
    numbers  bytea,
    meter_id text NOT NULL,
    fields   text,
    CHECK ((kind = 'R') = (numbers IS NULL) AND (kind = 'R') = (fields IS NOT NULL))
) PARTITION BY LIST (kind);
CREATE TABLE index_routes_e PARTITION OF index_routes FOR VALUES IN ('E');
CREATE TABLE index_routes_g PARTITION OF index_routes FOR VALUES IN ('G');
CREATE TABLE index_routes_r PARTITION OF index_routes FOR VALUES IN ('R');
CREATE INDEX index_routes_ean_idx ON index_routes (ean);

-- Replace the rows of `eans` (NULL: of every EAN) with what the view says now.
--
-- Two transactions changing one EAN must not both write rows computed without the other's
-- change: each takes a transaction lock on the EAN first (a lock per EAN, in a fixed order;
-- a refresh of everything locks the table against other refreshes instead), and only then
-- reads, in later statements that see whatever committed before the lock was granted (READ
-- COMMITTED, as every writer of these tables runs).
CREATE FUNCTION meterpoort_refresh_index_routes(eans text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF eans IS NULL THEN
        LOCK TABLE index_routes IN SHARE ROW EXCLUSIVE MODE;
        DELETE FROM index_routes;
        INSERT INTO index_routes (ean, kind, numbers, meter_id, fields)
        SELECT ean, kind, numbers, meter_id, fields FROM index_route_lines;
        RETURN;
    END IF;
    LOCK TABLE index_routes IN ROW EXCLUSIVE MODE;
    -- 'mtrp' + 15: this migration's lock space
    PERFORM pg_advisory_xact_lock(1836348016 + 15, hashtext(e))
    FROM (SELECT DISTINCT unnest(eans) AS e ORDER BY 1) AS s;
    DELETE FROM index_routes WHERE ean = ANY(eans);
    INSERT INTO index_routes (ean, kind, numbers, meter_id, fields)
    SELECT ean, kind, numbers, meter_id, fields FROM index_route_lines WHERE ean = ANY(eans);
END $$;

-- The EANs a statement touched (as 0013's change log records them); above 5000 of them one
-- refresh of everything is cheaper (and takes no lock per EAN).
CREATE FUNCTION meterpoort_index_routes_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    eans text[];
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM meterpoort_refresh_index_routes(NULL);
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' THEN
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
        PERFORM meterpoort_refresh_index_routes(NULL);
    ELSE
        PERFORM meterpoort_refresh_index_routes(eans);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER meterpoort_routes_contracts_ins AFTER INSERT ON contracts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_index_routes_changed();
CREATE TRIGGER meterpoort_routes_contracts_upd AFTER UPDATE ON contracts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_index_routes_changed();
CREATE TRIGGER meterpoort_routes_contracts_del AFTER DELETE ON contracts
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_index_routes_changed();
CREATE TRIGGER meterpoort_routes_contracts_trunc AFTER TRUNCATE ON contracts
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_index_routes_changed();
CREATE TRIGGER meterpoort_routes_installations_ins AFTER INSERT ON meter_installations
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_index_routes_changed();
CREATE TRIGGER meterpoort_routes_installations_upd AFTER UPDATE ON meter_installations
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_index_routes_changed();
CREATE TRIGGER meterpoort_routes_installations_del AFTER DELETE ON meter_installations
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_index_routes_changed();
CREATE TRIGGER meterpoort_routes_installations_trunc AFTER TRUNCATE ON meter_installations
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_index_routes_changed();
CREATE TRIGGER meterpoort_routes_consents_ins AFTER INSERT ON consents
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_index_routes_changed();
CREATE TRIGGER meterpoort_routes_consents_upd AFTER UPDATE ON consents
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_index_routes_changed();
CREATE TRIGGER meterpoort_routes_consents_del AFTER DELETE ON consents
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_index_routes_changed();
CREATE TRIGGER meterpoort_routes_consents_trunc AFTER TRUNCATE ON consents
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_index_routes_changed();

SELECT meterpoort_refresh_index_routes(NULL);
