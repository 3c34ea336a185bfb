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
       -- Non-null exactly while a task is assigned (see 003_point_lookups): reads tasks_lease_idx.
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
-- ready_assigned (an assignment's wait since its task became available; only a task's latest assignment,
-- whose start tasks still holds) and assigned_completed.
WITH samples AS (
    SELECT 'ready_assigned' AS measure, e.at, extract(epoch FROM e.at - t.available_at) AS seconds
    FROM task_events e
    JOIN tasks t ON t.id = e.task_id AND t.assigned_at = e.at
    WHERE e.event = 'assigned'
      AND e.at > coalesce($1::timestamptz, now()) - interval '1 day'
      AND e.at <= coalesce($1::timestamptz, now())
    UNION ALL
    SELECT 'assigned_completed', e.at, extract(epoch FROM t.completed_at - t.assigned_at)
    FROM task_events e
    JOIN tasks t ON t.id = e.task_id AND t.status = 'completed'
    WHERE e.event = 'completed'
      AND e.at > coalesce($1::timestamptz, now()) - interval '1 day'
      AND e.at <= coalesce($1::timestamptz, now())
)
SELECT s.measure, w.span, count(*) AS n,
       percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY s.seconds) AS p
FROM samples s
JOIN (VALUES ('hour', interval '1 hour'), ('day', interval '1 day')) w (span, length)
    ON s.at > coalesce($1::timestamptz, now()) - w.length
GROUP BY s.measure, w.span;
