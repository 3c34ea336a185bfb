-- The station registry: the GBFS import (gbfs.py decides which row a feed's station is, these write it, all in
-- one transaction) and the reads of GET /stations.

-- name: station_deactivate_missing :many
-- Stations that left the feed ($1: the ids it still names) are kept, marked inactive: tasks and their history
-- name them. Returns the ids deactivated by this import.
UPDATE stations
SET active = false, updated_at = now()
WHERE active AND id <> ALL($1::integer[])
RETURNING id;

-- name: station_feed_lock :exec
-- Taken first by every import, so two (the CLI and a service's refresh) take turns rather than interleave.
SELECT pg_advisory_xact_lock(hashtext('baywheels.gbfs_import'));

-- name: station_get :one
SELECT * FROM stations WHERE id = $1;

-- name: station_history :many
-- Bikes moved out of and into station $1 by completed tasks, per day in the system's time zone (GBFS
-- system_information; UTC before any import said), the $2 days up to the clock $3.
WITH zone AS (
    SELECT coalesce((SELECT timezone FROM gbfs_system), 'UTC') AS name
),
moves AS (
    SELECT completed_at, qty AS bikes_out, 0 AS bikes_in, 1 AS tasks_out, 0 AS tasks_in
    FROM tasks
    WHERE from_station_id = $1 AND status = 'completed'
      AND completed_at > coalesce($3::timestamptz, now()) - make_interval(days => $2::integer)
    UNION ALL
    SELECT completed_at, 0, qty, 0, 1
    FROM tasks
    WHERE to_station_id = $1 AND status = 'completed'
      AND completed_at > coalesce($3::timestamptz, now()) - make_interval(days => $2::integer)
)
SELECT (m.completed_at AT TIME ZONE zone.name)::date AS day,
       sum(m.bikes_out)::integer AS bikes_out, sum(m.bikes_in)::integer AS bikes_in,
       sum(m.tasks_out)::integer AS tasks_out, sum(m.tasks_in)::integer AS tasks_in
FROM moves m CROSS JOIN zone
GROUP BY 1
ORDER BY 1;

-- name: station_id_sequence_sync :exec
-- Ids an import chose explicitly do not advance the identity: keep it past them, for a row added without one.
SELECT setval(pg_get_serial_sequence('stations', 'id'), max(id)) FROM stations HAVING max(id) IS NOT NULL;

-- name: station_list :many
-- One page of stations after a cursor ($1, $2 the page size), filtered by fill (bikes available / capacity)
-- below $3 and above $4 (bounds included; a station without capacity or status has no fill and is left out by
-- either) and by active ($5). Any filter may be null.
SELECT *
FROM stations
WHERE id > $1
  AND ($3::double precision IS NULL OR (capacity > 0 AND num_bikes_available <= $3 * capacity))
  AND ($4::double precision IS NULL OR (capacity > 0 AND num_bikes_available >= $4 * capacity))
  AND ($5::boolean IS NULL OR active = $5)
ORDER BY id
LIMIT $2;

-- name: station_list_matching :many
-- Every station's identifiers, which an import matches the feed's stations against (a few thousand at most).
SELECT id, gbfs_station_id, short_name, legacy_id FROM stations;

-- name: station_list_near :many
-- station_list within $8 metres (great-circle) of ($6, $7). earth_box is the bounding cube that
-- stations_earth_idx answers; earth_distance then drops the corners the box holds beyond the radius.
SELECT *
FROM stations
WHERE earth_box(ll_to_earth($6, $7), $8) @> ll_to_earth(lat, lon)
  AND earth_distance(ll_to_earth($6, $7), ll_to_earth(lat, lon)) <= $8
  AND id > $1
  AND ($3::double precision IS NULL OR (capacity > 0 AND num_bikes_available <= $3 * capacity))
  AND ($4::double precision IS NULL OR (capacity > 0 AND num_bikes_available >= $4 * capacity))
  AND ($5::boolean IS NULL OR active = $5)
ORDER BY id
LIMIT $2;

