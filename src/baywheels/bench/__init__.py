"""The benchmark of record (``baywheels bench``, docs/benchmarks.md): the service's dispatch over HTTP beside
PostgreSQL's own ceiling (pgbench running the same statement) and the HTTP ceiling (a no-database endpoint),
in one run on one machine, with the exactly-once invariant checked after every load."""
