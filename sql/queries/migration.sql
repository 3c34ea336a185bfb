-- Bookkeeping for sql/migrations. The advisory lock serialises instances that migrate at the same moment.

-- name: migration_applied :many
-- Versions already applied, oldest first.
SELECT version FROM schema_migrations ORDER BY version;

-- name: migration_lock :exec
-- Session-level lock held for the whole run (released by migration_unlock or by closing the connection).
SELECT pg_advisory_lock(hashtext('baywheels.migrate'));

-- name: migration_record :exec
INSERT INTO schema_migrations (version, name) VALUES ($1, $2);

-- name: migration_table_create :exec
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migration_unlock :exec
SELECT pg_advisory_unlock(hashtext('baywheels.migrate'));
