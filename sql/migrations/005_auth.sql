-- Who may do what: API keys with one role each, and the actor of every task event.

-- A key is shown once, when created; only its SHA-256 digest is kept (a fast hash is right for a random
-- 190-bit secret: nothing to brute-force, and a slow password hash per request would cap dispatch). key_id is
-- the public part of the key, in clear inside it, so a lookup is by primary key.
CREATE TABLE api_keys (
    key_id       text PRIMARY KEY,
    digest       bytea NOT NULL,
    role         text NOT NULL,
    worker_id    text,
    name         text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text NOT NULL,
    expires_at   timestamptz,
    revoked_at   timestamptz,
    revoked_by   text,
    -- Written at most every 30 s per key and instance, when the key's cached lookup is renewed.
    last_used_at timestamptz,
    CONSTRAINT api_keys_role_valid CHECK (role IN ('worker', 'ml', 'operator', 'viewer', 'metrics', 'admin')),
    -- A worker key belongs to one worker; no other role names one.
    CONSTRAINT api_keys_worker_bound CHECK ((role = 'worker') = (worker_id IS NOT NULL)),
    CONSTRAINT api_keys_revoked_by_whom CHECK ((revoked_at IS NULL) = (revoked_by IS NULL)),
    CONSTRAINT api_keys_digest_sha256 CHECK (octet_length(digest) = 32)
);

-- Who did it: a key id, `oidc:<subject>`, `env:ADMIN_API_KEY`, `system` (lease rescue), `anonymous` (AUTH=off).
-- Events written before this migration have none.
ALTER TABLE task_events ADD COLUMN actor text;
