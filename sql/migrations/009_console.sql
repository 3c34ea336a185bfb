-- The operators' console: what became of each suggestion, its expiry, and the indexes behind the overview.

-- What became of each suggestion, for the ML engine to learn from (GET /suggestions/outcomes). Append-only:
-- one row when a suggestion leaves the pending list (approved, dismissed, expired) and one each time its task
-- ends (completed, failed, canceled; written by the statement that ends it), so a reader following the feed
-- sees every change of fate once. Rows
-- outlive the suggestion (deleted when it leaves the list) and may outlive the task: no foreign key.
CREATE TABLE suggestion_outcomes (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The writing transaction (its xid8): the feed reads in (xact, id) order, below the oldest transaction
    -- still running (sql/queries/suggestion.sql, suggestion_outcome_horizon).
    xact            bigint NOT NULL DEFAULT pg_current_xact_id()::text::bigint,
    suggestion_id   bigint NOT NULL,
    outcome         text NOT NULL,
    task_id         bigint,
    from_station_id integer NOT NULL,
    to_station_id   integer NOT NULL,
    qty             integer NOT NULL,
    priority        integer NOT NULL,
    -- When the suggestion was first posted; on a task's ending, read from its approval row.
    suggested_at    timestamptz,
    at              timestamptz NOT NULL DEFAULT now(),
    -- The dismissal's reason, a cancel's reason, a failure's last error.
    reason          text,
    actor           text,
    CONSTRAINT suggestion_outcomes_outcome_valid
        CHECK (outcome IN ('approved', 'dismissed', 'expired', 'completed', 'failed', 'canceled')),
    CONSTRAINT suggestion_outcomes_task_given
        CHECK ((task_id IS NULL) = (outcome IN ('dismissed', 'expired')))
);

CREATE INDEX suggestion_outcomes_feed_idx ON suggestion_outcomes (xact, id);
-- A task's ending finds when its suggestion was posted.
CREATE INDEX suggestion_outcomes_approved_idx ON suggestion_outcomes (suggestion_id) WHERE outcome = 'approved';

-- SUGGESTION_TTL: the maintenance loop expires the least recently updated first.
CREATE INDEX suggestions_updated_idx ON suggestions (updated_at);

-- The overview (GET /stats). Each index below is one that the dispatch UPDATE, which inserts an entry into
-- every index whose predicate its new row version meets, never meets: no cost on the hot path beyond
-- evaluating a predicate.

-- Stalled and failed tasks need a person: counted, and listed stalled first, newest first.
CREATE INDEX tasks_attention_idx ON tasks (status DESC, id DESC) WHERE status IN ('failed', 'stalled');

-- Completions of the last hour or day, for how long tasks took and waited (completed_at is null on every row
-- version dispatch writes).
CREATE INDEX tasks_completed_idx ON tasks (completed_at) WHERE completed_at IS NOT NULL;

-- Events of the last hour or day, per hour: task_events is appended in time order, so a BRIN index (one
-- summary per 128 pages, which an append into a range not yet summarised does not touch) finds the recent
-- pages for next to nothing, where a btree on `at` would take an entry per dispatched task.
CREATE INDEX task_events_at_brin ON task_events USING brin (at) WITH (autosummarize = on);
