-- The maintenance loop's leader election (maintenance.py): one instance at a time runs the periodic jobs.

-- name: maintenance_try_lock :one
-- Session-level, held by the maintenance connection of the leader until it closes. The key is the one the
-- reaper of earlier versions took, so old and new instances running side by side still elect one leader.
-- Also returns the database's clock, from which the loop dates an outage it has just come back from.
SELECT pg_try_advisory_lock(hashtext('baywheels.reaper')) AS locked, now() AS checked_at;
