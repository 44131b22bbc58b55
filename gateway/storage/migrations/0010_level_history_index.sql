-- 0010: ingest checks the level that was in force when a reading was measured (gateway.ingest
-- LEVEL_AT_MEASUREMENT). `level_since` is when the current level took effect (NULL: the
-- connection never changed level, so its level was always the current one); only readings
-- measured before it look their level up in level_events, by (ean, at).
ALTER TABLE connections ADD COLUMN level_since timestamptz;
UPDATE connections k SET level_since = (SELECT max(l.at) FROM level_events l WHERE l.ean = k.ean);
CREATE INDEX level_events_ean_at_idx ON level_events (ean, at);
