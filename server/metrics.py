"""Prometheus metrics of the server: every metric name in one place, on a registry passed in.

Names and labels follow ARCHITECTURE.md (prefix ``ddrnet_``). A :class:`ServerMetrics` is built on a
:class:`prometheus_client.CollectorRegistry` given by the caller (not the process-global default), so
tests and several servers in one process stay independent; :func:`render` gives the text exposition
for ``/metrics``.

Label conventions: ``model`` is a served model name, never a name taken unchecked from a request (use
:data:`UNKNOWN_MODEL` for unknown names, or an attacker could grow the label set without bound);
``version`` is the version that served the request (``""`` when none did); ``protocol`` is ``http`` or
``grpc``; ``code`` is the HTTP status (``"200"``) or the gRPC status name (``"OK"``), see
:func:`code_label`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from server.errors import ServingError, grpc_status, http_status

NAMESPACE = "ddrnet"
UNKNOWN_MODEL = "_unknown"

# 1 ms … 10 s, roughly three steps per decade (request, queue, preprocess and inference times).
LATENCY_BUCKETS = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, float("inf"),
)  # fmt: skip
# Model loading (import, load, warm-up): 100 ms … 5 min.
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, float("inf"))
# Images per batch: powers of two up to 1024 (settings cap max_batch_size at 1024).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, float("inf"))

DROP_REASONS = ("cancelled", "deadline")


class ServerMetrics:
    """The server's metrics, registered on ``registry`` (a fresh one when omitted).

    ``process_collectors`` adds the standard ``process_*`` (CPU, resident memory, open files) and
    ``python_info`` collectors to that registry, as the global default registry would have them.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, process_collectors: bool = False):
        self.registry = registry if registry is not None else CollectorRegistry()
        reg, ns = self.registry, NAMESPACE
        self._serving: dict[str, list[tuple[str, str, str, str]]] = {}  # model -> its model_info labels
        self._queues: dict[str, dict[int, int]] = {}  # model -> id(batcher) -> images queued
        if process_collectors:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)

        self.requests_total = Counter(
            "requests_total", "Requests answered, by final status code.",
            ["model", "version", "protocol", "code"], namespace=ns, registry=reg,
        )
        self.request_duration = Histogram(
            "request_duration_seconds", "Time from request arrival to the answer.",
            ["model", "version", "protocol"], namespace=ns, registry=reg, buckets=LATENCY_BUCKETS,
        )
        self.queue_duration = Histogram(
            "queue_duration_seconds", "Time an image waited in the batch queue before its batch started.",
            ["model", "version"], namespace=ns, registry=reg, buckets=LATENCY_BUCKETS,
        )
        self.preprocess_duration = Histogram(
            "preprocess_duration_seconds", "Decode + eval transform time per request.",
            ["model", "version"], namespace=ns, registry=reg, buckets=LATENCY_BUCKETS,
        )
        self.inference_duration = Histogram(
            "inference_duration_seconds", "Model instance time per batch.",
            ["model", "version"], namespace=ns, registry=reg, buckets=LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            "batch_size", "Images per batch sent to a model instance (before padding).",
            ["model", "version"], namespace=ns, registry=reg, buckets=BATCH_BUCKETS,
        )
        self.padded_items_total = Counter(
            "padded_items_total", "Padding rows added to reach a static batch size.",
            ["model", "version"], namespace=ns, registry=reg,
        )
        self.queue_depth = Gauge(
            "queue_depth", "Images waiting in the batch queue.",
            ["model"], namespace=ns, registry=reg,
        )
        self.inflight_requests = Gauge(
            "inflight_requests", "Requests being handled (arrived, not yet answered).",
            ["model", "protocol"], namespace=ns, registry=reg,
        )
        self.rejected_total = Counter(
            "rejected_total", "Requests refused before queueing (queue full, shutting down, not ready).",
            ["model", "reason"], namespace=ns, registry=reg,
        )
        self.dropped_total = Counter(
            "dropped_total", "Queued images removed before inference: client went away or deadline passed.",
            ["model", "reason"], namespace=ns, registry=reg,
        )
        self.model_info = Gauge(
            "model_info", "1 for each model version being served, with its runtime and device.",
            ["model", "version", "runtime", "device"], namespace=ns, registry=reg,
        )
        self.model_load_seconds = Histogram(
            "model_load_seconds", "Time to load and warm up a model version (all its instances).",
            ["model", "version"], namespace=ns, registry=reg, buckets=LOAD_BUCKETS,
        )
        self.model_load_failures_total = Counter(
            "model_load_failures_total", "Model versions that failed to load or verify (not served).",
            ["model", "reason"], namespace=ns, registry=reg,
        )
        self.worker_restarts_total = Counter(
            "worker_restarts_total",
            "Model worker processes restarted after dying (worker_died), and failed restart attempts "
            "(restart_failed).",
            ["model", "reason"], namespace=ns, registry=reg,
        )
        self.ready = Gauge(
            "ready", "1 while the server is ready (its models loaded and warmed, not draining), else 0.",
            namespace=ns, registry=reg,
        )
        self.batch_retries_total = Counter(
            "batch_retries_total", "Batches run a second time because their worker died or hung.",
            ["model", "reason"], namespace=ns, registry=reg,
        )  # fmt: skip

    def observe_request(
        self, model: str, version: str, protocol: str, code: str, seconds: float
    ) -> None:
        """Count one answered request and its duration."""
        self.requests_total.labels(model, version, protocol, code).inc()
        self.request_duration.labels(model, version, protocol).observe(seconds)

    @contextmanager
    def inflight(self, model: str, protocol: str) -> Iterator[None]:
        """Count a request as in flight for the duration of the ``with`` block."""
        gauge = self.inflight_requests.labels(model, protocol)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def set_serving(self, model: str, versions: Sequence[tuple[str, str, str]]) -> None:
        """Mark ``versions`` ((version, runtime, device) each) as those ``model`` serves, clearing the
        model's other ``model_info`` series."""
        self.clear_serving(model)
        self._serving[model] = [(model, *entry) for entry in versions]
        for labels in self._serving[model]:
            self.model_info.labels(*labels).set(1)

    def clear_serving(self, model: str) -> None:
        """Remove ``model``'s ``model_info`` series (the model is no longer served)."""
        for labels in self._serving.pop(model, []):
            self.model_info.remove(*labels)

    def set_queue_depth(self, model: str, queue: object, depth: int) -> None:
        """One of ``model``'s queues (a batcher per served version) holds ``depth`` images; the gauge is
        their sum. ``depth`` < 0 forgets the queue (its version is no longer served)."""
        queues = self._queues.setdefault(model, {})
        if depth < 0:
            queues.pop(id(queue), None)
        else:
            queues[id(queue)] = depth
        self.queue_depth.labels(model).set(sum(queues.values()))

    def render(self) -> tuple[bytes, str]:
        """The text exposition of this registry and its content type (for ``/metrics``)."""
        return render(self.registry)


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """Prometheus text format of ``registry``, with the matching Content-Type header value."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def code_label(protocol: str, err: ServingError | None) -> str:
    """The ``code`` label for an answer: HTTP status number or gRPC status name (success when None)."""
    if protocol == "grpc":
        return "OK" if err is None else grpc_status(err).name
    return "200" if err is None else str(http_status(err))
