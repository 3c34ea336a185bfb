-- Queries of the benchmark harness (`python -m bench`), loaded with baywheels.sql.parse. They arrange state
-- directly (a backlog made in one statement is set-up, not the thing measured) and read what PostgreSQL
-- counts. {placeholders} are identifiers the harness fills in, quoted.

-- name: bench_assigned :many
-- Every assigned task and its holder: what the load generator's 200 bodies are compared with.
SELECT id, worker_id FROM tasks WHERE status = 'assigned';

-- name: bench_assigned_twice :one
-- Tasks handed out more than once; always 0 in a run without lease expiry, releases or failures.
SELECT count(*) FROM (
    SELECT task_id FROM task_events WHERE event = 'assigned' GROUP BY task_id HAVING count(*) > 1
) twice;

-- name: bench_backend_pid :one
-- The server process: a backend's parent. Its process tree is what "postgres CPU" adds up.
SELECT pg_backend_pid() AS pid;

-- name: bench_backlog_assign :exec
-- Hand tasks 1..$1 to a worker each (for the completion benchmark), with a lease that outlasts the run.
UPDATE tasks
SET status = 'assigned', worker_id = 'bench-' || id, assigned_at = now(), lease_id = gen_random_uuid(),
    lease_seconds = 86400, lease_expires_at = now() + interval '1 day'
WHERE id <= $1 AND status = 'ready';

-- name: bench_backlog_insert :exec
-- Ready tasks $1..$2 in one statement, ids in dispatch order within each priority (0..2). Each task has
-- stations of its own (2g - 1 to 2g): the benchmark never completes what it dispatches, and with one van per
-- station shared stations would run out after a few hundred dispatches.
INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason, priority)
SELECT g, 2 * g - 1, 2 * g, 1 + g % 5, 'benchmark backlog', g % 3
FROM generate_series($1::bigint, $2::bigint) AS g;

-- name: bench_location_backlog_insert :exec
-- The location scenario's state: $1 stations at random places in the Bay Area's bounding box (the same places
-- in every run) and $2 ready tasks over them (priorities 0..2, each pickup station with its share, drop-offs
-- among the others).
WITH seeded AS (SELECT setseed(0.42)),
placed AS (
    INSERT INTO stations (id, gbfs_station_id, name, lat, lon)
    SELECT g, 'bench-' || g, 'bench station ' || g, 37.2 + random() * 0.7, -122.55 + random() * 0.85
    FROM seeded, generate_series(1, $1::integer) AS g
)
INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason, priority)
SELECT g, 1 + g % $1, 1 + (g % $1 + 1 + g / $1 % ($1 - 1)) % $1, 1 + g % 5, 'benchmark backlog', g % 3
FROM generate_series(1, $2::bigint) AS g;

-- name: bench_database_create :exec
CREATE DATABASE {name} TEMPLATE {template};

-- name: bench_database_create_empty :exec
CREATE DATABASE {name};

-- name: bench_database_drop :exec
DROP DATABASE IF EXISTS {name} WITH (FORCE);

-- name: bench_database_sync_off :exec
-- Commits stop waiting for the WAL flush, for new connections to this database only (not of record).
ALTER DATABASE {name} SET synchronous_commit = off;

-- name: bench_dispatch_rate :many
-- Dispatches per $1-second bucket since the first, from assigned_at: the database's own clock, no sampling.
-- MATERIALIZED: statistics taken before the run say no task is assigned, and an inlined span would then be
-- recomputed for every row (quadratic).
WITH span AS MATERIALIZED (SELECT min(assigned_at) AS start FROM tasks WHERE status = 'assigned')
SELECT floor(extract(epoch FROM assigned_at - span.start) / $1)::integer AS bucket, count(*) AS dispatched
FROM tasks, span
WHERE status = 'assigned'
GROUP BY bucket
ORDER BY bucket;

-- name: bench_dispatch_window :one
-- Dispatches within $1 seconds after the first and before the last assignment, and the span in seconds.
-- MATERIALIZED for the reason given above.
WITH span AS MATERIALIZED (
    SELECT min(assigned_at) AS first, max(assigned_at) AS last FROM tasks WHERE status = 'assigned'
)
SELECT span.first, span.last,
       count(*) FILTER (WHERE assigned_at < span.first + make_interval(secs => $1)) AS first_window,
       count(*) FILTER (WHERE assigned_at > span.last - make_interval(secs => $1)) AS last_window,
       extract(epoch FROM span.last - span.first)::float8 AS span_seconds
FROM tasks, span
WHERE status = 'assigned'
GROUP BY span.first, span.last;

-- name: bench_dispatched_between :one
SELECT count(*) FROM tasks WHERE status = 'assigned' AND assigned_at >= $1 AND assigned_at < $2;