-- name: station_resolve :one
-- What one suggestion batch names, in one round trip: whether the registry holds any station (empty: any
-- positive integer is accepted, as before the registry), and of the integer ids $1 and GBFS ids $2 named, the
-- stations that exist (id, gbfs id, active), as parallel arrays.
SELECT EXISTS (SELECT FROM stations) AS registry,
       coalesce(array_agg(id), '{}') AS ids,
       coalesce(array_agg(gbfs_station_id), '{}') AS gbfs_ids,
       coalesce(array_agg(active), '{}') AS active
FROM stations
-- Hashed subplans: a batch's thousands of ids cost one pass over the registry, not a search per row.
WHERE id IN (SELECT unnest($1::integer[])) OR gbfs_station_id IN (SELECT unnest($2::text[]));

-- name: station_system_get :one
SELECT system_id, name, timezone, source, imported_at FROM gbfs_system;

-- name: station_system_set :exec
-- The feed's system_information as last imported ($1 system id, $2 name, $3 time zone, $4 the feed's URL or
-- folder); imported_at tells readiness that an import has succeeded.
INSERT INTO gbfs_system (system_id, name, timezone, source, imported_at)
VALUES ($1, $2, $3, $4, now())
ON CONFLICT (singleton) DO UPDATE
    SET system_id = excluded.system_id, name = excluded.name, timezone = excluded.timezone,
        source = excluded.source, imported_at = excluded.imported_at;

-- name: station_upsert_many :many
-- Write the feed's stations under the ids the import chose ($1; parallel arrays, one element per station),
-- active again if they had left. A row whose values are all unchanged is not written. Returns the ids whose
-- bikes or docks available changed (new stations included): their open tasks' stale flags are re-evaluated.
-- The CTE reads the rows as they were before this statement.
WITH input AS (
    SELECT *
    FROM unnest(
        $1::integer[], $2::text[], $3::text[], $4::text[], $5::text[], $6::double precision[],
        $7::double precision[], $8::integer[], $9::integer[], $10::integer[], $11::boolean[], $12::boolean[],
        $13::timestamptz[]
    ) AS i (id, gbfs_station_id, short_name, legacy_id, name, lat, lon, capacity, num_bikes_available,
            num_docks_available, is_renting, is_returning, last_reported)
),
changed AS (
    SELECT i.id
    FROM input i
    LEFT JOIN stations s ON s.id = i.id
    WHERE (s.num_bikes_available, s.num_docks_available)
          IS DISTINCT FROM (i.num_bikes_available, i.num_docks_available)
),
written AS (
    INSERT INTO stations AS s (
        id, gbfs_station_id, short_name, legacy_id, name, lat, lon, capacity, num_bikes_available,
        num_docks_available, is_renting, is_returning, last_reported
    )
    SELECT * FROM input
    ON CONFLICT (id) DO UPDATE
        SET gbfs_station_id = excluded.gbfs_station_id, short_name = excluded.short_name,
            legacy_id = excluded.legacy_id, name = excluded.name, lat = excluded.lat, lon = excluded.lon,
            capacity = excluded.capacity, num_bikes_available = excluded.num_bikes_available,
            num_docks_available = excluded.num_docks_available, is_renting = excluded.is_renting,
            is_returning = excluded.is_returning, last_reported = excluded.last_reported, active = true,
            updated_at = now()
        WHERE (s.gbfs_station_id, s.short_name, s.legacy_id, s.name, s.lat, s.lon, s.capacity,
               s.num_bikes_available, s.num_docks_available, s.is_renting, s.is_returning, s.last_reported,
               s.active)
              IS DISTINCT FROM
              (excluded.gbfs_station_id, excluded.short_name, excluded.legacy_id, excluded.name, excluded.lat,
               excluded.lon, excluded.capacity, excluded.num_bikes_available, excluded.num_docks_available,
               excluded.is_renting, excluded.is_returning, excluded.last_reported, true)
    RETURNING s.id
)
SELECT id FROM changed;
