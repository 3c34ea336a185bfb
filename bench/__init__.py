"""The benchmark of record (``make bench``, that is ``python -m bench``; docs/benchmarks.md): the service's
dispatch over HTTP beside PostgreSQL's own ceiling (pgbench running the same statement) and the HTTP ceiling
(a no-database endpoint), in one run on one machine, with the exactly-once invariant checked after every load.

It lives beside the service, not in it: it imports the service's public modules (settings, sql, db, embedded,
logs) and runs ``baywheels serve`` as a process; nothing of the service imports it, and neither the wheel nor
the image contains it."""