-- name: bench_history_events_insert :exec
-- The three events of each history task (approved, assigned, completed), in one statement. Run with
-- session_replication_role = replica: the foreign key's check of 30 million rows is set-up cost only.
INSERT INTO task_events (task_id, event, worker_id, at, actor)
SELECT t.id, e.event, CASE WHEN e.event <> 'approved' THEN t.worker_id END,
       CASE e.event WHEN 'approved' THEN t.created_at WHEN 'assigned' THEN t.assigned_at ELSE t.completed_at END,
       'bench'
FROM tasks t
CROSS JOIN (VALUES ('approved'), ('assigned'), ('completed')) AS e (event)
WHERE t.status = 'completed';

-- name: bench_history_insert :exec
-- $1 completed tasks, finished evenly over the $2 days before now (the oldest first), each by one of 500
-- vans; suggestion ids far above the backlog's. Their ids are below the backlog's (-$1..-1), as history's are
-- below new work's, so the backlog's events land at the right edge of task_events_task_idx as new tasks'
-- do. Set-up in one statement.
INSERT INTO tasks (
    id, suggestion_id, from_station_id, to_station_id, qty, reason, priority, status, worker_id, created_at,
    assigned_at, completed_at, finished_at, attempts, available_at
)
OVERRIDING SYSTEM VALUE
SELECT g - $1 - 1, 1000000000 + g, 1 + g % 997, 1 + (g + 1) % 997, 1 + g % 5, 'benchmark history', g % 3,
       'completed', 'van-' || g % 500, f - interval '50 minutes', f - interval '40 minutes', f, f, 1,
       f - interval '50 minutes'
FROM generate_series(1, $1::bigint) AS g,
     LATERAL (SELECT now() - make_interval(secs => $2 * 86400.0 * ($1 - g) / $1) AS f) AS finished;

-- name: bench_history_left :one
-- Finished tasks older than $1 days at $2 (the sweep's clock), and events of tasks that no longer exist: both 0
-- after a clean sweep.
SELECT (SELECT count(*) FROM tasks WHERE finished_at < $2::timestamptz - make_interval(days => $1)) AS old_tasks,
       (SELECT count(*) FROM task_events e WHERE NOT EXISTS (SELECT FROM tasks t WHERE t.id = e.task_id))
           AS orphan_events;

-- name: bench_history_replication_role :exec
-- For this transaction only: no triggers, foreign-key checks included (superuser).
SET LOCAL session_replication_role = replica;

-- name: bench_history_vacuum :exec
VACUUM ANALYZE tasks, task_events;

-- name: bench_listeners :one
-- Service processes up: each worker's dispatcher holds one connection whose only statement was its LISTEN.
SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %';

-- name: bench_now :one
SELECT now();

-- name: bench_peer_connections :one
-- The minimal app's connections (bench/peer.py names them): each worker opens its pool's first ones at start.
SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'bench-peer';

-- name: bench_pg_settings :many
-- current_setting() gives each value with its unit, as postgresql.conf would (256MB, not 32768 x 8kB).
SELECT name, current_setting(name) AS setting FROM pg_settings WHERE name = ANY($1::text[]) ORDER BY name;

-- name: bench_queue_stats :one
-- The queue table's bloat and the ready index's buffer traffic, with the database's clock.
SELECT clock_timestamp() AS at, t.n_live_tup, t.n_dead_tup, t.n_tup_upd, t.n_tup_hot_upd, t.autovacuum_count,
       t.autoanalyze_count, i.idx_blks_read + i.idx_blks_hit AS ready_idx_blocks,
       pg_relation_size('tasks') AS table_bytes, pg_relation_size('tasks_ready_idx') AS ready_idx_bytes
FROM pg_stat_user_tables t, pg_statio_user_indexes i
WHERE t.relname = 'tasks' AND i.indexrelname = 'tasks_ready_idx';

-- name: bench_server_version :one
SELECT current_setting('server_version') AS version;

-- name: bench_status_counts :many
SELECT status, count(*) AS n FROM tasks GROUP BY status;

-- name: bench_transactions :one
-- Transactions committed or rolled back in database $1 so far (counted by every backend of it).
SELECT xact_commit + xact_rollback AS xacts FROM pg_stat_database WHERE datname = $1;

-- name: bench_station_claims_insert :exec
-- A free claim row per station of the backlog, as a system that has run a while has one per station: a
-- dispatch's claim is then an update in place, and statistics taken now know the table's size.
INSERT INTO station_claims (station_id)
SELECT station FROM tasks CROSS JOIN LATERAL (VALUES (from_station_id), (to_station_id)) s (station)
ON CONFLICT DO NOTHING;

-- name: bench_vacuum_analyze :exec
VACUUM ANALYZE tasks, station_claims;

-- name: bench_api_key_insert :exec
-- Worker keys for the auth scenario: ids $1, SHA-256 digests $2, worker ids $3 (as the service issues them).
INSERT INTO api_keys (key_id, digest, role, worker_id, created_by)
SELECT key_id, digest, 'worker', worker_id, 'bench'
FROM unnest($1::text[], $2::bytea[], $3::text[]) AS k (key_id, digest, worker_id);
