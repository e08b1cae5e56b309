"""The Grafana dashboard and the Prometheus alert rules in ``deploy/monitoring/``: every PromQL
expression parses (promql-parser, the Rust parser Prometheus-compatible tools use), names only metrics
the server exports (``server.metrics.ServerMetrics``), and together they cover what an operator watches;
the dashboard's layout and variables are well formed, each alert has its severity and summary; the
``ddrnet_ready`` gauge the readiness alert watches follows a real DataPlane (1 ready, 0 draining)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

promql_parser = pytest.importorskip("promql_parser", reason="promql-parser (the dev extra) is not installed")

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERTS = MONITORING / "alerts.yaml"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "${datasource}": "prometheus"}
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def exported_metrics() -> set[str]:
    """Every sample name the server can export (histograms' _bucket/_sum/_count included)."""
    from prometheus_client import CollectorRegistry

    from server.metrics import ServerMetrics

    metrics = ServerMetrics(CollectorRegistry())
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        names.update(family.name + s for s in SUFFIXES)
    return names


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr  # "$model" inside a label matcher's string stays: it is a valid regex string


def metric_names(node: Any) -> set[str]:
    """Metric names referenced anywhere in a parsed PromQL expression."""
    found: set[str] = set()
    if type(node).__name__ == "VectorSelector" and getattr(node, "name", None):
        found.add(node.name)
    for attr in ("args", "expr", "lhs", "rhs", "param", "vector_selector"):
        child = getattr(node, attr, None)
        if child is None:
            continue
        for item in child if isinstance(child, list) else [child]:
            found |= metric_names(item)
    return found


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("expr", dashboard_exprs() + [r["expr"] for r in alert_rules()])
def test_every_expression_parses_and_names_exported_metrics(expr: str) -> None:
    parsed = promql_parser.parse(grafana_to_promql(expr))
    names = metric_names(parsed)
    assert names, f"no metric in {expr!r}"
    unknown = names - exported_metrics()
    assert not unknown, f"{sorted(unknown)} are not exported by the server (server/metrics.py)"


def test_a_broken_expression_is_caught() -> None:
    with pytest.raises(Exception):  # noqa: B017 - the parser raises its own (Rust-side) error type
        promql_parser.parse("sum by (model (rate(ddrnet_requests_total[5m]))")
    assert metric_names(promql_parser.parse("rate(ddrnet_no_such_metric_total[5m])")) - exported_metrics()


def test_dashboard_covers_what_an_operator_watches() -> None:
    used = set().union(*(metric_names(promql_parser.parse(grafana_to_promql(e))) for e in dashboard_exprs()))
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    wanted = {"ddrnet_requests_total", "ddrnet_request_duration_seconds", "ddrnet_queue_depth",
              "ddrnet_queue_duration_seconds", "ddrnet_batch_size", "ddrnet_inference_duration_seconds",
              "ddrnet_rejected_total", "ddrnet_dropped_total", "ddrnet_worker_restarts_total",
              "ddrnet_model_load_failures_total", "ddrnet_ready", "ddrnet_model_info"}
    assert wanted <= families, sorted(wanted - families)
    titles = " ".join(p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]).lower()
    words = ("throughput", "p99", "queue depth", "batch size", "busy", "rejected", "restarts", "load fail")
    for word in words:
        assert word in titles, word


def test_dashboard_is_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["model"]["includeAll"] is True
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        box = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not box & cells, f"panel {panel['title']!r} overlaps another"
        cells |= box
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["refId"] and t["expr"] for t in panel["targets"])


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    used = set().union(*(metric_names(promql_parser.parse(r["expr"])) for r in rules))
    for family in ("ddrnet_requests_total", "ddrnet_request_duration_seconds_bucket", "ddrnet_rejected_total",
                   "ddrnet_worker_restarts_total", "ddrnet_ready", "ddrnet_model_load_failures_total"):
        assert family in used, family  # error ratio, p99, queue saturation, restarts, readiness, loads


def test_ready_gauge_follows_the_server(tmp_path: Path) -> None:
    """``ddrnet_ready`` (what the readiness alert watches) is 0 while models load or the server drains,
    1 when ready: read from a real DataPlane's registry."""
    import asyncio

    from prometheus_client import generate_latest

    from tests.support import server_fixtures as sf

    sf.make_fake_version(tmp_path / "repo", "fake", 1)
    settings = sf.settings_for(tmp_path / "repo")

    def scraped(core: Any) -> float:
        return float(re.search(rb"^ddrnet_ready (\S+)$", generate_latest(core.metrics.registry), re.M)[1])

    async def main() -> list[float]:
        async with sf.started_core(settings) as core:
            ready = scraped(core)
            core.begin_shutdown()
            return [ready, scraped(core)]

    assert asyncio.run(main()) == [1.0, 0.0]
