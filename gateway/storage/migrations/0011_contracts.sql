-- 0011: connections over time (SPEC §3a). A connection (EAN) is permanent; supply contracts
-- (who is supplied, from when to when, at which level) and meter installations (which meter sits
-- on it, from when to when) change behind it.
--
-- Every existing connection row becomes a connection plus one contract (same customer, window,
-- end reason, level and level history) plus one installation of its meter. The installation
-- starts with the contract and stays open, unless the same meter id was later registered on
-- another EAN (the old model allowed that after a contract end): then it ends where the next
-- one starts, so the "one EAN per meter at a time" rule below holds for migrated data too.
--
-- The rules live in the database, as exclusion constraints:
-- * contracts of one EAN never overlap: EXCLUDE (ean =, window &&). It includes the EAN, so
--   Citus can enforce it on a table distributed by `ean` (tests/integration/test_citus_compat.py);
-- * one meter per EAN at a time, and one EAN per meter (and commodity) at a time. The second
--   cannot include the EAN (it is a rule ACROSS EANs), so `meter_installations` is a Citus
--   reference table, like `devices`: small (one row per meter exchange), read by every ingest
--   node to route a meter id to its EAN, and a reference table may hold any constraint.
-- btree_gist gives `=` on text and uuid inside a GiST exclusion constraint (a trusted
-- extension: the database owner may create it).

CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE contracts (
    ean            text        NOT NULL,
    contract_id    uuid        NOT NULL DEFAULT gen_random_uuid(),
    -- the reading tables' key (readings are attributed to a contract by ean_num + measured_at)
    ean_num        bigint      GENERATED ALWAYS AS (ean::bigint) STORED NOT NULL,
    customer_id    text        NOT NULL CHECK (customer_id <> ''),
    contract_start timestamptz NOT NULL,
    contract_end   timestamptz,
    end_reason     text        CHECK (end_reason IN ('contract-ended', 'move-out', 'switch')),
    -- the customer's choice belongs to the contract: a new tenant starts at 'daily'
    level          text        NOT NULL DEFAULT 'daily' CHECK (level IN ('none', 'monthly', 'daily')),
    -- when the current level took effect (NULL: never changed; see 0010)
    level_since    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ean, contract_id),
    CHECK (contract_end IS NULL OR contract_end > contract_start),
    CHECK (end_reason IS NULL OR contract_end IS NOT NULL),
    CONSTRAINT contracts_no_overlap EXCLUDE USING gist (
        ean WITH =, tstzrange(contract_start, contract_end, '[)') WITH &&
    )
);
CREATE INDEX contracts_customer_id_idx ON contracts (customer_id);
CREATE INDEX contracts_contract_id_idx ON contracts (contract_id);
CREATE INDEX contracts_ean_num_idx ON contracts (ean_num, contract_start);

CREATE TABLE meter_installations (
    installation_id uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    ean             text        NOT NULL,
    commodity       text        NOT NULL CHECK (commodity IN ('electricity', 'gas')),
    meter_id        text        NOT NULL CHECK (meter_id <> ''),
    installed_from  timestamptz NOT NULL,
    installed_until timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (installed_until IS NULL OR installed_until > installed_from),
    CONSTRAINT meter_installations_one_meter_per_ean EXCLUDE USING gist (
        ean WITH =, tstzrange(installed_from, installed_until, '[)') WITH &&
    ),
    CONSTRAINT meter_installations_one_ean_per_meter EXCLUDE USING gist (
        meter_id WITH =, commodity WITH =, tstzrange(installed_from, installed_until, '[)') WITH &&
    )
);
CREATE INDEX meter_installations_ean_idx ON meter_installations (ean, installed_from);

INSERT INTO contracts (ean, customer_id, contract_start, contract_end, end_reason, level,
                       level_since, created_at, updated_at)
SELECT ean, customer_id, contract_start, contract_end, end_reason, level, level_since,
       created_at, updated_at
FROM connections;

INSERT INTO meter_installations (ean, commodity, meter_id, installed_from, installed_until,
                                 created_at)
SELECT ean, commodity, meter_id, contract_start,
       lead(contract_start) OVER (PARTITION BY meter_id, commodity ORDER BY contract_start),
       created_at
FROM connections;

-- level history and consents now name their contract (one per EAN so far)
ALTER TABLE level_events ADD COLUMN contract_id uuid;
UPDATE level_events l SET contract_id = k.contract_id FROM contracts k WHERE k.ean = l.ean;
ALTER TABLE level_events ALTER COLUMN contract_id SET NOT NULL;
DROP INDEX level_events_ean_at_idx;
CREATE INDEX level_events_contract_at_idx ON level_events (ean, contract_id, at);

ALTER TABLE consents ADD COLUMN contract_id uuid;
UPDATE consents c SET contract_id = k.contract_id FROM contracts k WHERE k.ean = c.ean;
ALTER TABLE consents ALTER COLUMN contract_id SET NOT NULL;
CREATE INDEX consents_contract_id_idx ON consents (ean, contract_id);
ALTER TABLE consents DROP CONSTRAINT consents_end_reason_check;
ALTER TABLE consents ADD CONSTRAINT consents_end_reason_check CHECK (end_reason IN
    ('revoked', 'expired', 'contract-ended', 'move-out', 'switch', 'erasure'));

-- the connection keeps only what never changes
DROP INDEX connections_meter_id_idx;
DROP INDEX connections_customer_id_idx;
ALTER TABLE connections
    DROP COLUMN meter_id,
    DROP COLUMN customer_id,
    DROP COLUMN contract_start,
    DROP COLUMN contract_end,
    DROP COLUMN end_reason,
    DROP COLUMN level,
    DROP COLUMN level_since,
    DROP COLUMN updated_at;

-- caches follow contracts and installations as they followed connections (0002)
CREATE OR REPLACE TRIGGER meterpoort_notify_contracts_ins AFTER INSERT ON contracts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_notify_consent();
CREATE OR REPLACE TRIGGER meterpoort_notify_contracts_upd AFTER UPDATE ON contracts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_notify_consent();
CREATE OR REPLACE TRIGGER meterpoort_notify_contracts_del AFTER DELETE ON contracts
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_notify_consent();
CREATE OR REPLACE TRIGGER meterpoort_notify_installations_ins AFTER INSERT ON meter_installations
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_notify_consent();
CREATE OR REPLACE TRIGGER meterpoort_notify_installations_upd AFTER UPDATE ON meter_installations
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_notify_consent();
CREATE OR REPLACE TRIGGER meterpoort_notify_installations_del AFTER DELETE ON meter_installations
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meterpoort_notify_consent();

-- a revoked device token stops working in every process at once: its credential caches
-- drop the device when told (gateway.storage.credentials)
CREATE OR REPLACE FUNCTION meterpoort_notify_device() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meterpoort_device', NEW.device_id::text);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER meterpoort_notify_devices_upd AFTER UPDATE ON devices
    FOR EACH ROW EXECUTE FUNCTION meterpoort_notify_device();
