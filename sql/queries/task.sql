-- Tasks: approval, dispatch, the holder's calls, operator actions, rescue and reads. Every state change is
-- one conditional UPDATE, so the database (not Python) decides who wins a race, and each writes its
-- task_events row in the same statement. Calls from a holder match worker_id and, when given, lease_id: a
-- late call from an earlier lease of the same task changes nothing.
--
-- A call on one task returns the task with `changed`: the updated row (true), else the row as it is (false,
-- as River's JobCancel), else no row when there is no such task, so the caller says why from this one
-- result. The unchanged row is read FOR UPDATE: when the UPDATE waited for a racing change and then no longer
-- matched, the lock reads that change's result, where the statement's snapshot still shows the row before it.
--
-- The clock is a parameter, `coalesce($n::timestamptz, now())` (as River's queries take it): the service
-- passes null, tests pass the time they need. The last parameter of each is the actor recorded with the
-- event (a key id, `oidc:<subject>`, ...: who did it).
--
-- A task's ending (completed, failed, canceled) is also its suggestion's outcome (GET /suggestions/outcomes),
-- written by the statement that ends it (`ended`). Dispatch writes none (docs/console.md: a trigger on
-- task_events would have cost each dispatch statement 3.6 % more instructions in PostgreSQL).

-- name: task_age :one
-- Priority aging, run by the maintenance loop: a ready task's aging is one more per $1 minutes it has been
-- ready (since approval, or its not_before), at most $2; up to $4 tasks per pass, $3 the clock. Per step k
-- the tasks still at k and due for k + 1 come from tasks_aging_idx, longest-waiting first. Rows a dispatch is
-- taking are skipped (the next pass sees them, if they are still ready). Returns how many were raised.
WITH due AS (
    SELECT t.id
    FROM generate_series(0, $2::integer - 1) AS k
    CROSS JOIN LATERAL (
        SELECT id
        FROM tasks
        WHERE status = 'ready' AND aging = k
          AND greatest(created_at, not_before)
              <= coalesce($3::timestamptz, now()) - make_interval(secs => (k + 1) * $1::float8 * 60)
        ORDER BY greatest(created_at, not_before)
        LIMIT $4
        FOR UPDATE SKIP LOCKED
    ) t
    LIMIT $4
),
raised AS (
    UPDATE tasks t
    SET aging = least($2::integer, floor(
        extract(epoch FROM coalesce($3::timestamptz, now()) - greatest(t.created_at, t.not_before))
        / ($1::float8 * 60)))::integer
    FROM due
    WHERE t.id = due.id
    RETURNING 1
)
SELECT count(*) AS raised FROM raised;

-- name: task_approve_many :many
-- Turn pending suggestions into ready tasks and delete the suggestions, recording each as approved, in one
-- statement. Returns only the tasks this call created: ids approved earlier (or by a racing call, whose DELETE
-- this one waited for) are read afterwards with task_list_by_suggestions, which runs with a fresh snapshot.
-- $2 is the clock, $3 the actor. A task whose stations' latest status cannot serve it is flagged
-- (stale_reason) from the start.
WITH approved AS (
    DELETE FROM suggestions
    WHERE id = ANY($1::bigint[])
    RETURNING id, from_station_id, to_station_id, qty, reason, priority, not_before, created_at
),
created AS (
    INSERT INTO tasks (
        suggestion_id, from_station_id, to_station_id, qty, reason, priority, not_before, created_at,
        available_at, stale_reason
    )
    SELECT a.id, a.from_station_id, a.to_station_id, a.qty, a.reason, a.priority, a.not_before,
           coalesce($2::timestamptz, now()), coalesce(a.not_before, $2::timestamptz, now()),
           task_stale_reason(a.qty, a.from_station_id, f.num_bikes_available, a.to_station_id,
                             d.num_docks_available)
    FROM approved a
    LEFT JOIN stations f ON f.id = a.from_station_id
    LEFT JOIN stations d ON d.id = a.to_station_id
    ORDER BY a.id
    RETURNING *
),
logged AS (
    INSERT INTO task_events (task_id, event, at, actor)
    SELECT id, 'approved', created_at, $3::text FROM created
),
decided AS (
    INSERT INTO suggestion_outcomes (
        suggestion_id, outcome, task_id, from_station_id, to_station_id, qty, priority, suggested_at, at,
        actor
    )
    SELECT a.id, 'approved', c.id, a.from_station_id, a.to_station_id, a.qty, a.priority, a.created_at,
           c.created_at, $3::text
    FROM approved a
    JOIN created c ON c.suggestion_id = a.id
    ORDER BY a.id
)
SELECT * FROM created;

-- name: task_cancel :one
-- Operator: withdraw a task that is not finished, with reason $2 at $3, by $4. The holder's later calls then
-- get 409.
WITH canceled AS (
    UPDATE tasks
    SET status = 'canceled', lease_expires_at = NULL, finished_at = coalesce($3::timestamptz, now())
    WHERE id = $1 AND status IN ('ready', 'assigned', 'stalled')
    RETURNING *
),
logged AS (
    INSERT INTO task_events (task_id, event, worker_id, detail, at, actor)
    SELECT id, 'canceled', worker_id, $2::text, coalesce($3::timestamptz, now()), $4::text FROM canceled
),
ended AS (
    INSERT INTO suggestion_outcomes (
        suggestion_id, outcome, task_id, from_station_id, to_station_id, qty, priority, at, reason, actor
    )
    SELECT suggestion_id, 'canceled', id, from_station_id, to_station_id, qty, priority,
           coalesce($3::timestamptz, now()), $2::text, $4::text
    FROM canceled
),
unchanged AS (
    SELECT * FROM tasks WHERE id = $1 AND NOT EXISTS (SELECT FROM canceled) FOR UPDATE
)
SELECT true AS changed, * FROM canceled
UNION ALL
SELECT false, * FROM unchanged;

-- name: task_complete :one
-- Finish a task held by $2 (any holder when null) under lease $3 (any when null), at $4, by $5.
WITH completed AS (
    UPDATE tasks
    SET status = 'completed', completed_at = coalesce($4::timestamptz, now()), lease_expires_at = NULL,
        finished_at = coalesce($4::timestamptz, now())
    WHERE id = $1
      AND status = 'assigned'
      AND ($2::text IS NULL OR worker_id = $2::text)
      AND ($3::uuid IS NULL OR lease_id = $3::uuid)
    RETURNING *
),
logged AS (
    INSERT INTO task_events (task_id, event, worker_id, at, actor)
    SELECT id, 'completed', worker_id, completed_at, $5::text FROM completed
),
ended AS (
    INSERT INTO suggestion_outcomes (
        suggestion_id, outcome, task_id, from_station_id, to_station_id, qty, priority, at, reason, actor
    )
    SELECT suggestion_id, 'completed', id, from_station_id, to_station_id, qty, priority,
           completed_at, NULL, $5::text
    FROM completed
),
unchanged AS (
    SELECT * FROM tasks WHERE id = $1 AND NOT EXISTS (SELECT FROM completed) FOR UPDATE
)
SELECT true AS changed, * FROM completed
UNION ALL
SELECT false, * FROM unchanged;

-- name: task_delete_finished :one
-- Retention: delete up to $2 tasks that finished (completed, canceled, failed) more than $1 before $3, oldest
-- first, from $4 on (null: the oldest), with their events; returns how many of each and the last finished_at
-- deleted, which the maintenance loop passes as $4 to the next batch of a sweep: each batch then starts where
-- the last one ended instead of stepping over the index entries of every row deleted before it (they stay in
-- the index until vacuum), and a sweep costs as many rows as it deletes. Each call is its own short
-- transaction. SKIP LOCKED: a row an operator is retrying right now is left for the next sweep.
WITH doomed AS (
    SELECT array_agg(id) AS ids, max(finished_at) AS last
    FROM (
        SELECT id, finished_at
        FROM tasks
        WHERE finished_at IS NOT NULL
          AND finished_at < coalesce($3::timestamptz, now()) - $1::interval
          AND ($4::timestamptz IS NULL OR finished_at >= $4::timestamptz)
        ORDER BY finished_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ) batch
),
-- By `= ANY(ids)`, not a join with the batch: the planner then looks each id up in the index whatever it
-- believes of the batch's size (a join was planned as a scan of all history). Deleted here rather than by the
-- foreign key's cascade, so they are counted; the cascade then finds none.
events AS (
    DELETE FROM task_events WHERE task_id = ANY((SELECT ids FROM doomed)::bigint[]) RETURNING 1
),
deleted AS (
    DELETE FROM tasks WHERE id = ANY((SELECT ids FROM doomed)::bigint[]) RETURNING 1
)
SELECT (SELECT count(*) FROM deleted) AS tasks, (SELECT count(*) FROM events) AS events,
       (SELECT last FROM doomed) AS last;

-- name: task_dispatch :one
-- Assign the best available ready task to worker $1 for $2 seconds: highest effective priority (priority +
-- aging), then oldest, then lowest id. The scan walks tasks_ready_idx; SKIP LOCKED lets concurrent
-- dispatchers each take a different row instead of queueing behind the first, and the row lock lasts only
-- this statement. With an idempotency key $3, a task this worker already holds under that key is returned
-- instead. $4 is the clock (available_at stays a filter on the index scan, whichever clock), $5 the actor. A
-- worker registered as off shift gets nothing.
--
-- One van per station: a task whose pickup or drop-off station is held by an assigned task is passed over,
-- and with $6 (ONE_VAN_PER_STATION) the chosen task's stations are claimed in this statement, in station
-- order (so that two claiming statements never wait for each other in a cycle). Without $6 nothing is claimed,
-- so nothing is held but what was claimed before. $6 guards only the write: a parameter that removed the
-- filter's subqueries would make custom plans so much cheaper than the generic one that the statement would
-- be planned again at every execution. Of two dispatches in flight that chose tasks at one station, the
-- second waits at the claim for the first to commit and then fails there (station_claim_refused: nothing of
-- it stays) and is run again, in a snapshot that shows the claim. The filter here has no side effect (no advisory lock), so that a plan that reads more rows than the head (on
-- statistics that say few tasks are ready) is slower, never harmful. The held claims of the task's two
-- stations are read per task looked at, from station_claims_held_idx (as small as the vans at work), as an
-- ARRAY(...) subquery: never planned as a hash or an anti-join reading every held claim (as an EXISTS may
-- be), and estimated to let almost every task through (`NOT ... && ...`), where an EXISTS counts as half and
-- a scalar subquery's IS NULL as 0.5 %: with fewer ready tasks expected than the batch takes, a sort of every
-- ready task would look cheaper than the index's head.
WITH held AS (
    SELECT *
    FROM tasks
    WHERE $3::text IS NOT NULL AND worker_id = $1 AND dispatch_key = $3::text AND status = 'assigned'
),
chosen AS (
    SELECT id, from_station_id, to_station_id
    FROM tasks
    WHERE status = 'ready' AND available_at <= coalesce($4::timestamptz, now())
      AND NOT ARRAY[from_station_id, to_station_id] && ARRAY(
          SELECT c.station_id FROM station_claims c
          WHERE c.station_id = ANY (ARRAY[from_station_id, to_station_id]) AND c.task_id IS NOT NULL
      )
      AND NOT EXISTS (SELECT 1 FROM held)
      AND NOT EXISTS (SELECT FROM workers WHERE worker_id = $1 AND NOT on_shift)
    ORDER BY priority::bigint + aging DESC, created_at, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
),
claimed AS (
    INSERT INTO station_claims (station_id, task_id, worker_id)
    SELECT s.station, c.id, $1 FROM chosen c
    CROSS JOIN LATERAL (VALUES (c.from_station_id), (c.to_station_id)) s (station)
    WHERE $6::boolean
    ORDER BY s.station
    ON CONFLICT (station_id) DO UPDATE
    SET task_id = CASE WHEN station_claims.task_id IS NULL THEN excluded.task_id
                       ELSE station_claim_refused(excluded.station_id) END,
        worker_id = excluded.worker_id
),
assigned AS (
    UPDATE tasks t
    SET status = 'assigned', worker_id = $1, assigned_at = coalesce($4::timestamptz, now()),
        lease_id = gen_random_uuid(), lease_seconds = $2::integer,
        lease_expires_at = coalesce($4::timestamptz, now()) + make_interval(secs => $2::integer),
        dispatch_key = $3::text,
        picked_up_at = NULL
    WHERE t.id = (SELECT id FROM chosen LIMIT 1)
    RETURNING t.*
),
logged AS (
    INSERT INTO task_events (task_id, event, worker_id, at, actor)
    SELECT id, 'assigned', worker_id, assigned_at, $5::text FROM assigned
)
SELECT * FROM held
UNION ALL
SELECT * FROM assigned;

-- name: task_dispatch_key_lock :exec
-- Taken by a request with an Idempotency-Key, in the transaction of its task_dispatch: a racing retry with
-- the same key waits here for the first to commit, so its own statement then finds the task held. Without it
-- the retry's snapshot misses the uncommitted assignment and SKIP LOCKED skips the task: a 404.
SELECT pg_advisory_xact_lock(hashtext('baywheels.dispatch_key'), hashtext($1::text || ' ' || $2::text));

-- name: task_dispatch_many :many
-- Coalesced dispatch: pair up to n locked ready tasks, in dispatch order, with n waiting workers in arrival
-- order ($1 worker ids, $2 lease seconds, $4 actors; $3 the clock), so one commit serves many workers.
-- Returns each assigned task with the 1-based position (ord) of the worker it went to; workers past the last
-- task get nothing, and so do workers registered as off shift. $5: one van per station, as in task_dispatch;
-- tasks of the batch that share a station go one per statement, whatever $5 (for the same reason).
WITH waiting AS (
    SELECT w.*, row_number() OVER (ORDER BY w.ord) AS n
    FROM unnest($1::text[], $2::integer[], $4::text[]) WITH ORDINALITY AS w (worker_id, lease_seconds, actor, ord)
    WHERE NOT EXISTS (SELECT FROM workers k WHERE k.worker_id = w.worker_id AND NOT k.on_shift)
),
locked AS (
    SELECT id, priority::bigint + aging AS effective, created_at, from_station_id, to_station_id
    FROM tasks
    WHERE status = 'ready' AND available_at <= coalesce($3::timestamptz, now())
      AND NOT ARRAY[from_station_id, to_station_id] && ARRAY(
          SELECT c.station_id FROM station_claims c
          WHERE c.station_id = ANY (ARRAY[from_station_id, to_station_id]) AND c.task_id IS NOT NULL
      )
    ORDER BY priority::bigint + aging DESC, created_at, id
    -- A limit the planner can read (a constant in a custom plan): one it cannot it takes for a tenth of the
    -- table, and a sort of every ready task then looks cheaper than the index's head.
    LIMIT cardinality($1::text[])
    FOR UPDATE SKIP LOCKED
),
-- FOR UPDATE cannot share a query level with a window function, hence the separate numbering step.
ranked AS (
    SELECT id, from_station_id, to_station_id, row_number() OVER (ORDER BY effective DESC, created_at, id) AS n
    FROM locked
),
-- One van per station within the batch too (this transaction's own advisory locks do not stop it): a task
-- sharing a station with an earlier one of the batch stays ready for the next statement.
kept AS (
    SELECT r.id, r.from_station_id, r.to_station_id, row_number() OVER (ORDER BY r.n) AS n
    FROM ranked r
    WHERE NOT EXISTS (
        SELECT FROM ranked e
        WHERE e.n < r.n
          AND (e.from_station_id IN (r.from_station_id, r.to_station_id)
               OR e.to_station_id IN (r.from_station_id, r.to_station_id))
    )
),
paired AS (
    SELECT k.id, k.from_station_id, k.to_station_id, w.worker_id, w.lease_seconds, w.actor, w.ord
    FROM kept k
    JOIN waiting w ON w.n = k.n
),
claimed AS (
    INSERT INTO station_claims (station_id, task_id, worker_id)
    SELECT s.station, p.id, p.worker_id FROM paired p
    CROSS JOIN LATERAL (VALUES (p.from_station_id), (p.to_station_id)) s (station)
    WHERE $5::boolean
    ORDER BY s.station
    ON CONFLICT (station_id) DO UPDATE
    SET task_id = CASE WHEN station_claims.task_id IS NULL THEN excluded.task_id
                       ELSE station_claim_refused(excluded.station_id) END,
        worker_id = excluded.worker_id
),
assigned AS (
    UPDATE tasks t
    SET status = 'assigned', worker_id = p.worker_id, assigned_at = coalesce($3::timestamptz, now()),
        lease_id = gen_random_uuid(), lease_seconds = p.lease_seconds,
        lease_expires_at = coalesce($3::timestamptz, now()) + make_interval(secs => p.lease_seconds),
        dispatch_key = NULL, picked_up_at = NULL
    FROM paired p
    WHERE t.id = p.id
    RETURNING t.*, p.ord, p.actor
),
logged AS (
    INSERT INTO task_events (task_id, event, worker_id, at, actor)
    SELECT id, 'assigned', worker_id, assigned_at, actor FROM assigned
)
SELECT * FROM assigned;

-- name: task_dispatch_near :one
-- Dispatch for a van that says where it is ($6 lat, $7 lon; $8 accuracy_m and $9 load are kept with them on
-- its workers row, in this statement). The task: only what the van can carry (qty <= capacity - load, when
-- its capacity is registered; load $9, else 0); the highest effective priority first (a band); within the
-- band the nearest pickup station (great-circle; within $10 km when set), then the oldest. $1..$5 as in
-- task_dispatch, $11 one van per station (as there, and with advisory locks: a station another dispatch is
-- choosing right now is passed over for the next nearest).
--
-- The rule and its plan are the function task_dispatch_near_many (migration 012), here for one van, so that
-- it is written once: the coalesced statement below runs it for many. Through the function, one van costs
-- less than the statement that was here did, not more: it computes places without earthdistance's
-- ll_to_earth, which runs as a SQL function at each use (test_queries_plan shows the plan that runs inside).
SELECT (d.task).*
FROM task_dispatch_near_many(ARRAY[$1::text], ARRAY[$2::integer], ARRAY[$3::text], ARRAY[$6::float8],
                             ARRAY[$7::float8], ARRAY[$8::float8], ARRAY[$9::integer], ARRAY[$5::text],
                             $10::float8, $4::timestamptz, $11::boolean) d;

-- name: task_dispatch_near_many :many
-- Coalesced dispatch for vans that say where they are: each van, in arrival order, gets the best task for it
-- by task_dispatch_near's rule, and one commit serves them all. The rule is the function
-- task_dispatch_near_many (migration 012: a PL/pgSQL loop, since each van must see what the vans before it
-- took). $1 worker ids, $2 lease seconds, $3 Idempotency-Keys, $4 lat, $5 lon, $6 accuracy_m, $7 load, $8
-- actors (aligned by van); $9 reach in km, $10 clock, $11 one van per station. Returns each task with the
-- 1-based position (ord) of the van it went to; a van that gets nothing has no row.
SELECT d.ord, (d.task).*
FROM task_dispatch_near_many($1::text[], $2::integer[], $3::text[], $4::float8[], $5::float8[],
                             $6::float8[], $7::integer[], $8::text[], $9::float8, $10::timestamptz,
                             $11::boolean) d;

-- name: task_event_list :many
-- The history of one task, oldest first.
SELECT event, worker_id, detail, at, actor
FROM task_events
WHERE task_id = $1
ORDER BY id;

-- name: task_fail :one
-- The holder reports a failed attempt with error $4. Below max attempts ($6) the task is ready again after
-- an exponential backoff (base $5 seconds, doubling per attempt, capped at an hour); at max it is 'failed',
-- the dead letter. $7 is the clock, $8 the actor.
WITH failed AS (
    UPDATE tasks
    SET attempts = attempts + 1,
        last_error = $4,
        status = CASE WHEN attempts + 1 >= $6 THEN 'failed' ELSE 'ready' END,
        worker_id = CASE WHEN attempts + 1 >= $6 THEN worker_id END,
        assigned_at = CASE WHEN attempts + 1 >= $6 THEN assigned_at END,
        lease_id = CASE WHEN attempts + 1 >= $6 THEN lease_id END,
        lease_expires_at = NULL,
        dispatch_key = NULL,
        picked_up_at = NULL,
        available_at = coalesce($7::timestamptz, now())
            + make_interval(secs => least($5::double precision * 2 ^ attempts, 3600)),
        finished_at = CASE WHEN attempts + 1 >= $6 THEN coalesce($7::timestamptz, now()) END
    WHERE id = $1
      AND status = 'assigned'
      AND worker_id = $2
      AND ($3::uuid IS NULL OR lease_id = $3::uuid)
    RETURNING *
),
logged AS (
    INSERT INTO task_events (task_id, event, worker_id, detail, at, actor)
    SELECT id, CASE status WHEN 'failed' THEN 'failed' ELSE 'attempt_failed' END, $2, $4,
           coalesce($7::timestamptz, now()), $8::text
    FROM failed
),
ended AS (
    INSERT INTO suggestion_outcomes (
        suggestion_id, outcome, task_id, from_station_id, to_station_id, qty, priority, at, reason, actor
    )
    SELECT suggestion_id, 'failed', id, from_station_id, to_station_id, qty, priority,
           coalesce($7::timestamptz, now()), $4, $8::text
    FROM failed
    WHERE status = 'failed'
),
unchanged AS (
    SELECT * FROM tasks WHERE id = $1 AND NOT EXISTS (SELECT FROM failed) FOR UPDATE
)
SELECT true AS changed, * FROM failed
UNION ALL
SELECT false, * FROM unchanged;

-- name: task_get :one
SELECT * FROM tasks WHERE id = $1;

-- name: task_heartbeat :one
-- The holder extends its lease from $5 by $4 seconds, or by the length it was dispatched with.
WITH extended AS (
    UPDATE tasks
    SET lease_expires_at = coalesce($5::timestamptz, now())
            + make_interval(secs => coalesce($4::integer, lease_seconds)),
        lease_seconds = coalesce($4::integer, lease_seconds)
    WHERE id = $1
      AND status = 'assigned'
      AND worker_id = $2
      AND ($3::uuid IS NULL OR lease_id = $3::uuid)
    RETURNING *
),
unchanged AS (
    SELECT * FROM tasks WHERE id = $1 AND NOT EXISTS (SELECT FROM extended) FOR UPDATE
)
SELECT true AS changed, * FROM extended
UNION ALL
SELECT false, * FROM unchanged;

-- name: task_list :many
-- One page of tasks after a cursor, optionally filtered by status ($1) and worker ($2).
SELECT *
FROM tasks
WHERE ($1::text IS NULL OR status = $1::text)
  AND ($2::text IS NULL OR worker_id = $2::text)
  AND id > $3
ORDER BY id
LIMIT $4;

-- name: task_list_by_station_finished :many
-- The last $2 finished (completed, failed, canceled) tasks from or to station $1, newest first.
SELECT *
FROM tasks
WHERE (from_station_id = $1 OR to_station_id = $1) AND status IN ('completed', 'failed', 'canceled')
ORDER BY id DESC
LIMIT $2;

-- name: task_list_by_station_open :many
-- The open (ready, assigned, stalled) tasks from or to station $1, oldest first.
SELECT *
FROM tasks
WHERE (from_station_id = $1 OR to_station_id = $1) AND is_open
ORDER BY id;

-- name: task_list_by_suggestions :many
-- The tasks made from these suggestions, whichever call approved them.
SELECT * FROM tasks WHERE suggestion_id = ANY($1::bigint[]);

-- name: task_list_stale :many
-- As task_list, only the open tasks flagged stale, read through tasks_stale_idx (a finished task keeps the
-- flag it ended with, as a record, and is not listed).
SELECT *
FROM tasks
WHERE stale_reason IS NOT NULL AND is_open
  AND ($1::text IS NULL OR status = $1::text)
  AND ($2::text IS NULL OR worker_id = $2::text)
  AND id > $3
ORDER BY id
LIMIT $4;

-- name: task_notify_due :one
-- Wake long-polling workers when delayed or backed-off tasks became due since $1 (no trigger fires for the
-- mere passing of time), by $2 (the database's clock when null; tests set it). Returns that clock, the lower
-- bound of the next call. It looks a minute further back: a task that fell due before its transaction
-- committed was invisible to the check that covered its due time, and would otherwise never be announced. A
-- repeat costs one NOTIFY per call, and only while a due task stays ready, i.e. while nobody is waiting for
-- one.
SELECT coalesce($2::timestamptz, now()) AS checked_at,
       (SELECT count(*) FROM (
            SELECT pg_notify('baywheels_task_ready', '')
            FROM tasks
            WHERE status = 'ready'
              AND available_at > $1::timestamptz - interval '1 minute'
              AND available_at <= coalesce($2::timestamptz, now())
            LIMIT 1
       ) due) AS due;

-- name: task_pickup :one
-- The holder has the bikes on the van (at $4, by $5): from now on an expired lease makes the task
-- 'stalled', not 'ready'.
WITH picked AS (
    UPDATE tasks
    SET picked_up_at = coalesce($4::timestamptz, now())
    WHERE id = $1
      AND status = 'assigned'
      AND picked_up_at IS NULL
      AND worker_id = $2
      AND ($3::uuid IS NULL OR lease_id = $3::uuid)
    RETURNING *
),
logged AS (
    INSERT INTO task_events (task_id, event, worker_id, at, actor)
    SELECT id, 'picked_up', worker_id, picked_up_at, $5::text FROM picked
),
unchanged AS (
    SELECT * FROM tasks WHERE id = $1 AND NOT EXISTS (SELECT FROM picked) FOR UPDATE
)
SELECT true AS changed, * FROM picked
UNION ALL
SELECT false, * FROM unchanged;

-- name: task_release :one
-- The holder hands the task back with reason $4: ready again at once ($5), no attempt counted; by $6.
WITH released AS (
    UPDATE tasks
    SET status = 'ready', worker_id = NULL, assigned_at = NULL, lease_id = NULL, lease_seconds = NULL,
        lease_expires_at = NULL, dispatch_key = NULL, picked_up_at = NULL,
        available_at = coalesce($5::timestamptz, now())
    WHERE id = $1
      AND status = 'assigned'
      AND worker_id = $2
      AND ($3::uuid IS NULL OR lease_id = $3::uuid)
    RETURNING *
),
logged AS (
    INSERT INTO task_events (task_id, event, worker_id, detail, at, actor)
    SELECT id, 'released', $2, $4::text, available_at, $6::text FROM released
),
unchanged AS (
    SELECT * FROM tasks WHERE id = $1 AND NOT EXISTS (SELECT FROM released) FOR UPDATE
)
SELECT true AS changed, * FROM released
UNION ALL
SELECT false, * FROM unchanged;

-- name: task_rescue_expired :many
-- Take back tasks whose lease ran out by $3 (the database's clock when null; tests set it), up to $2 per
-- call, counting an attempt: 'stalled' when the bikes were picked up (an operator must look), 'failed' at
-- max attempts ($1), else 'ready' for another worker. Leases that ran out in ($4, $5] are spared: during the
-- grace after an outage, the maintenance loop passes the outage there, so a holder's retried complete lands.
WITH expired AS (
    SELECT id
    FROM tasks
    WHERE status = 'assigned'
      AND lease_expires_at <= coalesce($3::timestamptz, now())
      AND ($4::timestamptz IS NULL OR lease_expires_at <= $4::timestamptz OR lease_expires_at > $5::timestamptz)
    ORDER BY lease_expires_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
rescued AS (
    UPDATE tasks t
    SET attempts = t.attempts + 1,
        status = CASE
            WHEN t.picked_up_at IS NOT NULL THEN 'stalled'
            WHEN t.attempts + 1 >= $1 THEN 'failed'
            ELSE 'ready'
        END,
        last_error = CASE WHEN t.picked_up_at IS NULL AND t.attempts + 1 >= $1 THEN 'lease expired'
                          ELSE t.last_error END,
        worker_id = CASE WHEN t.picked_up_at IS NULL AND t.attempts + 1 < $1 THEN NULL ELSE t.worker_id END,
        assigned_at = CASE WHEN t.picked_up_at IS NULL AND t.attempts + 1 < $1 THEN NULL
                           ELSE t.assigned_at END,
        lease_id = NULL,
        lease_expires_at = NULL,
        dispatch_key = NULL,
        available_at = coalesce($3::timestamptz, now()),
        finished_at = CASE WHEN t.picked_up_at IS NULL AND t.attempts + 1 >= $1 THEN coalesce($3::timestamptz, now())
                      END
    FROM expired e
    WHERE t.id = e.id
    RETURNING t.*
),
-- tasks t is read as it was before this statement: the worker that held the lease. A dead-lettered task also
-- gets the 'failed' event that task_fail writes, so the history reads the same whichever way it failed.
logged AS (
    INSERT INTO task_events (task_id, event, worker_id, detail, actor)
    SELECT r.id, e.event, t.worker_id, e.detail, 'system'
    FROM rescued r
    JOIN tasks t ON t.id = r.id
    CROSS JOIN LATERAL (VALUES (1, 'lease_expired', r.status), (2, 'failed', r.last_error)) e (n, event, detail)
    WHERE e.event = 'lease_expired' OR r.status = 'failed'
    ORDER BY r.id, e.n
),
ended AS (
    INSERT INTO suggestion_outcomes (
        suggestion_id, outcome, task_id, from_station_id, to_station_id, qty, priority, at, reason, actor
    )
    SELECT suggestion_id, 'failed', id, from_station_id, to_station_id, qty, priority,
           available_at, last_error, 'system'
    FROM rescued
    WHERE status = 'failed'
)
SELECT * FROM rescued;

-- name: task_retry :one
-- Operator: put a failed, canceled or stalled task back to ready with a fresh attempt budget (reason $2, at
-- $3, by $4), not before its not_before.
WITH retried AS (
    UPDATE tasks
    SET status = 'ready', attempts = 0, worker_id = NULL, assigned_at = NULL, lease_id = NULL,
        lease_seconds = NULL, lease_expires_at = NULL, dispatch_key = NULL, picked_up_at = NULL,
        completed_at = NULL, finished_at = NULL,
        available_at = greatest(coalesce($3::timestamptz, now()), not_before)
    WHERE id = $1 AND status IN ('failed', 'canceled', 'stalled')
    RETURNING *
),
logged AS (
    INSERT INTO task_events (task_id, event, detail, at, actor)
    SELECT id, 'retried', $2::text, coalesce($3::timestamptz, now()), $4::text FROM retried
),
unchanged AS (
    SELECT * FROM tasks WHERE id = $1 AND NOT EXISTS (SELECT FROM retried) FOR UPDATE
)
SELECT true AS changed, * FROM retried
UNION ALL
SELECT false, * FROM unchanged;

-- name: task_stale_refresh :one
-- Re-evaluate the stale flag of the open tasks from or to the stations $1, whose bikes or docks available
-- have just changed: set where the latest status cannot serve the task, cleared where it now can. Only rows
-- whose flag changes are written. Returns how many were.
WITH evaluated AS (
    SELECT o.id,
           task_stale_reason(o.qty, o.from_station_id, f.num_bikes_available, o.to_station_id,
                             d.num_docks_available) AS reason
    FROM tasks o
    LEFT JOIN stations f ON f.id = o.from_station_id
    LEFT JOIN stations d ON d.id = o.to_station_id
    WHERE o.is_open AND (o.from_station_id = ANY($1::integer[]) OR o.to_station_id = ANY($1::integer[]))
),
refreshed AS (
    UPDATE tasks t
    SET stale_reason = e.reason
    FROM evaluated e
    WHERE t.id = e.id AND t.is_open AND t.stale_reason IS DISTINCT FROM e.reason
    RETURNING t.id
)
SELECT count(*) AS flagged FROM refreshed;
