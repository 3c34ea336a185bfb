-- The overview (GET /stats and the business figures of /metrics). Each reads an index that holds the open
-- tasks, the tasks that need a person, or the recent events (task_events_at_brin), so its cost follows the
-- open work and the last day, not the history. $1 is the clock (the database's when null).

-- name: stats_attention :many
-- The first $1 tasks that need a person: stalled (bikes on a van, lease lost) first, then failed (dead
-- letter), newest first within each.
SELECT *
FROM tasks
WHERE status IN ('failed', 'stalled')
ORDER BY status DESC, id DESC
LIMIT $1;

-- name: stats_counts :one
-- Tasks by open state and dead letters, the ready queue that is due, and since when its oldest has waited.
SELECT coalesce($1::timestamptz, now()) AS at,
       (SELECT count(*) FROM tasks WHERE status = 'ready') AS ready,
       -- Non-null exactly while a task is assigned (003_point_lookups): reads tasks_lease_idx.
       (SELECT count(*) FROM tasks WHERE lease_expires_at IS NOT NULL) AS assigned,
       (SELECT count(*) FROM tasks WHERE status = 'stalled') AS stalled,
       (SELECT count(*) FROM tasks WHERE status = 'failed') AS failed,
       (SELECT count(*) FROM tasks
        WHERE status = 'ready' AND available_at <= coalesce($1::timestamptz, now())) AS ready_due,
       (SELECT min(available_at) FROM tasks
        WHERE status = 'ready' AND available_at <= coalesce($1::timestamptz, now())) AS oldest_ready_since;

-- name: stats_hourly :many
-- Events per hour over the last 24 hours (the current hour last, so far), every hour present.
WITH hours AS (
    SELECT generate_series(
        date_trunc('hour', coalesce($1::timestamptz, now())) - interval '23 hours',
        date_trunc('hour', coalesce($1::timestamptz, now())),
        interval '1 hour'
    ) AS hour
),
counted AS (
    SELECT date_trunc('hour', at) AS hour,
           count(*) FILTER (WHERE event = 'approved') AS created,
           count(*) FILTER (WHERE event = 'assigned') AS dispatched,
           count(*) FILTER (WHERE event = 'completed') AS completed,
           count(*) FILTER (WHERE event = 'failed') AS failed,
           count(*) FILTER (WHERE event = 'canceled') AS canceled
    FROM task_events
    WHERE at >= date_trunc('hour', coalesce($1::timestamptz, now())) - interval '23 hours'
      AND at <= coalesce($1::timestamptz, now())
    GROUP BY 1
)
SELECT h.hour, coalesce(c.created, 0) AS created, coalesce(c.dispatched, 0) AS dispatched,
       coalesce(c.completed, 0) AS completed, coalesce(c.failed, 0) AS failed,
       coalesce(c.canceled, 0) AS canceled
FROM hours h
LEFT JOIN counted c USING (hour)
ORDER BY h.hour;

-- name: stats_latency :many
-- p50 and p90, in seconds, over the last hour and day, one row per (measure, span) with anything to measure:
-- ready_assigned, the wait of the assignments that tasks still holds (held now, or completed since), from
-- available_at (approval, release, the end of a backoff) to assigned_at; and assigned_completed. Read from
-- the lease index and the completion index: the other ways out of an assignment (failure, rescue, release)
-- move available_at on, so their waits are no longer known.
WITH recent AS (
    SELECT assigned_at, available_at, completed_at
    FROM tasks
    WHERE completed_at > coalesce($1::timestamptz, now()) - interval '1 day'
      AND completed_at <= coalesce($1::timestamptz, now())
      AND status = 'completed'
),
samples AS (
    SELECT 'ready_assigned' AS measure, assigned_at AS at, extract(epoch FROM assigned_at - available_at) AS seconds
    FROM (
        SELECT assigned_at, available_at FROM recent
        UNION ALL
        SELECT assigned_at, available_at FROM tasks WHERE lease_expires_at IS NOT NULL
    ) held
    WHERE assigned_at > coalesce($1::timestamptz, now()) - interval '1 day'
      AND assigned_at <= coalesce($1::timestamptz, now())
      AND available_at <= assigned_at
    UNION ALL
    SELECT 'assigned_completed', completed_at, extract(epoch FROM completed_at - assigned_at)
    FROM recent
)
SELECT s.measure, w.span, count(*) AS n,
       percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY s.seconds) AS p
FROM samples s
JOIN (VALUES ('hour', interval '1 hour'), ('day', interval '1 day')) w (span, length)
    ON s.at > coalesce($1::timestamptz, now()) - w.length
GROUP BY s.measure, w.span;
