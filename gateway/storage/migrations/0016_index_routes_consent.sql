-- 0016: connections with interval consent load in bulk too (issue 14, B5 with consents).
--
-- Migration 0015 keeps the consent index's rows in the shape the load reads, but only "plain"
-- rows (one contract covering the installation, no consent) came as numbers converted a batch
-- at a time; every row with an interval consent was text parsed row by row in Python, its
-- windows a tuple of tuples per route. With 30 % of connections consenting (as in B2), that was
-- 14 µs and some 200 bytes per consenting connection: 2 million connections would start in
-- about 10 s at some 500 MiB (bench/registry.py --consent-fraction 0.3).
--
-- The common consenting row is as regular as a plain one: one daily contract covering the
-- installation and ONE interval consent not yet over whose window, clipped to the
-- installation's, is not empty. Such a row is kind 'EW' / 'GW' ("windowed"): the plain row's
-- four int8 numbers followed by the window's start and end (epoch seconds rounded up, the end
-- clipped to the installation's end). The load converts them in bulk as it does plain rows, and
-- the index keeps their windows in two arrays. Every other row with consents stays 'R'.
--
-- A full load also asks for the newest grant or end of any consent (how far behind the database
-- a process is): a scan of every consent, 0.3 s with 600,000 of them. Two small indexes make it
-- two look-ups.
CREATE OR REPLACE VIEW index_route_lines AS
SELECT x.ean,
       CASE WHEN x.plain THEN CASE WHEN x.gas THEN 'G' ELSE 'E' END
            WHEN x.windowed THEN CASE WHEN x.gas THEN 'GW' ELSE 'EW' END
            ELSE 'R' END AS kind,
       CASE WHEN x.plain THEN x.numbers
            WHEN x.windowed THEN x.numbers || int8send(x.w_start) || int8send(x.w_end) END
         AS numbers,
       x.meter_id,
       CASE WHEN NOT x.plain AND NOT x.windowed THEN x.fields END AS fields
FROM (
  SELECT y.*,
         -- "windowed": what would be plain but for one interval consent on a daily contract
         -- whose window, clipped to the installation's, is not empty
         y.covered AND y.n = 1 AND y.level = 'daily' AND y.w_start < y.w_end AS windowed
  FROM (
    SELECT i.ean, i.meter_id, i.commodity = 'gas' AS gas, k.level, w.n, w.w_start,
           least(w.w_end, coalesce(ceil(date_part('epoch', i.installed_until))::bigint,
                                   4611686018427387904)) AS w_end,
           -- one contract covering the whole installation, a meter id without COPY escapes
           coalesce(k.contract_id IS NOT NULL
             AND k.contract_start <= i.installed_from
             AND (k.contract_end IS NULL OR coalesce(k.contract_end >= i.installed_until, false))
             AND i.meter_id !~ '[[:cntrl:]\\]', false) AS covered,
           -- "plain": covered, and no interval consent (the load converts such rows a chunk at
           -- a time)
           coalesce(k.contract_id IS NOT NULL AND w.spans IS NULL
             AND k.contract_start <= i.installed_from
             AND (k.contract_end IS NULL OR coalesce(k.contract_end >= i.installed_until, false))
             AND i.meter_id !~ '[[:cntrl:]\\]', false) AS plain,
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
                        ' ') AS spans,
             count(*) AS n,
             -- the window when there is one consent (n = 1)
             min(ceil(date_part('epoch', c.granted_at))::bigint) AS w_start,
             min(coalesce(ceil(date_part('epoch', least(c.ended_at, c.expires_at)))::bigint,
                          4611686018427387904)) AS w_end
      FROM consents c
      WHERE c.ean = k.ean AND c.contract_id = k.contract_id
        AND c.data_class = 'interval'
        AND coalesce(least(c.ended_at, c.expires_at), 'infinity') > now()
    ) w ON true
  ) y
) x;

ALTER TABLE index_routes DROP CONSTRAINT index_routes_kind_check;
ALTER TABLE index_routes ADD CONSTRAINT index_routes_kind_check
    CHECK (kind IN ('E', 'G', 'EW', 'GW', 'R'));
CREATE TABLE index_routes_ew PARTITION OF index_routes FOR VALUES IN ('EW');
CREATE TABLE index_routes_gw PARTITION OF index_routes FOR VALUES IN ('GW');

CREATE INDEX consents_granted_at_idx ON consents (granted_at);
CREATE INDEX consents_ended_at_idx ON consents (ended_at);

SELECT meterpoort_refresh_index_routes(NULL);
