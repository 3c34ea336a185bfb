-- Workers and their vans: registration by operators, the last position and load a van reported, and what a
-- worker has done. A worker that was never registered still dispatches (capacity unknown); its first
-- position report makes its row, with registered_at null.
--
-- A worker answer: the registration, the last position, and from its tasks (tasks_worker_idx) the task it
-- holds, when it was last seen (its last position report, or the last change to the task it holds or last
-- held) and how many it completed since the start of the day (UTC) of $2, the clock.

-- name: worker_get :one
SELECT w.worker_id, w.name, w.capacity, w.depot_station_id, w.on_shift, w.lat, w.lon, w.position_at, w.load,
       (SELECT id FROM tasks t WHERE t.worker_id = w.worker_id AND t.status = 'assigned'
        ORDER BY id DESC LIMIT 1) AS current_task_id,
       greatest(w.position_at,
                (SELECT greatest(assigned_at, picked_up_at, completed_at) FROM tasks t
                 WHERE t.worker_id = w.worker_id ORDER BY id DESC LIMIT 1)) AS last_seen_at,
       (SELECT count(*) FROM tasks t
        WHERE t.worker_id = w.worker_id AND t.status = 'completed'
          AND t.completed_at >= date_trunc('day', coalesce($2::timestamptz, now()), 'UTC')) AS completed_today
FROM workers w
WHERE w.worker_id = $1 AND w.registered_at IS NOT NULL;

-- name: worker_list :many
-- One page of registered workers after the cursor $1 (a worker id; '' for the first), $3 the clock.
SELECT w.worker_id, w.name, w.capacity, w.depot_station_id, w.on_shift, w.lat, w.lon, w.position_at, w.load,
       (SELECT id FROM tasks t WHERE t.worker_id = w.worker_id AND t.status = 'assigned'
        ORDER BY id DESC LIMIT 1) AS current_task_id,
       greatest(w.position_at,
                (SELECT greatest(assigned_at, picked_up_at, completed_at) FROM tasks t
                 WHERE t.worker_id = w.worker_id ORDER BY id DESC LIMIT 1)) AS last_seen_at,
       (SELECT count(*) FROM tasks t
        WHERE t.worker_id = w.worker_id AND t.status = 'completed'
          AND t.completed_at >= date_trunc('day', coalesce($3::timestamptz, now()), 'UTC')) AS completed_today
FROM workers w
WHERE w.registered_at IS NOT NULL AND w.worker_id > $1
ORDER BY w.worker_id
LIMIT $2;

-- name: worker_locate :exec
-- A van's report with a heartbeat or pickup: position $2, $3 (accuracy $4 m), load $5 (kept when null), at $6.
INSERT INTO workers (worker_id, lat, lon, accuracy_m, load, position_at)
VALUES ($1, $2::float8, $3::float8, $4::float8, $5::integer, coalesce($6::timestamptz, now()))
ON CONFLICT (worker_id) DO UPDATE
SET lat = excluded.lat, lon = excluded.lon, accuracy_m = excluded.accuracy_m,
    load = coalesce(excluded.load, workers.load), position_at = excluded.position_at;

-- name: worker_off_shift :one
-- Whether worker $1 is registered as off shift: why a dispatch found nothing for it.
SELECT EXISTS (SELECT FROM workers WHERE worker_id = $1 AND NOT on_shift) AS off_shift;

-- name: worker_put :one
-- Register worker $1 or update its registration (name $2, capacity $3, depot $4, on shift $5, at $6); its last
-- position is kept. Returns whether it was new.
INSERT INTO workers (worker_id, name, capacity, depot_station_id, on_shift, registered_at, updated_at)
VALUES ($1, $2, $3, $4, $5, coalesce($6::timestamptz, now()), coalesce($6::timestamptz, now()))
ON CONFLICT (worker_id) DO UPDATE
SET name = excluded.name, capacity = excluded.capacity, depot_station_id = excluded.depot_station_id,
    on_shift = excluded.on_shift, updated_at = excluded.updated_at,
    registered_at = coalesce(workers.registered_at, excluded.registered_at)
RETURNING (xmax = 0) AS created;

-- name: worker_stats :one
-- What worker $1 did in the $2 hours before $3 (the clock): tasks completed (and per hour), the median time
-- from dispatch to completion, and its failed attempts and leases that ran out in its hands.
WITH done AS (
    SELECT completed_at - assigned_at AS took
    FROM tasks
    WHERE worker_id = $1 AND status = 'completed'
      AND completed_at > coalesce($3::timestamptz, now()) - make_interval(hours => $2::integer)
      AND completed_at <= coalesce($3::timestamptz, now())
),
failures AS (
    SELECT event
    FROM task_events
    WHERE worker_id = $1 AND event IN ('attempt_failed', 'failed', 'lease_expired')
      AND at > coalesce($3::timestamptz, now()) - make_interval(hours => $2::integer)
      AND at <= coalesce($3::timestamptz, now())
)
SELECT (SELECT count(*) FROM done) AS completed,
       (SELECT extract(epoch FROM percentile_cont(0.5) WITHIN GROUP (ORDER BY took)) / 60 FROM done)::float8
           AS median_minutes_to_complete,
       (SELECT count(*) FILTER (WHERE event <> 'lease_expired') FROM failures) AS failures,
       (SELECT count(*) FILTER (WHERE event = 'lease_expired') FROM failures) AS leases_expired;
