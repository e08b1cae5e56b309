"""OpenTelemetry tracing of the server (the ``otel`` extra), off unless configured.

Turned on by ``--otel-endpoint`` or the standard variables ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (``OTEL_SDK_DISABLED=true`` keeps it off); the OTLP protocol is
``--otel-protocol`` or ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` (``http/protobuf`` by default, or
``grpc``). Everything else is the SDK's own reading of the ``OTEL_*`` variables: the sampler
(``OTEL_TRACES_SAMPLER[_ARG]``, parent-based always-on by default), ``OTEL_SERVICE_NAME`` (default
``ddrnet-serve``), ``OTEL_RESOURCE_ATTRIBUTES``, headers, timeouts, the batch span processor's queue.

What a trace holds: the HTTP or gRPC server span of each request (the OpenTelemetry FastAPI and gRPC
instrumentations, which accept the caller's W3C ``traceparent``), with children ``preprocess`` (decode
+ eval transform), ``queue`` (waiting for a batch) and ``inference`` (the batch run: batch size,
instance, version, runtime as attributes); each batch is also a ``batch`` span of its own that links
the request spans it served. Log lines written while a span is current carry its ``trace_id`` and
``span_id`` (:class:`TraceIdFilter`). With tracing off, nothing here is imported by the request path.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
PROTOCOLS = ("http/protobuf", "grpc")
# Endpoints that would flood a trace store with probes and scrapes.
HTTP_EXCLUDED = "/metrics,/v2/health/live,/v2/health/ready,/healthz,/readyz,/v1/status"
GRPC_EXCLUDED_SERVICE = "grpc.health.v1.Health"
INSTRUMENTATION = "ddrnet.server"


class TracingUnavailableError(RuntimeError):
    """Tracing is configured but the OpenTelemetry SDK (the ``otel`` extra) is not installed."""


@dataclass(frozen=True)
class TracingConfig:
    endpoint: str | None  # None: the exporter reads the OTEL_EXPORTER_OTLP_* variables itself
    protocol: str
    source: str  # what turned it on, for the start-up line

    def describe(self) -> str:
        return f"OTLP {self.protocol} to {self.endpoint or 'the endpoint in ' + self.source} ({self.source})"


def tracing_config(
    endpoint: str | None, protocol: str | None, environ: Mapping[str, str] | None = None
) -> TracingConfig | None:
    """Whether tracing is on, and how spans leave; None when it is off."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if endpoint:
        source = "--otel-endpoint"
    else:
        source = next((name for name in ENDPOINT_VARIABLES if env.get(name)), "")
        if not source:
            return None
    if protocol is None:
        protocol = next((env[name].strip() for name in PROTOCOL_VARIABLES if env.get(name)), "http/protobuf")
    if protocol not in PROTOCOLS:
        raise ValueError(f"OTLP protocol {protocol!r} is not supported; use one of {', '.join(PROTOCOLS)}")
    return TracingConfig(endpoint or None, protocol, source)


def _exporter(config: TracingConfig) -> Any:
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    if config.endpoint is None:
        return OTLPSpanExporter()
    endpoint = config.endpoint
    if config.protocol == "http/protobuf" and not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"  # the flag names the collector, as the base variable
    return OTLPSpanExporter(endpoint=endpoint)


