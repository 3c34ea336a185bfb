"""Schemathesis hooks for tests/test_live_schemathesis.py (loaded through SCHEMATHESIS_HOOKS): what JSON
Schema cannot say, and what would only make the run slow."""

from typing import Any

import schemathesis


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@schemathesis.hook
def filter_body(context: schemathesis.HookContext, body: Any) -> bool:
    """A suggestion's two stations must differ, a rule between two fields that JSON Schema cannot state (the
    schema says it in words): such a batch is refused with 400, as it should be."""
    items = body if isinstance(body, list) else [body]
    if any(
        isinstance(item, dict)
        and "from_station_id" in item
        and _is_number(item["from_station_id"])
        and item["from_station_id"] == item.get("to_station_id")
        for item in items
    ):
        return False
    # Likewise a key's worker_id: given for a worker key, and for no other role.
    if (
        isinstance(body, dict)
        and body.get("role") in _ROLES
        and (body.get("role") == "worker") != isinstance(body.get("worker_id"), str)
    ):
        return False
    # And a van's position: lat and lon together, accuracy_m and load only with them.
    if isinstance(body, dict) and any(body.get(field) is not None for field in _POSITION):
        return body.get("lat") is not None and body.get("lon") is not None
    return True


_POSITION = ("lat", "lon", "accuracy_m", "load")


_ROLES = ("worker", "ml", "operator", "viewer", "metrics", "admin")
# Calls for a worker: the run speaks as an admin, who must name the worker (a worker's key implies it, which
# the schema can only say in words).
_FOR_A_WORKER = ("/dispatch/next", "/heartbeat", "/pickup", "/release", "/fail")


@schemathesis.hook
def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    """A valid `wait_seconds` (0 to 30) is cut to a hundredth of a second: every long poll would otherwise
    wait out its time on an empty queue. Invalid values stay, to be refused."""
    if (
        isinstance(body, dict)
        and "worker_id" not in body
        and context.operation is not None
        and context.operation.path.endswith(_FOR_A_WORKER)
    ):
        body = {**body, "worker_id": "schemathesis"}
    wait: Any = body.get("wait_seconds") if isinstance(body, dict) else None
    if _is_number(wait) and 0 < wait <= 30:
        return {**body, "wait_seconds": 0.01}
    return body
