-- Task events as a feed: the live stream (GET /events) and its resumption.

-- name: task_event_after :many
-- Events after id $1 and up to id $3 (no bound when null), oldest first, $2 at most, each with its task's
-- status as it is now. The stream's shared tail reads it once per process per wake-up, whatever the number
-- of streams; a stream resuming from Last-Event-ID reads its gap once.
SELECT e.id, e.task_id, e.event, e.worker_id, e.detail, e.actor, e.at, t.status
FROM task_events e
JOIN tasks t ON t.id = e.task_id
WHERE e.id > $1::bigint AND ($3::bigint IS NULL OR e.id <= $3::bigint)
ORDER BY e.id
LIMIT $2;

-- name: task_event_last_id :one
-- Where a new tail starts: the newest event (the primary key's last entry).
SELECT coalesce(max(id), 0) AS id FROM task_events;
