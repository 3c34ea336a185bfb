"""Schemathesis hooks for tests/test_live_schemathesis.py (loaded through SCHEMATHESIS_HOOKS): what JSON
Schema cannot say, and what would only make the run slow."""

from typing import Any

import schemathesis


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _one_station_each(item: dict[str, Any]) -> bool:
    """Each end named once, by registry id: by one of `from_station_id` and `from_station` (a rule between
    two fields), and not by a GBFS id, which names no station in the run's empty registry."""
    return all(f"{end}_station_id" in item and f"{end}_station" not in item for end in ("from", "to"))


@schemathesis.hook
def filter_body(context: schemathesis.HookContext, body: Any) -> bool:
    """A suggestion's two stations must differ and each be named once, and a van's position has both its
    coordinates: rules between fields that JSON Schema cannot state (the schema says them in words), refused
    with 400 as they should be."""
    items = body if isinstance(body, list) else [body]
    suggestions = context.operation is not None and context.operation.path == "/suggestions"
    if suggestions and any(isinstance(item, dict) and not _one_station_each(item) for item in items):
        return False
    if any(
        isinstance(item, dict)
        and "from_station_id" in item
        and _is_number(item["from_station_id"])
        and item["from_station_id"] == item.get("to_station_id")
        for item in items
    ):
        return False
    # A van's position: lat and lon together, and accuracy_m and load only with them.
    if isinstance(body, dict) and not _a_position_or_none(body):
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


def _a_position_or_none(body: dict[str, Any]) -> bool:
    given = {name for name in ("lat", "lon", "accuracy_m", "load") if body.get(name) is not None}
    return not given or {"lat", "lon"} <= given


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


@schemathesis.hook
def filter_query(context: schemathesis.HookContext, query: Any) -> bool:
    """GET /stations takes `lat`, `lon` and `radius_km` together or none of them (the schema says it in
    words)."""
    if not isinstance(query, dict):
        return True
    given = sum(name in query for name in ("lat", "lon", "radius_km"))
    return given in (0, 3)


@schemathesis.hook
def map_query(context: schemathesis.HookContext, query: Any) -> Any:
    """GET /events follows the feed until the client leaves: asked with follow=false here, it sends what is
    there and ends, as a request must for the run to go on."""
    if context.operation is not None and context.operation.path == "/events" and isinstance(query, dict):
        return {**query, "follow": "false"}
    return query


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: Any, kwargs: dict[str, Any]) -> None:
    """A key's `worker_id` that a stateful link put in (from GET /workers), after filter_body looked, stays
    only on a worker key, the one role that has one."""
    body = case.body
    if isinstance(body, dict) and body.get("role") in _ROLES and body.get("role") != "worker":
        case.body = {name: value for name, value in body.items() if name != "worker_id"}
