"""deploy/'s Grafana dashboard and Prometheus alert rules: both parse, every PromQL expression parses, and
every metric (and label) they read is one a live `baywheels serve` exports or one of the console's figures."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import LiveServer
from helpers import dispatch, make_tasks

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "baywheels-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
# The queue's figures, read from the database at each scrape (metrics.figures_exposition).
QUEUE_METRICS = {"baywheels_tasks", "baywheels_ready_oldest_age_seconds"}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}
# Grafana's variables that stand for a range; `$instance` only appears inside label values.
GRAFANA_RANGES = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [
        target["expr"]
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            assert query.startswith("label_values(")
            found.append(query.removeprefix("label_values(").split(",")[0])  # the metric it lists from
    return found


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def selectors(node: Any) -> Iterator[Any]:
    """Every vector selector in a parsed expression."""
    if type(node).__name__ == "VectorSelector":
        yield node
    for attribute in ("lhs", "rhs", "expr", "args", "vector_selector", "param"):
        child = getattr(node, attribute, None)
        for item in child if isinstance(child, list) else [child]:
            if item is not None:
                yield from selectors(item)


def parsed(expression: str) -> Any:
    for variable, value in GRAFANA_RANGES.items():
        expression = expression.replace(variable, value)
    return promql_parser.parse(expression)


def test_the_dashboard_and_the_rules_parse() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "baywheels-dispatch"
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"])
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= {
        "BaywheelsOldestReadyTaskTooOld",
        "BaywheelsTasksStalled",
        "BaywheelsHigh5xxRate",
        "BaywheelsReaperNotRunning",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    for expression in [*dashboard_expressions(), *(rule["expr"] for rule in rules)]:
        assert list(selectors(parsed(expression))), expression  # a syntax error raises


async def test_every_metric_they_read_is_exported(live_server: LiveServer) -> None:
    async with live_server.client() as client:
        await make_tasks(client, 2)
        await dispatch(client, "van-1")
        text = (await client.get("/metrics")).text
    # The names a query can use, and the labels of those that have samples yet.
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",),
        }[family.type]
        for suffix in suffixes:
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)

    expressions = [*dashboard_expressions(), *(rule["expr"] for rule in alert_rules())]
    read: set[str] = set()
    for expression in expressions:
        for selector in selectors(parsed(expression)):
            read.add(selector.name)
            assert selector.name in names, f"{selector.name} (in {expression}) is not on /metrics"
            labels = names[selector.name]
            if labels:  # it has samples: the labels matched must be its own
                for matcher in selector.matchers.matchers:
                    assert matcher.name in labels | TARGET_LABELS, f"{matcher.name} of {selector.name}"
    # The dashboard shows what the issue asks for, from the service's own metrics and the console's.
    assert read >= {
        "baywheels_http_requests_total",
        "baywheels_http_request_duration_seconds_bucket",
        "baywheels_dispatch_total",
        "baywheels_dispatch_batch_size_bucket",
        "baywheels_db_pool_connections",
        "baywheels_db_pool_waiting",
        "baywheels_db_statement_duration_seconds_bucket",
        "baywheels_reaper_last_run_timestamp_seconds",
        "baywheels_reaper_rescued_total",
        *QUEUE_METRICS,
    }
