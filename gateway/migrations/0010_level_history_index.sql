-- 0010: ingest checks the level that was in force when a reading was measured (the latest
-- level_events row at or before measured_at), per daily, monthly and interval row it writes.
CREATE INDEX level_events_ean_at_idx ON level_events (ean, at);