class Tracing:
    """A tracer provider of the server's own (not the process-global one, so several servers in one
    process, tests among them, keep apart), the instrumentations of both front ends, and the spans the
    core and the batcher record."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import context, trace

        self.provider = provider
        self.tracer = provider.get_tracer(INSTRUMENTATION)
        self._trace = trace
        self._context = context

    @classmethod
    def start(cls, config: TracingConfig) -> Tracing:
        """The SDK provider exporting with a batch span processor. Raises TracingUnavailableError
        without the ``otel`` extra."""
        try:
            from opentelemetry.sdk.resources import SERVICE_NAME, Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise TracingUnavailableError(
                f"tracing is configured ({config.source}) but OpenTelemetry is not installed ({exc.name} is "
                "missing): pip install 'ddrnet-serve[otel]', or unset it"
            ) from None
        defaults = {SERVICE_NAME: "ddrnet-serve"}
        resource = Resource.create({} if os.environ.get("OTEL_SERVICE_NAME") else defaults)
        provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
        try:
            provider.add_span_processor(BatchSpanProcessor(_exporter(config)))
        except ImportError as exc:
            raise TracingUnavailableError(
                f"the OTLP {config.protocol} exporter is not installed ({exc.name} is missing): "
                "pip install 'ddrnet-serve[otel]'"
            ) from None
        log.info("tracing: %s", config.describe())
        return cls(provider)

    # -- front ends -----------------------------------------------------------------------------------

    def instrument_http(self, app: Any) -> None:
        """Server spans for the FastAPI app (traceparent accepted; probes and scrapes left out)."""
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=self.provider, excluded_urls=HTTP_EXCLUDED, exclude_spans=["receive", "send"]
        )

    def grpc_interceptor(self) -> Any:
        """The grpc.aio server interceptor making a server span per RPC (health checks left out)."""
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

        return aio_server_interceptor(
            tracer_provider=self.provider, filter_=filters.negate(filters.service_name(GRPC_EXCLUDED_SERVICE))
        )

    # -- spans of the request path ---------------------------------------------------------------------

    @contextmanager
    def span(self, name: str, attributes: Mapping[str, Any]) -> Iterator[None]:
        """A child of the current span (the request's), e.g. ``preprocess``."""
        with self.tracer.start_as_current_span(name, attributes=dict(attributes)):
            yield

    def annotate(self, attributes: Mapping[str, Any]) -> None:
        """Attributes on the current (request) span: model, version, image count."""
        span = self._trace.get_current_span()
        if span.is_recording():
            span.set_attributes(dict(attributes))

    def current(self) -> Any | None:
        """The current context when a sampled span is current (an item's parent), else None: a request
        the sampler left out costs its batch nothing."""
        span_context = self._trace.get_current_span().get_span_context()
        if not (span_context.is_valid and span_context.trace_flags.sampled):
            return None
        return self._context.get_current()

    def record_batch(
        self,
        parents: Sequence[tuple[Any, int]],
        *,
        started_ns: int,
        ended_ns: int,
        attributes: Mapping[str, Any],
        error: str | None = None,
    ) -> None:
        """Spans of one batch, after it ran: per request (``parents``: its context and the wall-clock
        ns its first item entered the queue) a ``queue`` span (queued → the batch started) and an
        ``inference`` span (the batch run); and one ``batch`` span linking the request spans."""
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode

        attrs = dict(attributes)
        links = []
        for parent, enqueued_ns in parents:
            queue = self.tracer.start_span("queue", context=parent, start_time=enqueued_ns)
            queue.end(end_time=started_ns)
            inference = self.tracer.start_span("inference", context=parent, start_time=started_ns,
                                               attributes=attrs)
            if error is not None:
                inference.set_status(Status(StatusCode.ERROR, error))
            inference.end(end_time=ended_ns)
            links.append(Link(self._trace.get_current_span(parent).get_span_context()))
        batch = self.tracer.start_span("batch", context=self._context.Context(), kind=SpanKind.INTERNAL,
                                       start_time=started_ns, attributes=attrs, links=links)
        if error is not None:
            batch.set_status(Status(StatusCode.ERROR, error))
        batch.end(end_time=ended_ns)

    def shutdown(self) -> None:
        """Flush what is buffered (bounded by the processor's export timeout), then stop."""
        self.provider.shutdown()


def now_ns() -> int:
    """Wall-clock ns, the time base of span start and end times."""
    return time.time_ns()


class TraceIdFilter(logging.Filter):
    """Adds ``trace_id`` / ``span_id`` (hex, empty outside a span) to every log record, so access and
    JSON log lines can be joined with traces. Installed only when tracing is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True
