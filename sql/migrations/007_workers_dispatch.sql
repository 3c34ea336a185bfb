-- Workers and their vans, location-aware dispatch, priority aging, one van per station.

-- A worker registered by an operator (registered_at set: name, capacity, on_shift), and the last position and
-- load its van reported (lat .. position_at), which a worker that was never registered has too: its row is
-- made by its first report, with capacity unknown.
CREATE TABLE workers (
    worker_id        text PRIMARY KEY,
    name             text,
    capacity         integer,
    depot_station_id integer,
    on_shift         boolean NOT NULL DEFAULT true,
    registered_at    timestamptz,
    updated_at       timestamptz,
    lat              double precision,
    lon              double precision,
    accuracy_m       double precision,
    load             integer,
    position_at      timestamptz,
    CONSTRAINT workers_capacity_valid CHECK (capacity IS NULL OR capacity >= 0),
    CONSTRAINT workers_load_valid CHECK (load IS NULL OR load >= 0),
    CONSTRAINT workers_lat_valid CHECK (lat BETWEEN -90 AND 90),
    CONSTRAINT workers_lon_valid CHECK (lon BETWEEN -180 AND 180),
    CONSTRAINT workers_position_whole CHECK ((lat IS NULL) = (lon IS NULL) AND (lat IS NULL) = (position_at IS NULL))
);

-- Aging: effective priority = priority + aging, where aging (0..PRIORITY_AGING_MAX) is raised by the
-- maintenance loop (task_age) as a task waits. Stored rather than computed at dispatch, so that dispatch still
-- reads the head of one index in order, whatever the clock: the position-less statement is unchanged in shape.
-- bigint: priority spans int4, and priority + aging must not overflow.
ALTER TABLE tasks ADD COLUMN aging integer NOT NULL DEFAULT 0,
    ADD CONSTRAINT tasks_aging_valid CHECK (aging >= 0);

DROP INDEX tasks_ready_idx;
CREATE INDEX tasks_ready_idx ON tasks ((priority::bigint + aging) DESC, created_at, id) WHERE status = 'ready';

-- The aging sweep finds the tasks due for their next step: per step, the longest-waiting first.
CREATE INDEX tasks_aging_idx ON tasks (aging, greatest(created_at, not_before)) WHERE status = 'ready';

-- Location-aware dispatch: per pickup station (nearest first, from stations_earth_idx), the oldest ready task
-- of one band. Partial on 'ready', as tasks_ready_idx: a dispatch's new row version (assigned) only evaluates
-- the predicate, it adds no entry.
CREATE INDEX tasks_ready_station_idx ON tasks (from_station_id, (priority::bigint + aging) DESC, created_at, id)
    WHERE status = 'ready';

-- Worker stats: failures per worker (the rare events only: an 'assigned' event, one per dispatch, does not
-- enter this index).
CREATE INDEX task_events_worker_failures_idx ON task_events (worker_id, at)
    WHERE event IN ('attempt_failed', 'failed', 'lease_expired');

-- One van per station: a claim per station, held by the assigned task whose pickup or drop-off it is. Dispatch
-- writes the claims in its own statement and the primary key refuses a second; a task leaving 'assigned'
-- frees its claims (tasks_status_changed, below). Rows stay once made (task_id null when free), so a station's next claim
-- is an update in place.
CREATE TABLE station_claims (
    station_id integer PRIMARY KEY,
    task_id    bigint,
    worker_id  text,
    CONSTRAINT station_claims_held_whole CHECK ((task_id IS NULL) = (worker_id IS NULL))
);

-- What dispatch probes: the claims held now, as many as the vans at work, whatever the number of stations.
CREATE INDEX station_claims_held_idx ON station_claims (station_id) WHERE task_id IS NOT NULL;

-- Called by dispatch's claim only when the station is already held: a racing dispatch that saw it free in an
-- older snapshot. The statement fails (nothing of it stays) as a unique violation naming
-- station_claims_one_van, and the service runs it again.
CREATE FUNCTION station_claim_refused(station integer) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'station % already has a van', station
        USING ERRCODE = 'unique_violation', CONSTRAINT = 'station_claims_one_van';
END;
$$;

-- Completion, release, failure, cancel and lease rescue all leave 'assigned': then the task's claims are
-- freed. One trigger for every change of status (002's announcement of a ready task joins it), so that a
-- dispatch (ready -> assigned), the hot path, evaluates one WHEN, as before this migration.
CREATE FUNCTION tasks_status_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'ready' AND NEW.available_at <= now() THEN
        PERFORM pg_notify('baywheels_task_ready', '');
    END IF;
    IF OLD.status = 'assigned' AND NEW.status <> 'assigned' THEN
        UPDATE station_claims SET task_id = NULL, worker_id = NULL
        WHERE station_id IN (OLD.from_station_id, OLD.to_station_id) AND task_id = OLD.id;
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER tasks_notify_ready ON tasks;
CREATE TRIGGER tasks_notify_ready
    AFTER INSERT ON tasks
    FOR EACH ROW
    WHEN (NEW.status = 'ready' AND NEW.available_at <= now())
    EXECUTE FUNCTION tasks_notify_ready();
CREATE TRIGGER tasks_status_changed
    AFTER UPDATE OF status ON tasks
    FOR EACH ROW
    WHEN ((NEW.status = 'ready' AND NEW.available_at <= now())
          OR (OLD.status = 'assigned' AND NEW.status <> 'assigned'))
    EXECUTE FUNCTION tasks_status_changed();

-- Tasks assigned before this migration hold their stations too (the first one per station, by id).
INSERT INTO station_claims (station_id, task_id, worker_id)
SELECT DISTINCT ON (station) station, id, worker_id
FROM tasks CROSS JOIN LATERAL (VALUES (from_station_id), (to_station_id)) s (station)
WHERE status = 'assigned'
ORDER BY station, id;
