"""The scenarios of a run, in the order they run. Each is an async function of the run's ``Context`` that
measures, prints its progress lines, adds its checks to ``ctx.invariants`` and returns its typed result;
``report.py`` turns the results into the table and the JSON. A new scenario is one more module, one more
entry here and its rows in the report."""

from collections.abc import Awaitable, Callable

import msgspec

from ..context import Context
from . import auth, complete, dispatch, history, ingest_approve, location, longpoll, pgbouncer, sustained

Scenario = Callable[[Context], Awaitable[msgspec.Struct]]

SCENARIOS: dict[str, Scenario] = {
    "dispatch": dispatch.of_record,
    "dispatch_sync_off": dispatch.sync_off,
    "location": location.run,
    "ingest_approve": ingest_approve.run,
    "complete": complete.run,
    "longpoll": longpoll.run,
    "sustained": sustained.run,
    "auth": auth.run,
    "history": history.run,
    "pgbouncer": pgbouncer.run,
}
