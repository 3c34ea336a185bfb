-- Console sessions (/ui): created at sign-in, read on every console request, deleted at sign-out. The cookie's
-- secret is never here, only its SHA-256 digest. The clock is a parameter, as in task.sql.

-- name: console_session_create :exec
-- $1 digest, $2 CSRF token, $3 actor, $4 role, $5 key id (null for a person's SSO token or ADMIN_API_KEY),
-- $6 seconds it lasts, $7 the clock. Sessions that ran out are swept in the same statement (an index range).
WITH swept AS (
    DELETE FROM console_sessions WHERE expires_at <= coalesce($7::timestamptz, now())
)
INSERT INTO console_sessions (digest, csrf_token, actor, role, key_id, expires_at, created_at)
VALUES ($1, $2, $3, $4, $5, coalesce($7::timestamptz, now()) + make_interval(secs => $6::double precision),
        coalesce($7::timestamptz, now()));

-- name: console_session_delete :exec
DELETE FROM console_sessions WHERE digest = $1;

-- name: console_session_get :one
-- The session behind a cookie, unless it ran out by $2.
SELECT csrf_token, actor, role, key_id, expires_at
FROM console_sessions
WHERE digest = $1 AND expires_at > coalesce($2::timestamptz, now());
