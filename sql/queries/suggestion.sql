-- name: suggestion_list :many
-- Pending suggestions, oldest first, one page after a cursor.
SELECT id, from_station_id, to_station_id, qty, reason, priority, not_before, created_at
FROM suggestions
WHERE id > $1
ORDER BY id
LIMIT $2;

-- name: suggestion_lock_for_ingest :exec
-- Taken first by every ingest. SHARE ROW EXCLUSIVE conflicts with itself and with the ROW EXCLUSIVE that an
-- approval's DELETE takes, so the ingest's statement snapshot (taken after this lock) sees every committed
-- approval, and a pair whose suggestion is being approved cannot get a second pending suggestion beside its
-- new task. Dispatch never touches this table.
LOCK TABLE suggestions IN SHARE ROW EXCLUSIVE MODE;

-- name: suggestion_outcome_horizon :one
-- Read before each page of the feed: the oldest transaction still running in this database, else the next to
-- start (xid8 as bigint). The page then reads only older transactions, all finished: ids are taken before
-- commit, so in id order a row committed late could land behind a cursor already handed out; in (xact, id)
-- order below this horizon it cannot. The cluster's oldest (the snapshot's xmin) would do too, but a long
-- transaction in another database would then hold the feed back. Read in a statement of its own, before the
-- page's snapshot: a transaction that starts in between has an xid above the horizon.
SELECT coalesce(
    (SELECT min(x)
     FROM pg_snapshot_xip(pg_current_snapshot()) x
     WHERE x::text::bigint % 4294967296 IN (
         SELECT backend_xid::text::bigint FROM pg_stat_activity
         WHERE datname = current_database() AND backend_xid IS NOT NULL
     )),
    pg_snapshot_xmax(pg_current_snapshot())
)::text::bigint AS horizon;

-- name: suggestion_outcome_list :many
-- The feed of outcomes after the cursor ($1 xact, $2 id) and below the horizon $4 (see
-- suggestion_outcome_horizon), $3 at most, each with its task as it is now. A long transaction in this
-- database delays the feed, loses nothing.
SELECT o.id, o.xact, o.suggestion_id, o.outcome, o.task_id, o.from_station_id, o.to_station_id, o.qty,
       o.priority, o.at, o.reason, o.actor,
       coalesce(o.suggested_at, (
           SELECT a.suggested_at FROM suggestion_outcomes a
           WHERE a.suggestion_id = o.suggestion_id AND a.outcome = 'approved'
       )) AS suggested_at,
       t.status AS task_status, t.created_at AS approved_at, t.assigned_at, t.picked_up_at, t.completed_at,
       t.attempts, t.worker_id
FROM suggestion_outcomes o
LEFT JOIN tasks t ON t.id = o.task_id
WHERE (o.xact, o.id) > ($1::bigint, $2::bigint)
  AND o.xact < $4::bigint
ORDER BY o.xact, o.id
LIMIT $3;

-- name: suggestion_remove :many
-- Take pending suggestions $1 off the list as $2 (dismissed by an operator, or expired), with reason $3, at $4,
-- by $5, each recorded in suggestion_outcomes. Returns the ids removed; the others were not pending
-- (approved, dismissed, expired, or unknown). The pair may be suggested again.
WITH removed AS (
    DELETE FROM suggestions
    WHERE id = ANY($1::bigint[])
    RETURNING *
),
decided AS (
    INSERT INTO suggestion_outcomes (
        suggestion_id, outcome, from_station_id, to_station_id, qty, priority, suggested_at, at, reason, actor
    )
    SELECT id, $2::text, from_station_id, to_station_id, qty, priority, created_at,
           coalesce($4::timestamptz, now()), $3::text, $5::text
    FROM removed
    ORDER BY id
)
SELECT id FROM removed ORDER BY id;

-- name: suggestion_stale :many
-- SUGGESTION_TTL: up to $3 pending suggestions not updated for $1 seconds before $2 (the database's clock
-- when null), least recently updated first, locked for suggestion_remove in the same transaction. SKIP LOCKED
-- passes over one being approved or dismissed.
SELECT id
FROM suggestions
WHERE updated_at <= coalesce($2::timestamptz, now()) - make_interval(secs => $1::double precision)
ORDER BY updated_at
LIMIT $3
FOR UPDATE SKIP LOCKED;

-- name: suggestion_upsert_batch :many
-- Ingest a whole batch in one statement. $1..$6 are parallel arrays, one element per input item. Returns one
-- row per item that created or updated a suggestion: its 1-based position in the input, the id, and whether
-- it was inserted.
WITH input AS (
    SELECT *
    FROM unnest($1::integer[], $2::integer[], $3::integer[], $4::text[], $5::integer[], $6::timestamptz[])
        WITH ORDINALITY AS i (from_station_id, to_station_id, qty, reason, priority, not_before, ord)
),
-- Within a batch the last item for a pair wins.
latest AS (
    SELECT DISTINCT ON (from_station_id, to_station_id) *
    FROM input
    ORDER BY from_station_id, to_station_id, ord DESC
),
-- A pair with an open (ready, assigned or stalled) task is not suggested again until that task is done.
eligible AS (
    SELECT *
    FROM latest l
    WHERE NOT EXISTS (
        SELECT 1 FROM tasks t
        WHERE t.from_station_id = l.from_station_id
          AND t.to_station_id = l.to_station_id
          AND t.is_open
    )
),
upserted AS (
    INSERT INTO suggestions (from_station_id, to_station_id, qty, reason, priority, not_before)
    SELECT from_station_id, to_station_id, qty, reason, priority, not_before
    FROM eligible
    -- New ids follow the input order, so the list (oldest first) shows a batch as it was posted.
    ORDER BY ord
    ON CONFLICT ON CONSTRAINT suggestions_pair_key DO UPDATE
        SET qty = excluded.qty, reason = excluded.reason, priority = excluded.priority,
            not_before = excluded.not_before, updated_at = now()
    -- xmax is 0 on a freshly inserted row version and set on one written by DO UPDATE.
    RETURNING id, from_station_id, to_station_id, (xmax = 0) AS inserted
)
SELECT e.ord, u.id, u.inserted
FROM eligible e
JOIN upserted u USING (from_station_id, to_station_id);
