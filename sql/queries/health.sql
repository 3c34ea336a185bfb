-- name: health_ping :one
-- Readiness: the database answers a query.
SELECT 1;
