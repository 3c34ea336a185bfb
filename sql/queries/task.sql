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

-- name: task_approve_many :many
-- Turn pending suggestions into ready tasks and delete the suggestions, recording each as approved, in one
-- statement. Returns only the tasks this call created: ids approved earlier (or by a racing call, whose DELETE
-- this one waited for) are read afterwards with task_list_by_suggestions, which runs with a fresh snapshot.
-- $2 is the clock, $3 the actor.
WITH approved AS (
    DELETE FROM suggestions
    WHERE id = ANY($1::bigint[])
    RETURNING id, from_station_id, to_station_id, qty, reason, priority, not_before, created_at
),
created AS (
    INSERT INTO tasks (
        suggestion_id, from_station_id, to_station_id, qty, reason, priority, not_before, created_at,
        available_at
    )
    SELECT id, from_station_id, to_station_id, qty, reason, priority, not_before,
           coalesce($2::timestamptz, now()), coalesce(not_before, $2::timestamptz, now())
    FROM approved
    ORDER BY id
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
    SET status = 'canceled', lease_expires_at = NULL
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
    SET status = 'completed', completed_at = coalesce($4::timestamptz, now()), lease_expires_at = NULL
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

-- name: task_dispatch :one
-- Assign the best available ready task to worker $1 for $2 seconds: highest priority, then oldest, then
-- lowest id. The inner SELECT walks tasks_ready_idx; SKIP LOCKED lets concurrent dispatchers each take a
-- different row instead of queueing behind the first, and the row lock lasts only this statement.
-- With an idempotency key $3, a task this worker already holds under that key is returned instead. $4 is
-- the clock (available_at stays a filter on the index scan, whichever clock), $5 the actor.
WITH held AS (
    SELECT *
    FROM tasks
    WHERE $3::text IS NOT NULL AND worker_id = $1 AND dispatch_key = $3::text AND status = 'assigned'
),
assigned AS (
    UPDATE tasks
    SET status = 'assigned', worker_id = $1, assigned_at = coalesce($4::timestamptz, now()),
        lease_id = gen_random_uuid(), lease_seconds = $2::integer,
        lease_expires_at = coalesce($4::timestamptz, now()) + make_interval(secs => $2::integer),
        dispatch_key = $3::text,
        picked_up_at = NULL
    WHERE id = (
        SELECT id
        FROM tasks
        WHERE status = 'ready' AND available_at <= coalesce($4::timestamptz, now())
        ORDER BY priority DESC, created_at, id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    AND NOT EXISTS (SELECT 1 FROM held)
    RETURNING *
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
-- task get nothing.
WITH waiting AS (
    SELECT *
    FROM unnest($1::text[], $2::integer[], $4::text[]) WITH ORDINALITY AS w (worker_id, lease_seconds, actor, ord)
),
locked AS (
    SELECT id, priority, created_at
    FROM tasks
    WHERE status = 'ready' AND available_at <= coalesce($3::timestamptz, now())
    ORDER BY priority DESC, created_at, id
    LIMIT cardinality($1::text[])
    FOR UPDATE SKIP LOCKED
),
-- FOR UPDATE cannot share a query level with a window function, hence the separate numbering step.
paired AS (
    SELECT l.id, w.worker_id, w.lease_seconds, w.actor, w.ord
    FROM (SELECT id, row_number() OVER (ORDER BY priority DESC, created_at, id) AS n FROM locked) l
    JOIN waiting w ON w.ord = l.n
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
            + make_interval(secs => least($5::double precision * 2 ^ attempts, 3600))
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

-- name: task_list_by_suggestions :many
-- The tasks made from these suggestions, whichever call approved them.
SELECT * FROM tasks WHERE suggestion_id = ANY($1::bigint[]);

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
        available_at = coalesce($3::timestamptz, now())
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
        completed_at = NULL,
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
