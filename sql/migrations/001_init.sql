-- Suggestions from the ML engine, tasks approved from them, and the history of every task.

-- Every row here is pending: approval deletes the suggestion. One pending suggestion per station pair, so a
-- re-posted batch updates it in place (ON CONFLICT on suggestions_pair_key).
CREATE TABLE suggestions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    from_station_id integer NOT NULL,
    to_station_id   integer NOT NULL,
    qty             integer NOT NULL,
    reason          text NOT NULL,
    priority        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT suggestions_from_station_positive CHECK (from_station_id > 0),
    CONSTRAINT suggestions_to_station_positive CHECK (to_station_id > 0),
    CONSTRAINT suggestions_stations_differ CHECK (from_station_id <> to_station_id),
    CONSTRAINT suggestions_qty_positive CHECK (qty > 0),
    CONSTRAINT suggestions_pair_key UNIQUE (from_station_id, to_station_id)
);

CREATE TABLE tasks (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    suggestion_id   bigint NOT NULL,
    from_station_id integer NOT NULL,
    to_station_id   integer NOT NULL,
    qty             integer NOT NULL,
    reason          text NOT NULL,
    priority        integer NOT NULL DEFAULT 0,
    status          text NOT NULL DEFAULT 'ready',
    worker_id       text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    assigned_at     timestamptz,
    completed_at    timestamptz,
    -- One task per suggestion, ever: a second approval finds this one instead of creating another.
    CONSTRAINT tasks_suggestion_id_key UNIQUE (suggestion_id),
    CONSTRAINT tasks_status_valid CHECK (status IN ('ready', 'assigned', 'completed')),
    CONSTRAINT tasks_qty_positive CHECK (qty > 0),
    CONSTRAINT tasks_stations_differ CHECK (from_station_id <> to_station_id),
    CONSTRAINT tasks_assigned_has_worker CHECK (status <> 'assigned' OR (worker_id IS NOT NULL AND assigned_at IS NOT NULL)),
    CONSTRAINT tasks_completed_has_time CHECK (status <> 'completed' OR completed_at IS NOT NULL)
);

-- Dispatch reads the head of this index and nothing else; completed tasks never enter it, so its cost does
-- not grow with history. Column order matches the ORDER BY of task_dispatch.
CREATE INDEX tasks_ready_idx ON tasks (priority DESC, created_at, id) WHERE status = 'ready';

-- Ingest skips a pair that already has an open task.
CREATE INDEX tasks_open_pair_idx ON tasks (from_station_id, to_station_id) WHERE status IN ('ready', 'assigned');

CREATE INDEX tasks_worker_idx ON tasks (worker_id, id) WHERE worker_id IS NOT NULL;

-- Append-only: rows are inserted by the statement that makes the transition, never updated.
CREATE TABLE task_events (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id   bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    event     text NOT NULL,
    worker_id text,
    detail    text,
    at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT task_events_event_valid CHECK (event IN ('approved', 'assigned', 'completed'))
);

CREATE INDEX task_events_task_idx ON task_events (task_id, id);
