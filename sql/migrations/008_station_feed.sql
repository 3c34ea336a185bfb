-- The GBFS import's state beside the registry (006), and tasks that the stations' figures say cannot be done.

-- One row: the feed last imported. Its time zone dates a station's history; imported_at says the first import
-- succeeded (readiness waits for it when GBFS_URL is set).
CREATE TABLE gbfs_system (
    singleton    boolean PRIMARY KEY DEFAULT true,
    system_id    text,
    name         text,
    timezone     text,
    source       text NOT NULL,
    imported_at  timestamptz NOT NULL,
    CONSTRAINT gbfs_system_singleton CHECK (singleton)
);

-- Why a task may no longer be doable: its pickup has fewer bikes available than its qty, or its drop-off
-- fewer docks (null otherwise). Set on approval and re-evaluated for open tasks whenever a status refresh
-- changes a station's figures; dispatch does not compute it (it is current by then) and still offers it.
ALTER TABLE tasks ADD COLUMN stale_reason text;

-- What makes it: one definition for approval and refresh.
CREATE FUNCTION task_stale_reason(
    qty integer, from_station_id integer, bikes integer, to_station_id integer, docks integer
) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT nullif(concat_ws('; ',
        CASE WHEN bikes < qty
             THEN format('pickup station %s has %s bikes available, the task moves %s', from_station_id, bikes, qty)
        END,
        CASE WHEN docks < qty
             THEN format('drop-off station %s has %s docks available, the task moves %s', to_station_id, docks, qty)
        END), '')
$$;

-- A station's finished tasks (GET /stations/{id} and its history). Partial on finished states, so dispatch
-- (ready -> assigned) writes no entry here. Open tasks at a station are found through tasks_open_pair_idx
-- (from_station_id, to_station_id), the drop-off side by its second column: no index is added that dispatch
-- would have to write.
CREATE INDEX tasks_finished_from_idx ON tasks (from_station_id, id)
    WHERE status IN ('completed', 'failed', 'canceled');
CREATE INDEX tasks_finished_to_idx ON tasks (to_station_id, id)
    WHERE status IN ('completed', 'failed', 'canceled');

-- GET /tasks?flag=stale reads the few flagged open tasks.
CREATE INDEX tasks_stale_idx ON tasks (id) WHERE stale_reason IS NOT NULL AND is_open;
