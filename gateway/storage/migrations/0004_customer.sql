-- 0004: the customer's data access log (SPEC §4, GET /v1/me/access-log).
--
-- A client read is audited as ONE row per request (kind 'data.read', subject NULL) whose
-- detail lists every EAN it returned: {client_id, client_name, granularity, from, to, eans}.
-- The customer's access log asks "which reads returned any of MY EANs"
-- (detail->'eans' ?| array[...]); without this index that is a scan of the whole audit trail
-- on every page view. Partial: only reads carry EAN lists worth indexing.
CREATE INDEX audit_log_read_eans_idx ON audit_log USING gin ((detail -> 'eans'))
    WHERE kind = 'data.read';
