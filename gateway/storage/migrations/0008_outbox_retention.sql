-- 0008: finished notifications are pruned by the retention job (gateway.retention.purge_outbox):
-- events recorded before the cutoff whose deliveries are all delivered or failed. This index
-- finds them oldest first without scanning the whole outbox.
CREATE INDEX outbox_events_created_idx ON outbox_events (created_at);
