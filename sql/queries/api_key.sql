-- API keys: issued, looked up on a cache miss, listed and revoked. The secret itself is never here, only its
-- SHA-256 digest. The clock is a parameter, `coalesce($n::timestamptz, now())`, as in task.sql.

-- name: api_key_authenticate :many
-- The keys behind tokens ($1 key ids) that the in-process caches missed or must renew: one statement for all
-- of a process's keys every few seconds, however many there are. Their use is recorded in the same statement:
-- last_used_at is written when older than 30 s, so a key in steady use costs one small write per half minute.
-- The rows to write are locked in key order, skipping any another instance is writing now (it writes the same
-- time), so two instances renewing overlapping keys never deadlock or wait. $2 is the clock. The rows read are
-- those before the UPDATE (same snapshot): the caller only needs the keys' state.
WITH due AS (
    SELECT key_id
    FROM api_keys
    WHERE key_id = ANY($1::text[])
      AND revoked_at IS NULL
      AND (last_used_at IS NULL OR last_used_at < coalesce($2::timestamptz, now()) - interval '30 seconds')
    ORDER BY key_id
    FOR UPDATE SKIP LOCKED
),
touched AS (
    UPDATE api_keys k
    SET last_used_at = coalesce($2::timestamptz, now())
    FROM due
    WHERE k.key_id = due.key_id
)
SELECT key_id, digest, role, worker_id, expires_at, revoked_at
FROM api_keys
WHERE key_id = ANY($1::text[]);

-- name: api_key_bootstrap_lock :exec
-- Taken in the transaction that creates the first admin key, so instances starting together create one.
SELECT pg_advisory_xact_lock(hashtext('baywheels.api_key_bootstrap'));

-- name: api_key_count :one
SELECT count(*) AS n FROM api_keys;

-- name: api_key_create :one
-- A new key: $1 key id, $2 digest, $3 role, $4 worker id, $5 name, $6 expires at, $7 created by, $8 the clock.
INSERT INTO api_keys (key_id, digest, role, worker_id, name, expires_at, created_by, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, coalesce($8::timestamptz, now()))
RETURNING key_id, role, worker_id, name, created_at, created_by, expires_at, revoked_at, revoked_by,
          last_used_at;

-- name: api_key_list :many
-- Every key, revoked and expired ones included, oldest first; never the digest.
SELECT key_id, role, worker_id, name, created_at, created_by, expires_at, revoked_at, revoked_by, last_used_at
FROM api_keys
ORDER BY created_at, key_id;

-- name: api_key_revoke :one
-- Revoke key $1 by $2 at $3. Revoking a revoked key changes nothing (the first revocation stays on record);
-- no row: no such key.
WITH revoked AS (
    UPDATE api_keys
    SET revoked_at = coalesce($3::timestamptz, now()), revoked_by = $2
    WHERE key_id = $1 AND revoked_at IS NULL
    RETURNING key_id, role, worker_id, name, created_at, created_by, expires_at, revoked_at, revoked_by,
              last_used_at
)
SELECT * FROM revoked
UNION ALL
SELECT key_id, role, worker_id, name, created_at, created_by, expires_at, revoked_at, revoked_by, last_used_at
FROM api_keys
WHERE key_id = $1 AND NOT EXISTS (SELECT FROM revoked);
