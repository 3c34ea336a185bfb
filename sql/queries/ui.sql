-- What the console's pages (/ui) read beyond the API's own queries. Each reads an index: the pending
-- suggestions by priority, open tasks through the partial indexes of open work, history through the BRIN
-- indexes on time (migration 010). The clock is a parameter, as in task.sql.

-- name: ui_map_arrows :many
-- The moves on the map: every pending suggestion and every open task, at most $1.
(SELECT 'suggestion' AS kind, id, from_station_id, to_station_id, qty, priority
 FROM suggestions)
UNION ALL
(SELECT status, id, from_station_id, to_station_id, qty, priority
 FROM tasks
 WHERE is_open)
LIMIT $1;

-- name: ui_map_stations :many
-- Every station still in the feed, with what its fill is computed from.
SELECT id, name, short_name, lat, lon, capacity, num_bikes_available
FROM stations
WHERE active
ORDER BY id;

-- name: ui_station_tasks :many
-- The open tasks from or to station $1, highest priority first, at most $2.
SELECT *
FROM tasks
WHERE is_open AND (from_station_id = $1 OR to_station_id = $1)
ORDER BY priority DESC, created_at, id
LIMIT $2;

-- name: ui_suggestion_list :many
-- Pending suggestions, highest priority then oldest first, optionally only those from or to station $1 and
-- of priority $2 or more, at most $3.
SELECT id, from_station_id, to_station_id, qty, reason, priority, not_before, created_at
FROM suggestions
WHERE ($1::integer IS NULL OR from_station_id = $1::integer OR to_station_id = $1::integer)
  AND ($2::integer IS NULL OR priority >= $2::integer)
ORDER BY priority DESC, created_at, id
LIMIT $3;

-- name: ui_task_list :many
-- Tasks created in [$4, $5), newest first, optionally in state $1, of worker $2, from or to station $3; at
-- most $6. The window is always bounded, so the BRIN index on created_at limits what is read whatever else
-- is asked.
SELECT *
FROM tasks
WHERE created_at >= $4::timestamptz
  AND created_at < coalesce($5::timestamptz, now())
  AND ($1::text IS NULL OR status = $1::text)
  AND ($2::text IS NULL OR worker_id = $2::text)
  AND ($3::integer IS NULL OR from_station_id = $3::integer OR to_station_id = $3::integer)
ORDER BY id DESC
LIMIT $6;

-- name: ui_worker_list :many
-- Every worker that ever held a task or is registered (PUT /workers), with its current task, when it was last
-- seen (its latest event today, else its latest task's last touch: a heartbeat shows as lease_expires_at -
-- lease_seconds) and today's completions and failures (events since $1, the start of the day).
WITH RECURSIVE
-- The distinct worker ids, one index probe each (a skip scan of tasks_worker_idx).
seen AS (
    (SELECT worker_id FROM tasks WHERE worker_id IS NOT NULL ORDER BY worker_id LIMIT 1)
    UNION ALL
    SELECT (SELECT t.worker_id FROM tasks t WHERE t.worker_id > s.worker_id ORDER BY t.worker_id LIMIT 1)
    FROM seen s
    WHERE s.worker_id IS NOT NULL
),
-- Those, and the registered workers that have held nothing yet.
known AS (
    SELECT worker_id FROM seen WHERE worker_id IS NOT NULL
    UNION
    SELECT worker_id FROM workers
),
-- Today's events, through the BRIN index on task_events.at.
today AS (
    SELECT worker_id,
           count(*) FILTER (WHERE event = 'completed') AS completed,
           count(*) FILTER (WHERE event IN ('attempt_failed', 'failed', 'lease_expired')) AS failures,
           max(at) AS last_event
    FROM task_events
    WHERE at >= $1::timestamptz AND worker_id IS NOT NULL
    GROUP BY worker_id
),
-- Held tasks: exactly those with a lease (tasks_lease_idx).
held AS (
    SELECT DISTINCT ON (worker_id) worker_id, id, lease_expires_at
    FROM tasks
    WHERE lease_expires_at IS NOT NULL
    ORDER BY worker_id, id DESC
)
SELECT s.worker_id,
       h.id AS current_task_id,
       h.lease_expires_at,
       greatest(d.last_event, latest.touched) AS last_seen,
       coalesce(d.completed, 0) AS completed_today,
       coalesce(d.failures, 0) AS failures_today
FROM known s
LEFT JOIN today d USING (worker_id)
LEFT JOIN held h USING (worker_id)
LEFT JOIN LATERAL (
    SELECT greatest(t.assigned_at, t.picked_up_at, t.completed_at,
                    t.lease_expires_at - make_interval(secs => t.lease_seconds)) AS touched
    FROM tasks t
    WHERE t.worker_id = s.worker_id
    ORDER BY t.id DESC
    LIMIT 1
) latest ON true
ORDER BY s.worker_id;
