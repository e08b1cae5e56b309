"""OpenTelemetry tracing (``server.tracing``): off unless configured; against the real server, an
in-test OTLP receiver (HTTP and gRPC) gets each request's server span under the caller's W3C trace id,
with ``preprocess``, ``queue`` and ``inference`` children, and ``batch`` spans linking the requests
they served; log lines carry the trace id. In process, the batcher links every request of a batch."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from protos import classify_pb2, classify_pb2_grpc, grpc_service_pb2, grpc_service_pb2_grpc
from server.batcher import Batcher, BatcherConfig
from server.tracing import Tracing, TracingConfig, tracing_config
from tests.support import server_fixtures as sf
from tests.support.otlp_receiver import GrpcReceiver, HttpReceiver

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is part of [dev]")

SPAN_KINDS = {"server": 2}  # OTLP's SPAN_KIND_SERVER


def traceparent() -> tuple[str, str, str]:
    """A caller's W3C traceparent header and its trace and span ids."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


# -- configuration -------------------------------------------------------------------------------------


def test_off_unless_configured() -> None:
    assert tracing_config(None, None, environ={}) is None
    assert tracing_config(None, None, environ={"OTEL_SERVICE_NAME": "x"}) is None


def test_configured_by_flag_or_standard_variables() -> None:
    assert tracing_config("http://c:4318", None, environ={}) == TracingConfig(
        "http://c:4318", "http/protobuf", "--otel-endpoint")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    expected = TracingConfig(None, "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT")
    assert tracing_config(None, None, environ=env) == expected
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    assert tracing_config(None, None, environ=env).protocol == "http/protobuf"  # the traces variable wins
    assert tracing_config("http://c:4317", "grpc", environ=env).protocol == "grpc"  # the flag wins
    assert tracing_config("http://c", None, environ={"OTEL_SDK_DISABLED": "true"}) is None


def test_unsupported_protocol_is_named() -> None:
    with pytest.raises(ValueError, match=r"'http/json' is not supported; use one of http/protobuf, grpc"):
        tracing_config(None, None, environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c",
                                            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_cli_refuses_an_unsupported_protocol(slim_repository: Path, monkeypatch, capsys) -> None:
    from cli.main import main

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    assert main(["serve", "--model-repository", str(slim_repository)]) == 2
    assert "tracing: OTLP protocol 'http/json' is not supported" in capsys.readouterr().err


# -- the batcher, in process -----------------------------------------------------------------------------


class _Gated:
    """A fake instance whose batches wait for a gate, so queued requests gather into one batch."""

    name = "m/1#0"
    runtime = "fake"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.batches: list[int] = []

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        await self.gate.wait()
        return batch[:, :1] * 2.0


def test_a_batch_links_every_request_it_served() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)

    async def scenario() -> None:
        instance = _Gated()
        batcher = Batcher("m", [instance], version="1", config=BatcherConfig(max_batch_size=8),
                          tracing=tracing)

        async def request(tag: float) -> None:
            span = tracing.tracer.start_as_current_span(f"request-{tag:.0f}")
            with span, batcher.reserve(1) as reservation:
                await reservation.infer([np.array([tag, 1.0], dtype=np.float32)])

        first = asyncio.create_task(request(1))
        while not instance.batches:  # the first request runs alone; the next three queue behind it
            await asyncio.sleep(0.001)
        rest = [asyncio.create_task(request(tag)) for tag in (2, 3, 4)]
        await asyncio.sleep(0.05)
        instance.gate.set()
        await asyncio.gather(first, *rest)
        await batcher.drain(5)

    asyncio.run(asyncio.wait_for(scenario(), 20))
    spans = exporter.get_finished_spans()
    requests = {s.name: s for s in spans if s.name.startswith("request-")}
    batches = [s for s in spans if s.name == "batch"]
    assert sorted(len(b.links) for b in batches) == [1, 3]
    shared = next(b for b in batches if len(b.links) == 3)
    linked = {link.context.span_id for link in shared.links}
    assert linked == {requests[f"request-{t}"].context.span_id for t in (2, 3, 4)}
    assert shared.attributes["ddrnet.batch_size"] == 3
    assert shared.attributes["ddrnet.instance"] == "m/1#0" and shared.attributes["ddrnet.runtime"] == "fake"
    assert shared.parent is None  # a batch is a trace of its own, linked, not a child of one request
    for name, request_span in requests.items():
        mine = request_span.context.span_id
        children = [s for s in spans if s.parent is not None and s.parent.span_id == mine]
        assert sorted(s.name for s in children) == ["inference", "queue"], name
        queue = next(s for s in children if s.name == "queue")
        inference = next(s for s in children if s.name == "inference")
        assert queue.start_time <= queue.end_time <= inference.start_time < inference.end_time
        assert inference.attributes["ddrnet.version"] == "1"


