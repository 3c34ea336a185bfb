-- Tasks: approval, dispatch, completion and reads. Every state change is one conditional UPDATE, so the
-- database (not Python) decides who wins a race, and each writes its task_events row in the same statement.

-- name: task_approve_many :many
-- Turn pending suggestions into ready tasks and delete the suggestions, in one statement. Returns only the
-- tasks this call created: ids approved earlier (or by a racing call, whose DELETE this one waited for) are
-- read afterwards with task_list_by_suggestions, which runs with a fresh snapshot.
WITH approved AS (
    DELETE FROM suggestions
    WHERE id = ANY($1::bigint[])
    RETURNING id, from_station_id, to_station_id, qty, reason, priority
),
created AS (
    INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason, priority)
    SELECT id, from_station_id, to_station_id, qty, reason, priority
    FROM approved
    ORDER BY id
    RETURNING *
),
logged AS (
    INSERT INTO task_events (task_id, event)
    SELECT id, 'approved' FROM created
)
SELECT * FROM created;

-- name: task_complete :one
-- Finish a task that is assigned (to $2 when given). No row means it was not assigned or not to $2: the
-- caller reads the task to say why.
WITH completed AS (
    UPDATE tasks
    SET status = 'completed', completed_at = now()
    WHERE id = $1
      AND status = 'assigned'
      AND ($2::text IS NULL OR worker_id = $2::text)
    RETURNING *
),
logged AS (
    INSERT INTO task_events (task_id, event, worker_id)
    SELECT id, 'completed', worker_id FROM completed
)
SELECT * FROM completed;

-- name: task_dispatch :one
-- Assign the best ready task to worker $1: highest priority, then oldest, then lowest id. The inner SELECT
-- walks tasks_ready_idx; SKIP LOCKED lets concurrent dispatchers each take a different row instead of
-- queueing behind the first, and the row lock is held only for this one statement.
WITH assigned AS (
    UPDATE tasks
    SET status = 'assigned', worker_id = $1, assigned_at = now()
    WHERE id = (
        SELECT id
        FROM tasks
        WHERE status = 'ready'
        ORDER BY priority DESC, created_at, id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING *
),
logged AS (
    INSERT INTO task_events (task_id, event, worker_id)
    SELECT id, 'assigned', worker_id FROM assigned
)
SELECT * FROM assigned;

-- name: task_event_list :many
-- The history of one task, oldest first.
SELECT event, worker_id, detail, at
FROM task_events
WHERE task_id = $1
ORDER BY id;

-- name: task_get :one
SELECT * FROM tasks WHERE id = $1;

-- name: task_list :many
-- One page of tasks after a cursor, optionally filtered by status ($1) and worker ($2).
SELECT *
FROM tasks
WHERE ($1::text IS NULL OR status = $1::text)
  AND ($2::text IS NULL OR worker_id = $2::text)
  AND id > $3
ORDER BY id
LIMIT $4;

-- name: task_list_by_suggestions :many
-- The tasks made from these suggestions, whichever call approved them.
SELECT * FROM tasks WHERE suggestion_id = ANY($1::bigint[]);
