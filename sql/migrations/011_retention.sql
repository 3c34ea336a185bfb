-- Retention: finished tasks (completed, canceled, failed) and their events are deleted RETENTION_DAYS after
-- they finished, by the maintenance loop, a small batch at a time (maintenance.py, task_delete_finished).
--
-- finished_at is set by every statement that finishes a task (complete, cancel, fail and lease rescue at max
-- attempts) and cleared by retry; completed_at stays the API's "completed" time. It is null while a task is
-- open, so the cleaner reads the head of a partial index of finished tasks only, oldest first: its cost per
-- batch does not grow with history. No CHECK ties it to the status: rows written by hand (tests, the
-- benchmark's history) need not name it, and such a row is simply never deleted. Dispatch and the holder's
-- calls never test finished_at (migration 003 says why that matters); for them this index costs the
-- evaluation of its predicate.
ALTER TABLE tasks ADD COLUMN finished_at timestamptz;

-- Tasks finished before this migration: completed_at, or the time of their last event.
UPDATE tasks t
SET finished_at = coalesce(
    t.completed_at,
    (SELECT max(e.at) FROM task_events e WHERE e.task_id = t.id),
    t.created_at
)
WHERE t.status IN ('completed', 'canceled', 'failed');

CREATE INDEX tasks_finished_idx ON tasks (finished_at) WHERE finished_at IS NOT NULL;
