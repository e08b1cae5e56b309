"""The live status the web page shows (``GET /v1/status``): the server's readiness and, per served
model, its versions, labels, runtime, precision and readiness, with throughput, errors, p50/p99
latency, queue depth and requests in flight over the last :data:`WINDOW_S` seconds.

The figures come from the server's own Prometheus metrics (``server.metrics``), read from the
registry's samples of those metrics, never from scraped text: requests and their latency from
``request_duration_seconds`` (all versions and protocols of a model), images from ``batch_size``'s sum,
errors from ``requests_total`` (codes other than 200/OK), queue depth and in-flight requests from their
gauges. Rates and quantiles are over the difference between now and a snapshot about ``WINDOW_S`` old
(kept from earlier calls; the first call covers the time since start), the quantile interpolated
within its histogram bucket as Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from server.metrics import ServerMetrics

WINDOW_S = 10.0
KEEP_S = 60.0  # snapshots older than this are dropped
OK_CODES = {"200", "OK"}


@dataclass
class _Totals:
    """Cumulative counts of one model at one moment."""

    requests: float = 0.0
    errors: float = 0.0
    images: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count


def _samples(*families: Any) -> Iterator[Any]:
    """The samples of these metrics only (not the whole registry: its process collectors read /proc)."""
    for family in families:
        for metric in family.collect():
            yield from metric.samples


def _read(metrics: ServerMetrics) -> dict[str, _Totals]:
    totals: dict[str, _Totals] = {}
    for sample in _samples(metrics.request_duration, metrics.batch_size, metrics.requests_total):
        entry = totals.setdefault(sample.labels["model"], _Totals())
        if sample.name == "ddrnet_request_duration_seconds_bucket":
            le = float(sample.labels["le"])
            entry.buckets[le] = entry.buckets.get(le, 0.0) + sample.value
        elif sample.name == "ddrnet_request_duration_seconds_count":
            entry.requests += sample.value
        elif sample.name == "ddrnet_batch_size_sum":
            entry.images += sample.value
        elif sample.name == "ddrnet_requests_total" and sample.labels["code"] not in OK_CODES:
            entry.errors += sample.value
    return totals


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile of a cumulative histogram (``le`` -> count), linear within its bucket; None
    without observations. An answer in the +Inf bucket is the largest finite bound."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


class StatusTracker:
    """Builds the status answers, keeping the snapshots the windowed figures are taken against."""

    def __init__(self, metrics: ServerMetrics, window_s: float = WINDOW_S) -> None:
        self.metrics = metrics
        self.window_s = window_s
        self.started = time.monotonic()
        self._snapshots: deque[tuple[float, dict[str, _Totals]]] = deque()

    def _baseline(self, now: float) -> tuple[float, dict[str, _Totals]]:
        """The newest snapshot at least ``window_s`` old (else the oldest; at start, zeros)."""
        while self._snapshots and now - self._snapshots[0][0] > KEEP_S:
            self._snapshots.popleft()
        chosen = self._snapshots[0] if self._snapshots else (self.started, {})
        for snapshot in self._snapshots:  # oldest first
            if now - snapshot[0] < self.window_s:
                break
            chosen = snapshot
        return chosen

    def figures(self) -> dict[str, dict[str, Any]]:
        """Per model: requests/s, images/s, errors/s, p50/p99 ms over the window, and the window."""
        now = time.monotonic()
        current = _read(self.metrics)
        since, before = self._baseline(now)
        if not self._snapshots or now - self._snapshots[-1][0] >= 1.0:
            self._snapshots.append((now, current))
        elapsed = max(now - since, 1e-6)
        out = {}
        for model, totals in current.items():
            old = before.get(model, _Totals())
            delta = {le: count - old.buckets.get(le, 0.0) for le, count in totals.buckets.items()}
            p50, p99 = quantile(0.5, delta), quantile(0.99, delta)
            out[model] = {
                "requests_per_s": round((totals.requests - old.requests) / elapsed, 3),
                "images_per_s": round((totals.images - old.images) / elapsed, 3),
                "errors_per_s": round((totals.errors - old.errors) / elapsed, 3),
                "p50_ms": None if p50 is None else round(p50 * 1000, 2),
                "p99_ms": None if p99 is None else round(p99 * 1000, 2),
                "window_s": round(elapsed, 2),
            }
        return out

    def gauges(self) -> dict[str, dict[str, float]]:
        """Per model: images queued and requests in flight now."""
        out: dict[str, dict[str, float]] = {}
        names = {"ddrnet_queue_depth": "queue_depth", "ddrnet_inflight_requests": "inflight"}
        for sample in _samples(self.metrics.queue_depth, self.metrics.inflight_requests):
            entry = out.setdefault(sample.labels["model"], {"queue_depth": 0.0, "inflight": 0.0})
            entry[names[sample.name]] += sample.value
        return out

    def uptime_s(self) -> float:
        return round(time.monotonic() - self.started, 1)
