"""The status figures (``server.status``): quantiles as Prometheus' ``histogram_quantile`` computes
them, rates and quantiles over the window from the server's own metrics, the gauges summed per model."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from server.metrics import ServerMetrics
from server.status import StatusTracker, quantile


def test_quantile_interpolates_within_its_bucket() -> None:
    buckets = {0.01: 10.0, 0.02: 30.0, 0.05: 40.0, math.inf: 40.0}
    assert quantile(0.5, buckets) == pytest.approx(0.015)  # rank 20: halfway through (0.01, 0.02]
    assert quantile(0.1, buckets) == pytest.approx(0.004)  # rank 4 of the first bucket's 10, from 0
    assert quantile(1.0, buckets) == pytest.approx(0.05)
    assert quantile(0.99, {0.1: 0.0, math.inf: 5.0}) == 0.1  # in +Inf: the largest finite bound
    assert quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    assert quantile(0.5, {}) is None


def test_rates_and_quantiles_over_the_window() -> None:
    metrics = ServerMetrics(CollectorRegistry())
    tracker = StatusTracker(metrics, window_s=0.0)  # every call: the change since the previous one
    for _ in range(8):
        metrics.observe_request("m", "1", "http", "200", 0.012)
    metrics.observe_request("m", "1", "grpc", "NOT_FOUND", 0.001)
    metrics.batch_size.labels("m", "1").observe(4)
    metrics.batch_size.labels("m", "1").observe(4)
    metrics.set_queue_depth("m", object(), 3)
    metrics.inflight_requests.labels("m", "http").inc()
    metrics.inflight_requests.labels("m", "grpc").inc()
    first = tracker.figures()["m"]
    assert first["requests_per_s"] > 0 and first["images_per_s"] > 0 and first["errors_per_s"] > 0
    # one elapsed time for all three: their ratios are the counts'
    assert first["images_per_s"] / first["requests_per_s"] == pytest.approx(8 / 9, rel=0.01)
    assert first["errors_per_s"] / first["requests_per_s"] == pytest.approx(1 / 9, rel=0.01)
    assert 10 <= first["p50_ms"] <= 25 and first["p50_ms"] <= first["p99_ms"] <= 25
    assert tracker.gauges()["m"] == {"queue_depth": 3.0, "inflight": 2.0}

    import time

    time.sleep(1.05)  # snapshots are at least a second apart
    metrics.observe_request("m", "1", "http", "200", 0.3)
    second = tracker.figures()["m"]
    assert second["requests_per_s"] == pytest.approx(1 / second["window_s"], rel=0.05)
    assert second["p50_ms"] > 250  # only the new, slow request is in this window
    assert second["errors_per_s"] == 0
