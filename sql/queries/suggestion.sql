-- name: suggestion_list :many
-- Pending suggestions, oldest first, one page after a cursor.
SELECT id, from_station_id, to_station_id, qty, reason, priority, not_before, created_at
FROM suggestions
WHERE id > $1
ORDER BY id
LIMIT $2;

-- name: suggestion_list_by_station :many
-- The pending suggestions from or to station $1, oldest first.
SELECT id, from_station_id, to_station_id, qty, reason, priority, not_before, created_at
FROM suggestions
WHERE from_station_id = $1 OR to_station_id = $1
ORDER BY id;

-- name: suggestion_lock_for_ingest :exec
-- Taken first by every ingest. SHARE ROW EXCLUSIVE conflicts with itself and with the ROW EXCLUSIVE that an
-- approval's DELETE takes, so the ingest's statement snapshot (taken after this lock) sees every committed
-- approval, and a pair whose suggestion is being approved cannot get a second pending suggestion beside its
-- new task. Dispatch never touches this table.
LOCK TABLE suggestions IN SHARE ROW EXCLUSIVE MODE;

-- name: suggestion_upsert_batch :many
-- Ingest a whole batch in one statement. $1..$6 are parallel arrays, one element per input item (the stations
-- by registry id, as the handler resolved them from ids or GBFS station_ids). Returns one
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
