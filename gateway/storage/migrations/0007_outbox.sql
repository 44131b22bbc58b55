-- 0007: consent-change notifications (SPEC §4): a transactional outbox and its webhook deliveries.
--
-- gateway.outbox.enqueue() writes one outbox_events row, and one webhook_deliveries row per
-- subscribed client, in the transaction that makes the change: a change is notified if and only
-- if it commits. gateway.webhooks delivers them (at-least-once, per client in `seq` order per EAN).
--
-- Both tables carry `ean` in every unique index (Citus: distributed on ean, like consents).
-- client_id is deliberately not a foreign key to `clients` (a reference table of another
-- migration); deliveries of a client that is revoked or loses its webhook URL are given up at
-- delivery time.

CREATE TABLE outbox_events (
    ean         text        NOT NULL,
    event_id    uuid        NOT NULL DEFAULT gen_random_uuid(),
    -- increasing in commit order per EAN (enqueue holds a per-EAN transaction lock while it
    -- draws the value), which is the delivery order; not unique on its own, not gapless
    seq         bigserial   NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('consent.granted', 'consent.ended',
                                                     'level.changed')),
    payload     jsonb       NOT NULL,
    -- when the change took effect (an end registered late, or an expiry, lies in the past)
    occurred_at timestamptz NOT NULL DEFAULT now(),
    -- when it was recorded
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ean, event_id)
);
CREATE INDEX outbox_events_ean_seq_idx ON outbox_events (ean, seq);
-- has this consent's end been announced? (the expiry sweep asks, gateway.outbox.sweep_expired)
CREATE INDEX outbox_events_consent_end_idx ON outbox_events (ean, (payload ->> 'consent_id'))
    WHERE kind = 'consent.ended';

CREATE TABLE webhook_deliveries (
    ean             text        NOT NULL,
    event_id        uuid        NOT NULL,
    client_id       uuid        NOT NULL,
    -- the event's seq, copied so the "earlier event still pending?" check needs no join
    seq             bigint      NOT NULL,
    state           text        NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'delivered', 'failed')),
    -- attempts started so far; also the fencing token of the worker holding the current claim
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    PRIMARY KEY (ean, event_id, client_id),
    CHECK ((state = 'delivered') = (delivered_at IS NOT NULL))
);
-- what the worker polls: due pending deliveries
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
-- per-client, per-EAN order: is an earlier event of this EAN still pending for this client?
CREATE INDEX webhook_deliveries_order_idx ON webhook_deliveries (client_id, ean, seq)
    WHERE state = 'pending';
