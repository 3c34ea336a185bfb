-- Vacuum the queue table by the number of dead rows, not by its size, and at full speed.
--
-- Every dispatch leaves a dead entry at the head of tasks_ready_idx, exactly where the next dispatch starts
-- reading, and only VACUUM removes it. With the defaults (20 % of the table must be dead, then a vacuum
-- throttled by cost_delay) a table of a million tasks waits for 200,000 dead rows, and dispatch slows as it
-- steps over them: measured over 3 minutes at 64 dispatchers, the last 30 s ran at 60 % of the rate of the
-- first 30 s, ready-index blocks per dispatch 69 -> 209. A threshold in rows keeps the dead head short at any
-- table size. How often autovacuum looks is the server's autovacuum_naptime (1 min by default; the embedded
-- server and compose.yaml set 10 s).
ALTER TABLE tasks SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.02
);
