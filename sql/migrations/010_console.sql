-- The operators' console (/ui): people's sessions, and the indexes its pages read.

-- One row per signed-in browser. The cookie carries a random secret; only its SHA-256 digest is kept, so a copy
-- of this table signs nobody in. A session signed in with an API key names it (key_id): every request checks
-- that key through the service's key cache, so revoking or expiring the key ends the session on every
-- instance; deleting the key deletes its sessions. Signing out deletes the row.
CREATE TABLE console_sessions (
    digest      bytea PRIMARY KEY,
    -- Sent back with every state-changing request (a form field or the X-CSRF-Token header).
    csrf_token  text NOT NULL,
    actor       text NOT NULL,
    role        text NOT NULL,
    key_id      text REFERENCES api_keys (key_id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    CONSTRAINT console_sessions_digest_sha256 CHECK (octet_length(digest) = 32),
    CONSTRAINT console_sessions_role_valid CHECK (role IN ('viewer', 'operator', 'admin'))
);

-- Signing in sweeps the sessions that ran out.
CREATE INDEX console_sessions_expires_idx ON console_sessions (expires_at);

-- The pending list, highest priority and oldest first (suggestions are few; ingest pays one more entry).
CREATE INDEX suggestions_priority_idx ON suggestions (priority DESC, created_at, id);

-- The tasks list's time window. Rows arrive in time order, so a BRIN index of a few pages finds a window, and
-- its upkeep costs next to nothing. (Today's counts per worker read 009's task_events_at_brin; failed and
-- stalled tasks, 009's tasks_attention_idx.)
CREATE INDEX tasks_created_brin ON tasks USING brin (created_at) WITH (autosummarize = on);
