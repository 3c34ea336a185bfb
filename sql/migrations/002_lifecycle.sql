-- Leases, fencing, pickup, retries with backoff, dead letter, cancel, delayed work, idempotent dispatch.

ALTER TABLE suggestions ADD COLUMN not_before timestamptz;

ALTER TABLE tasks
    ADD COLUMN attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN not_before timestamptz,
    -- Not dispatched before this: not_before, or the end of a retry backoff.
    ADD COLUMN available_at timestamptz NOT NULL DEFAULT now(),
    -- A fresh lease_id per dispatch fences off late calls from an earlier holder of the same task.
    ADD COLUMN lease_id uuid,
    ADD COLUMN lease_seconds integer,
    ADD COLUMN lease_expires_at timestamptz,
    ADD COLUMN picked_up_at timestamptz,
    ADD COLUMN last_error text,
    ADD COLUMN dispatch_key text;

UPDATE tasks
SET lease_id = gen_random_uuid(), lease_seconds = 1800, lease_expires_at = assigned_at + interval '30 minutes'
WHERE status = 'assigned';

ALTER TABLE tasks
    DROP CONSTRAINT tasks_status_valid,
    ADD CONSTRAINT tasks_status_valid
        CHECK (status IN ('ready', 'assigned', 'completed', 'failed', 'canceled', 'stalled')),
    DROP CONSTRAINT tasks_assigned_has_worker,
    ADD CONSTRAINT tasks_assigned_has_lease CHECK (
        status <> 'assigned'
        OR (worker_id IS NOT NULL AND assigned_at IS NOT NULL AND lease_id IS NOT NULL
            AND lease_expires_at IS NOT NULL)
    ),
    ADD CONSTRAINT tasks_attempts_not_negative CHECK (attempts >= 0),
    ADD CONSTRAINT tasks_lease_seconds_range CHECK (lease_seconds BETWEEN 1 AND 86400);

-- Stalled tasks are open too: their bikes are on a van.
DROP INDEX tasks_open_pair_idx;
CREATE INDEX tasks_open_pair_idx ON tasks (from_station_id, to_station_id)
    WHERE status IN ('ready', 'assigned', 'stalled');

-- The reaper reads the soonest-expiring leases.
CREATE INDEX tasks_lease_idx ON tasks (lease_expires_at) WHERE status = 'assigned';

-- The reaper wakes long-polling workers when delayed or backed-off work becomes due.
CREATE INDEX tasks_available_idx ON tasks (available_at) WHERE status = 'ready';

-- An Idempotency-Key names at most one held task per worker: a racing retry fails here instead of taking a
-- second task.
CREATE UNIQUE INDEX tasks_dispatch_key_idx ON tasks (worker_id, dispatch_key)
    WHERE status = 'assigned' AND dispatch_key IS NOT NULL;

ALTER TABLE task_events
    DROP CONSTRAINT task_events_event_valid,
    ADD CONSTRAINT task_events_event_valid CHECK (event IN (
        'approved', 'assigned', 'picked_up', 'completed', 'released', 'attempt_failed', 'failed',
        'lease_expired', 'canceled', 'retried'
    ));

-- Long-polling dispatchers LISTEN on this channel. A row-level trigger with a WHEN clause costs the hot
-- dispatch UPDATE (which sets 'assigned') only the evaluation of the condition; PostgreSQL folds identical
-- notifications within a transaction into one.
CREATE FUNCTION tasks_notify_ready() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('baywheels_task_ready', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_notify_ready
    AFTER INSERT OR UPDATE OF status ON tasks
    FOR EACH ROW
    WHEN (NEW.status = 'ready' AND NEW.available_at <= now())
    EXECUTE FUNCTION tasks_notify_ready();
