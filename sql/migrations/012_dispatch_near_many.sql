-- Location-aware dispatch for many vans in one statement and one commit (task_dispatch_near_many), as
-- task_dispatch_many is for workers without a position: under load, the dispatcher gives the vans that queue
-- behind its busy statements to one call of this function instead of a statement and a commit each.
--
-- The best task differs per van, and one set-based statement cannot choose them in turn (each choice depends
-- on the ones before it; all parts of a statement share one snapshot, and SKIP LOCKED does not skip rows its
-- own transaction locked, so two vans would take the same task). A PL/pgSQL loop can: the vans choose one at
-- a time, in arrival order, each passing over the tasks chosen before it in the batch and, with one van per
-- station, their stations, which is what it would see had the vans before it each run task_dispatch_near and
-- committed (the claims of a batch are written only after the loop, and this transaction's own advisory
-- locks do not stop it: pg_try_advisory_xact_lock succeeds again for a lock it holds; so the station rule
-- within a batch is these arrays). Between batches and single dispatches, the claims and advisory locks work
-- as for one van. Then one statement writes for all: positions, claims, assignments and their events. No
-- subtransactions (an EXCEPTION block per van): past 64 in one transaction they overflow every backend's
-- snapshot cache. A batch that loses a station's claim to a racing dispatch fails whole, and the service runs
-- it again.
--
-- This is the one definition of the rule: task_dispatch_near calls it for one van.
--
-- Arrays aligned by van: worker ids, lease seconds, Idempotency-Keys (null: none), lat, lon, accuracy_m, load
-- (null: 0 for the room; the kept load stays), actors. Then the reach in km (null: none), the clock (null: the
-- database's) and one van per station. Returns each van's task with its 1-based position in the arrays:
-- the task it holds under its key, else the one assigned now; a van that gets nothing has no row.
--
-- Per van: only what the van can carry (qty <= capacity - load, when its capacity is registered); the highest
-- effective priority first (a band); within the band the nearest pickup station (great-circle; within the
-- reach when set), then the oldest; a worker registered as off shift gets nothing. bands walks the distinct
-- effective priorities downwards, one descent of tasks_ready_idx each, only as far as needed; for a band,
-- stations come nearest first from stations_point_idx (the KNN order of <->: the chord through the earth,
-- which orders as the great circle does), bounded by the box of the reach, and each is probed in
-- tasks_ready_station_idx for the band's oldest task: the first found is the answer, and only it is locked.
-- Tasks whose pickup station is not in the registry go to dispatches without a position, except while the
-- registry is empty: then this is task_dispatch's order.
--
-- One van per station as in task_dispatch (a station held by an assigned task is passed over, the chosen
-- tasks' stations are claimed in station order), and more: vans near each other look at the same stations,
-- so a probe also takes the transaction-level advisory lock of both stations of a task (the try fails
-- without waiting): a station another dispatch is choosing right now is passed over for the next nearest,
-- instead of waiting at the claim and running again. Safe here because the probe reads only one station's
-- band, in index order.

-- A place on the earth as earthdistance's ll_to_earth makes it (the same cube), without its cast to the earth
-- domain: ll_to_earth is strict and that cast is not, so PostgreSQL never inlines it and runs it as a SQL
-- function, parsed and planned again in each statement that evaluates it (some 60 us a time, measured: in
-- task_dispatch_near's statement, the van's point three times, and for each station looked at its distance
-- and the KNN order's value, which the scan's output computes even though the index gives the order). This
-- one is inlined into plain arithmetic (5 us).
CREATE FUNCTION earth_point(lat float8, lon float8) RETURNS cube LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN cube(cube(cube(earth() * cos(radians(lat)) * cos(radians(lon))),
                 earth() * cos(radians(lat)) * sin(radians(lon))),
            earth() * sin(radians(lat)));

-- The stations nearest first, for dispatch, as stations_earth_idx is for GET /stations (whose queries keep
-- earthdistance's functions): the index's expression and the query's, both inlined, are the same, so the
-- box and the KNN order are the index's conditions.
CREATE INDEX stations_point_idx ON stations USING gist (earth_point(lat, lon));

CREATE FUNCTION task_dispatch_near_many(
    worker_ids text[], leases integer[], keys text[], lats float8[], lons float8[], accuracies float8[],
    loads integer[], actors text[], max_km float8, clock timestamptz, one_van boolean
) RETURNS TABLE (ord integer, task tasks) LANGUAGE plpgsql
-- Generic plans, made once per connection: left to choose, PostgreSQL plans the writes' statement again at
-- every call (a custom plan looks cheaper for the few rows of a call's arrays than the generic plan's guess
-- of their number), and a lone van then cost more backend CPU than the statement this function replaced,
-- not less. The van's choice is planned so either way, as task_dispatch_near's statement was
-- (test_queries_plan shows that plan).
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    -- One van's values as scalars: parameters of the statement's plan, as the statement's own were.
    van_worker text;
    van_key text;
    van_point cube;
    van_load integer;
    choice record;
    -- The vans' choices so far: the tasks (by van) and, with one van per station, their stations.
    chosen_ord integer[] := '{}';
    chosen_id bigint[] := '{}';
    chosen_from integer[] := '{}';
    chosen_to integer[] := '{}';
    taken_stations integer[] := '{}';
    -- Vans that already hold a task under their Idempotency-Key (only task_dispatch_near passes keys).
    held_ord integer[] := '{}';
    held_id bigint[] := '{}';
    held_task bigint;
    -- No registry yet: a position means nothing to go by, and the vans take task_dispatch's order. Looked at
    -- once per call, so that each van's statement holds only the way it takes.
    no_registry boolean := NOT EXISTS (SELECT FROM stations);
    -- The reach as a chord through the earth (earthdistance's gc_to_sec), which is what the box is enlarged by
    -- and what the distance of a station (cube_distance, the chord) is held to: a chord is at most this
    -- exactly when its great circle is at most the reach. No reach is half the earth's circumference
    -- (20,038 km; the chord is then the diameter), not a condition left out: one plan for both.
    reach float8 := 2 * earth() * sin(least(coalesce(max_km, 20038) * 1000 / earth(), pi()) / 2);
BEGIN
    -- Each van chooses (and locks) its task in turn; the writes for all of them come after, in one statement
    -- (a statement's fixed cost, its plan's start and the constraints' set-up, is most of the cost of writing
    -- one row: one van costs two statements, as many vans cost one more than their number). A van's choice
    -- passes over the tasks chosen before it in the batch (SKIP LOCKED does not skip them: this transaction
    -- holds their locks) and, with one van per station, their stations, as their claims will: it sees what
    -- it would see had each van before it written its claims and its assignment.
    FOR i IN 1 .. coalesce(cardinality(worker_ids), 0) LOOP
        van_worker := worker_ids[i];
        van_key := keys[i];
        van_point := earth_point(lats[i], lons[i]);
        van_load := loads[i];

        IF van_key IS NOT NULL THEN
            SELECT id INTO held_task
            FROM tasks
            WHERE worker_id = van_worker AND dispatch_key = van_key AND status = 'assigned';
            IF FOUND THEN
                held_ord := held_ord || i;
                held_id := held_id || held_task;
                CONTINUE;
            END IF;
        END IF;

        IF NOT no_registry THEN
            WITH RECURSIVE van AS (
                SELECT (SELECT on_shift FROM workers WHERE worker_id = van_worker) IS NOT FALSE AS on_shift,
                       (SELECT capacity FROM workers WHERE worker_id = van_worker) - coalesce(van_load, 0) AS room
            ),
            bands (effective) AS (
                (SELECT priority::bigint + aging FROM tasks WHERE status = 'ready'
                 ORDER BY priority::bigint + aging DESC LIMIT 1)
                UNION ALL
                SELECT (SELECT priority::bigint + aging FROM tasks
                        WHERE status = 'ready' AND priority::bigint + aging < b.effective
                        ORDER BY priority::bigint + aging DESC LIMIT 1)
                FROM bands b
                WHERE b.effective IS NOT NULL
            ),
            -- The van's point and the reach are variables (parameters of the plan, not columns of a CTE), so
            -- that the KNN order and the box are conditions of the index scan on stations.
            nearest AS (
                SELECT found.id, found.from_station_id, found.to_station_id
                FROM bands b
                CROSS JOIN LATERAL (
                    SELECT t.*
                    FROM stations s
                    CROSS JOIN LATERAL (
                        SELECT t.id, t.from_station_id, t.to_station_id
                        FROM tasks t
                        WHERE t.status = 'ready' AND t.from_station_id = s.id
                          AND t.priority::bigint + t.aging = b.effective
                          AND t.available_at <= coalesce(clock, now())
                          AND ((SELECT room FROM van) IS NULL OR t.qty <= (SELECT room FROM van))
                          AND t.id <> ALL (chosen_id)
                          AND t.to_station_id <> ALL (taken_stations)
                          AND (NOT EXISTS (
                              SELECT FROM station_claims c
                              WHERE c.station_id = ANY (ARRAY[t.to_station_id]) AND c.task_id IS NOT NULL
                          )) IS TRUE
                          AND (NOT one_van OR (
                              pg_try_advisory_xact_lock(hashtext('baywheels.station'), t.from_station_id)
                              AND pg_try_advisory_xact_lock(hashtext('baywheels.station'), t.to_station_id)
                          ))
                        ORDER BY t.created_at, t.id
                        LIMIT 1
                        FOR UPDATE SKIP LOCKED
                    ) t
                    WHERE cube_enlarge(van_point, reach, 3) @> earth_point(s.lat, s.lon)
                      AND cube_distance(earth_point(s.lat, s.lon), van_point) <= reach
                      AND s.id <> ALL (taken_stations)
                      AND (NOT EXISTS (
                          SELECT FROM station_claims c
                          WHERE c.station_id = ANY (ARRAY[s.id]) AND c.task_id IS NOT NULL
                      )) IS TRUE
                    ORDER BY earth_point(s.lat, s.lon) <-> van_point
                    LIMIT 1
                ) found
                WHERE b.effective IS NOT NULL AND (SELECT on_shift FROM van)
                LIMIT 1
            )
            SELECT * INTO choice FROM nearest;
        ELSE
            -- No registry yet: the oldest of the highest effective priority that the van can take.
            WITH van AS (
                SELECT (SELECT on_shift FROM workers WHERE worker_id = van_worker) IS NOT FALSE AS on_shift,
                       (SELECT capacity FROM workers WHERE worker_id = van_worker) - coalesce(van_load, 0) AS room
            )
            SELECT id, from_station_id, to_station_id INTO choice
            FROM tasks
            WHERE status = 'ready' AND available_at <= coalesce(clock, now())
              AND id <> ALL (chosen_id)
              AND NOT ARRAY[from_station_id, to_station_id] && taken_stations
              AND NOT ARRAY[from_station_id, to_station_id] && ARRAY(
                  SELECT c.station_id FROM station_claims c
                  WHERE c.station_id = ANY (ARRAY[from_station_id, to_station_id]) AND c.task_id IS NOT NULL
              )
              AND (SELECT on_shift FROM van)
              AND ((SELECT room FROM van) IS NULL OR qty <= (SELECT room FROM van))
            ORDER BY priority::bigint + aging DESC, created_at, id
            LIMIT 1
            FOR UPDATE SKIP LOCKED;
        END IF;

        IF FOUND THEN
            chosen_ord := chosen_ord || i;
            chosen_id := chosen_id || choice.id;
            chosen_from := chosen_from || choice.from_station_id;
            chosen_to := chosen_to || choice.to_station_id;
            IF one_van THEN
                taken_stations := taken_stations || choice.from_station_id || choice.to_station_id;
            END IF;
        END IF;
    END LOOP;

    -- Every van's position and load are kept, whatever it got, in worker order (so that two calls naming the
    -- same workers lock their rows in one order); a worker named twice keeps its last. (The choices read the
    -- workers' rows as they were: the position changes nothing they read.) The claims of the chosen tasks'
    -- stations, in station order (so that two claiming transactions never wait for each other in a cycle): a
    -- station another transaction claimed since this one looked fails the call (station_claim_refused), and
    -- nothing of it stays.
    RETURN QUERY
    WITH located AS (
        INSERT INTO workers (worker_id, lat, lon, accuracy_m, load, position_at)
        SELECT DISTINCT ON (w.worker_id) w.worker_id, w.lat, w.lon, w.accuracy_m, w.load, coalesce(clock, now())
        FROM unnest(worker_ids, lats, lons, accuracies, loads) WITH ORDINALITY
            AS w (worker_id, lat, lon, accuracy_m, load, n)
        ORDER BY w.worker_id, w.n DESC
        ON CONFLICT (worker_id) DO UPDATE
        SET lat = excluded.lat, lon = excluded.lon, accuracy_m = excluded.accuracy_m,
            load = coalesce(excluded.load, workers.load), position_at = excluded.position_at
    ),
    claimed AS (
        INSERT INTO station_claims (station_id, task_id, worker_id)
        SELECT s.station, c.id, worker_ids[c.n]
        FROM unnest(chosen_id, chosen_ord, chosen_from, chosen_to) AS c (id, n, from_station, to_station)
        CROSS JOIN LATERAL (VALUES (c.from_station), (c.to_station)) s (station)
        WHERE one_van
        ORDER BY s.station
        ON CONFLICT (station_id) DO UPDATE
        SET task_id = CASE WHEN station_claims.task_id IS NULL THEN excluded.task_id
                           ELSE station_claim_refused(excluded.station_id) END,
            worker_id = excluded.worker_id
    ),
    assigned AS (
        UPDATE tasks t
        SET status = 'assigned', worker_id = worker_ids[c.n], assigned_at = coalesce(clock, now()),
            lease_id = gen_random_uuid(), lease_seconds = leases[c.n],
            lease_expires_at = coalesce(clock, now()) + make_interval(secs => leases[c.n]),
            dispatch_key = keys[c.n],
            picked_up_at = NULL
        FROM unnest(chosen_id, chosen_ord) AS c (id, n)
        WHERE t.id = c.id
        RETURNING c.n, t
    ),
    logged AS (
        INSERT INTO task_events (task_id, event, worker_id, at, actor)
        SELECT (a.t).id, 'assigned', (a.t).worker_id, (a.t).assigned_at, actors[a.n] FROM assigned a
    )
    SELECT a.n::integer, a.t FROM assigned a
    UNION ALL
    SELECT h.n::integer, t FROM unnest(held_ord, held_id) AS h (n, id) JOIN tasks t ON t.id = h.id;
END;
$$;
