"""server.metrics: names from ARCHITECTURE.md, independent registries, exposition."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from server.errors import ErrorKind, ServingError
from server.metrics import LATENCY_BUCKETS, ServerMetrics, code_label

ARCHITECTURE_NAMES = [
    "requests_total", "request_duration_seconds", "queue_duration_seconds", "preprocess_duration_seconds",
    "inference_duration_seconds", "batch_size", "queue_depth", "inflight_requests", "rejected_total",
    "model_info", "model_load_seconds",
]  # fmt: skip
EXTRA_NAMES = ["dropped_total", "model_load_failures_total", "worker_restarts_total", "padded_items_total"]


def test_every_documented_metric_is_exposed_with_the_prefix() -> None:
    metrics = ServerMetrics(CollectorRegistry())
    families = {family.name for family in metrics.registry.collect()}  # counters drop "_total" here
    text = metrics.render()[0].decode()
    for name in ARCHITECTURE_NAMES + EXTRA_NAMES:
        assert f"ddrnet_{name.removesuffix('_total')}" in families, name
        assert f"# HELP ddrnet_{name}" in text, name


def test_instances_are_independent() -> None:
    first, second = ServerMetrics(CollectorRegistry()), ServerMetrics(CollectorRegistry())
    first.observe_request("m", "1", "http", "200", 0.01)
    assert first.registry.get_sample_value(
        "ddrnet_requests_total", {"model": "m", "version": "1", "protocol": "http", "code": "200"}
    ) == 1
    assert second.registry.get_sample_value(
        "ddrnet_requests_total", {"model": "m", "version": "1", "protocol": "http", "code": "200"}
    ) is None


def test_latency_buckets_span_1ms_to_10s() -> None:
    finite = [b for b in LATENCY_BUCKETS if b != float("inf")]
    assert finite[0] == 0.001 and finite[-1] == 10.0 and finite == sorted(finite)
    metrics = ServerMetrics(CollectorRegistry())
    metrics.observe_request("m", "1", "grpc", "OK", 0.0015)
    bucket = metrics.registry.get_sample_value(
        "ddrnet_request_duration_seconds_bucket",
        {"model": "m", "version": "1", "protocol": "grpc", "le": "0.002"},
    )
    assert bucket == 1


def info_lines(metrics: ServerMetrics) -> list[str]:
    text = metrics.render()[0].decode()
    return [line for line in text.splitlines() if line.startswith("ddrnet_model_info")]


def test_set_serving_replaces_the_previous_version() -> None:
    metrics = ServerMetrics(CollectorRegistry())
    metrics.set_serving("m", [("1", "onnxruntime", "cpu")])
    metrics.set_serving("other", [("7", "lite", "cpu")])
    metrics.set_serving("m", [("2", "onnxruntime", "cpu")])
    lines = info_lines(metrics)
    assert len(lines) == 2
    assert any('model="m"' in line and 'version="2"' in line for line in lines)
    metrics.clear_serving("m")
    lines = info_lines(metrics)
    assert len(lines) == 1 and 'model="other"' in lines[0]


def test_inflight_counts_while_inside_even_on_error() -> None:
    metrics = ServerMetrics(CollectorRegistry())

    def value() -> float:
        labels = {"model": "m", "protocol": "http"}
        return metrics.registry.get_sample_value("ddrnet_inflight_requests", labels)

    with metrics.inflight("m", "http"):
        assert value() == 1
    assert value() == 0
    with pytest.raises(RuntimeError), metrics.inflight("m", "http"):
        raise RuntimeError
    assert value() == 0


def test_code_labels() -> None:
    full = ServingError(ErrorKind.QUEUE_FULL, "full")
    assert code_label("http", None) == "200"
    assert code_label("http", full) == "503"
    assert code_label("grpc", None) == "OK"
    assert code_label("grpc", full) == "UNAVAILABLE"


def test_render_content_type_and_process_collectors() -> None:
    body, content_type = ServerMetrics(CollectorRegistry(), process_collectors=True).render()
    assert content_type.startswith("text/plain")
    assert b"process_resident_memory_bytes" in body