# -- the real server ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_receiver():
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def traced_server(slim_repository: Path, http_receiver: HttpReceiver,
                  tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("traced") / "server.log"
    proc = sf.ServerProcess(slim_repository, log, "--instances", "1", "--threads-per-instance", "1",
                            "--otel-endpoint", http_receiver.endpoint, "--access-log", "--log-json",
                            env={"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "ddrnet-under-test"})
    yield proc.start()
    proc.kill()


def _tree(receiver, trace_id: str, server_span_id: str) -> dict[str, dict]:
    spans = receiver.of_trace(trace_id)
    return {s["name"]: s for s in spans if s["parent_span_id"] == server_span_id}


def _server_span(receiver, trace_id: str, caller_span: str) -> dict | None:
    return next((s for s in receiver.of_trace(trace_id) if s["parent_span_id"] == caller_span
                 and s["kind"] == SPAN_KINDS["server"]), None)


def _complete(receiver, trace_id: str, caller_span: str) -> bool:
    """The request's server span and its preprocess, queue and inference children have arrived."""
    server = _server_span(receiver, trace_id, caller_span)
    return server is not None and {"preprocess", "queue", "inference"} <= set(
        _tree(receiver, trace_id, server["span_id"]))


def test_http_request_spans_carry_the_callers_trace_id(traced_server, http_receiver) -> None:
    header, trace_id, caller_span = traceparent()
    image = sf.photos()[0]
    response = httpx.post(f"{traced_server.http_url}/v1/models/slim/classify", files={"file": image},
                          headers={"traceparent": header}, timeout=60)
    assert response.status_code == 200, response.text

    done = http_receiver.wait_for(lambda r: _complete(r, trace_id, caller_span))
    assert done, http_receiver.of_trace(trace_id)
    server = _server_span(http_receiver, trace_id, caller_span)
    assert server["attributes"]["ddrnet.model"] == "slim"
    assert server["attributes"]["ddrnet.version"] == "1" and server["attributes"]["ddrnet.images"] == 1
    assert server["resource"]["service.name"] == "ddrnet-under-test"
    children = _tree(http_receiver, trace_id, server["span_id"])
    inference = children["inference"]["attributes"]
    assert inference["ddrnet.batch_size"] >= 1 and inference["ddrnet.version"] == "1"
    assert inference["ddrnet.runtime"] == "onnxruntime" and inference["ddrnet.instance"]
    assert children["preprocess"]["end_ns"] <= children["queue"]["start_ns"] + 1_000_000
    assert http_receiver.wait_for(lambda r: any(
        (trace_id, server["span_id"]) in b["links"] for b in r.named("batch")))

    # the access log line of the request names the trace
    assert sf.wait_until(lambda: trace_id in traced_server.log_path.read_text(), 10)
    lines = [json.loads(line) for line in traced_server.log_path.read_text().splitlines()
             if line.startswith("{") and trace_id in line]
    assert any("/v1/models/slim/classify" in entry["message"] and entry["trace_id"] == trace_id
               for entry in lines)


def test_probes_and_scrapes_are_not_traced(traced_server, http_receiver) -> None:
    header, trace_id, _ = traceparent()
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        response = httpx.get(traced_server.http_url + path, headers={"traceparent": header}, timeout=10)
        assert response.status_code == 200
    header2, trace_id2, caller2 = traceparent()
    httpx.get(f"{traced_server.http_url}/v2/models/slim", headers={"traceparent": header2}, timeout=10)
    assert http_receiver.wait_for(lambda r: _server_span(r, trace_id2, caller2) is not None)
    assert http_receiver.of_trace(trace_id) == []


def test_a_refused_request_is_traced_with_its_error(traced_server, http_receiver) -> None:
    header, trace_id, caller_span = traceparent()
    response = httpx.post(f"{traced_server.http_url}/v1/models/slim/classify",
                          files={"file": b"GIF89a broken"}, headers={"traceparent": header}, timeout=60)
    assert response.status_code == 400
    assert http_receiver.wait_for(lambda r: _server_span(r, trace_id, caller_span) is not None)
    attributes = _server_span(http_receiver, trace_id, caller_span)["attributes"]
    # the instrumentation's semantic conventions: the stable name or the older one (OTEL_SEMCONV_...)
    assert attributes.get("http.response.status_code", attributes.get("http.status_code")) == 400, attributes


def test_grpc_spans_over_otlp_grpc(slim_repository: Path, tmp_path: Path) -> None:
    receiver = GrpcReceiver()
    proc = sf.ServerProcess(slim_repository, tmp_path / "server.log", "--instances", "1",
                            "--threads-per-instance", "1", "--otel-protocol", "grpc",
                            env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                 "OTEL_BSP_SCHEDULE_DELAY": "100"})
    try:
        proc.start()
        images = sf.photos()[:2]
        callers = []
        with grpc.insecure_channel(proc.grpc_target) as channel:
            classify = classify_pb2_grpc.ClassifyStub(channel)
            oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)

            def call_classify() -> None:
                header, trace_id, span = traceparent()
                callers.append((trace_id, span))
                classify.Classify(classify_pb2.ClassifyRequest(model_name="slim", images=images),
                                  metadata=[("traceparent", header)], timeout=60)

            def call_infer() -> None:
                header, trace_id, span = traceparent()
                callers.append((trace_id, span))
                request = grpc_service_pb2.ModelInferRequest(model_name="slim")
                tensor = request.inputs.add(name="images", datatype="BYTES", shape=[1])
                tensor.contents.bytes_contents.append(images[0])
                oip.ModelInfer(request, metadata=[("traceparent", header)], timeout=60)

            threads = [threading.Thread(target=fn) for fn in (call_classify, call_infer)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(90)
        assert len(callers) == 2
        for trace_id, caller_span in callers:
            done = receiver.wait_for(lambda r, t=trace_id, c=caller_span: _complete(r, t, c))
            assert done, receiver.of_trace(trace_id)
            server = _server_span(receiver, trace_id, caller_span)
            assert server["attributes"]["rpc.system"] == "grpc"
    finally:
        proc.kill()
        receiver.close()


def test_requests_the_sampler_left_out_cost_their_batch_nothing() -> None:
    """A request whose trace is not sampled gives its items no parent: its batch records no spans."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)

    async def scenario() -> None:
        instance = _Gated()
        instance.gate.set()
        batcher = Batcher("m", [instance], version="1", config=BatcherConfig(), tracing=tracing)
        with tracing.tracer.start_as_current_span("request"), batcher.reserve(1) as reservation:
            assert tracing.current() is None
            await reservation.infer([np.array([1.0, 1.0], dtype=np.float32)])
        await batcher.drain(5)

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert exporter.get_finished_spans() == ()
