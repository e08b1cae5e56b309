"""Client error mapping and retry behaviour, against scripted fake servers (a threaded HTTP server and a
grpc server with a scripted Classify servicer) that count the attempts they receive."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from concurrent import futures
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

from clients import errors
from clients.grpc_client import AsyncGrpcClient, GrpcClient
from clients.http_client import AsyncHttpClient, HttpClient
from clients.retry import RetryPolicy
from protos import classify_pb2, classify_pb2_grpc

IMAGE = b"\xff\xd8\xff fake jpeg bytes: the fake servers never decode"
OK_BODY = {
    "model_name": "m",
    "model_version": "3",
    "results": [{"predictions": [{"label": "cat", "index": 7, "score": 0.9}]}],
}


# -- error mapping ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.InvalidInputError),
        (401, errors.UnauthenticatedError),
        (404, errors.NotFoundError),
        (413, errors.PayloadTooLargeError),
        (415, errors.UnsupportedMediaError),
        (422, errors.InvalidInputError),
        (500, errors.ServerInternalError),
        (503, errors.UnavailableError),
        (504, errors.DeadlineExceededError),
        (502, errors.ServerInternalError),
        (418, errors.InvalidInputError),
    ],
)
def test_http_status_maps_to_its_exception(status, cls):
    exc = errors.from_http(status, json.dumps({"error": f"problem {status}"}).encode(), {})
    assert type(exc) is cls
    assert exc.message == f"problem {status}" and exc.status == status


def test_http_503_with_retry_after_is_queue_full():
    exc = errors.from_http(503, b'{"error": "queue full"}', {"retry-after": "2"})
    assert isinstance(exc, errors.QueueFullError) and isinstance(exc, errors.UnavailableError)
    assert exc.retry_after == 2.0 and exc.retryable


def test_retry_after_as_http_date():
    when = datetime.now(UTC) + timedelta(seconds=30)
    seconds = errors.parse_retry_after(format_datetime(when, usegmt=True))
    assert 25 <= seconds <= 31
    assert errors.parse_retry_after("soon") is None
    assert errors.parse_retry_after(None) is None


def test_non_json_error_body_keeps_the_text():
    exc = errors.from_http(500, b"<html>proxy error</html>", {})
    assert isinstance(exc, errors.ServerInternalError) and "proxy error" in str(exc)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("INVALID_ARGUMENT", errors.InvalidInputError),
        ("NOT_FOUND", errors.NotFoundError),
        ("UNAVAILABLE", errors.UnavailableError),
        ("DEADLINE_EXCEEDED", errors.DeadlineExceededError),
        ("INTERNAL", errors.ServerInternalError),
        ("UNAUTHENTICATED", errors.UnauthenticatedError),
        ("CANCELLED", errors.CancelledError),
        ("UNKNOWN", errors.ServerInternalError),
    ],
)
def test_grpc_code_maps_to_its_exception(code, cls):
    exc = errors.from_grpc_code(code, "details")
    assert type(exc) is cls and exc.grpc_code == code and exc.message == "details"


def test_grpc_unavailable_with_pushback_is_queue_full():
    exc = errors.from_grpc_code("UNAVAILABLE", "queue full", (("grpc-retry-pushback-ms", "250"),))
    assert isinstance(exc, errors.QueueFullError) and exc.retry_after == 0.25


def test_stream_status_number_maps_like_the_code():
    assert isinstance(errors.from_grpc_number(3, "bad image"), errors.InvalidInputError)
    assert isinstance(errors.from_grpc_number(14, "busy"), errors.UnavailableError)


def test_backoff_delay_is_jittered_within_the_cap_and_honours_retry_after():
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.3, multiplier=2.0)
    rng = random.Random(1)
    busy = errors.UnavailableError("x")
    for attempt, cap in ((1, 0.1), (2, 0.2), (3, 0.3), (6, 0.3)):
        delays = [policy.delay(attempt, busy, rng) for _ in range(200)]
        assert min(delays) >= 0.0 and max(delays) <= cap
        assert max(delays) > 0.5 * cap  # jitter spreads over the range, not a constant
    full = errors.QueueFullError("full", retry_after=1.5)
    assert all(policy.delay(1, full, rng) >= 1.5 for _ in range(20))
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


# -- a scripted HTTP server -----------------------------------------------------------------------------


class ScriptedHttp:
    """Answers POSTs with the scripted (status, headers, body) in order (the last one repeats)."""

    def __init__(self, script: list[tuple[int, dict[str, str], dict]]) -> None:
        self.script = list(script)
        self.attempts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                index = min(outer.attempts, len(outer.script) - 1)
                outer.attempts += 1
                status, headers, body = outer.script[index]
                data = json.dumps(body).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_server():
    servers: list[ScriptedHttp] = []

    def make(*script):
        servers.append(ScriptedHttp(list(script)))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def _policy(record: list, **kw) -> RetryPolicy:
    base = {"max_attempts": 4, "initial_backoff": 0.01, "max_backoff": 0.05}
    base.update(kw)
    return RetryPolicy(on_retry=lambda attempt, err, delay: record.append((attempt, err, delay)), **base)


BUSY = (503, {}, {"error": "server is starting: models are being loaded"})
OK = (200, {}, OK_BODY)


def test_http_503_twice_then_200_is_retried(http_server):
    server = http_server(BUSY, BUSY, OK)
    retries: list = []
    with HttpClient(server.address, model="m", retry=_policy(retries)) as client:
        result = client.classify(IMAGE)
    assert server.attempts == 3
    assert [r[0] for r in retries] == [1, 2] and all(type(r[1]) is errors.UnavailableError for r in retries)
    assert (result.top.label, result.top.index, result.model_version) == ("cat", 7, "3")


def test_http_400_is_not_retried(http_server):
    server = http_server((400, {}, {"error": "cannot decode image"}), OK)
    retries: list = []
    with (
        HttpClient(server.address, model="m", retry=_policy(retries)) as client,
        pytest.raises(errors.InvalidInputError, match="cannot decode image"),
    ):
        client.classify(IMAGE)
    assert server.attempts == 1 and retries == []


def test_http_gives_up_after_max_attempts(http_server):
    server = http_server(BUSY)
    retries: list = []
    with (
        HttpClient(server.address, model="m", retry=_policy(retries, max_attempts=3)) as client,
        pytest.raises(errors.UnavailableError, match="models are being loaded"),
    ):
        client.classify(IMAGE)
    assert server.attempts == 3 and len(retries) == 2


def test_http_retry_after_is_honoured(http_server):
    server = http_server((503, {"Retry-After": "1"}, {"error": "queue full"}), OK)
    retries: list = []
    with HttpClient(server.address, model="m", retry=_policy(retries)) as client:
        client.classify(IMAGE)
    assert server.attempts == 2
    (_attempt, err, delay), = retries
    assert isinstance(err, errors.QueueFullError) and err.retry_after == 1.0 and delay >= 1.0


def test_http_retry_after_past_the_deadline_raises_at_once(http_server):
    server = http_server((503, {"Retry-After": "30"}, {"error": "queue full"}), OK)
    retries: list = []
    with (
        HttpClient(server.address, model="m", retry=_policy(retries), timeout=2.0) as client,
        pytest.raises(errors.QueueFullError) as info,
    ):
        client.classify(IMAGE)
    assert info.value.retry_after == 30.0
    assert server.attempts == 1 and retries == []


def test_async_http_503_twice_then_200_is_retried(http_server):
    server = http_server(BUSY, BUSY, OK)
    retries: list = []

    async def main():
        async with AsyncHttpClient(server.address, model="m", retry=_policy(retries)) as client:
            return await client.classify(IMAGE)

    result = asyncio.run(main())
    assert server.attempts == 3 and len(retries) == 2 and result.top.index == 7


def test_unreachable_server_is_unavailable_and_retried():
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    retries: list = []
    with (
        HttpClient(f"127.0.0.1:{port}", model="m", retry=_policy(retries, max_attempts=2)) as client,
        pytest.raises(errors.UnavailableError, match="cannot reach"),
    ):
        client.classify(IMAGE)
    assert len(retries) == 1


# -- a scripted gRPC server ----------------------------------------------------------------------------


class ScriptedClassify(classify_pb2_grpc.ClassifyServicer):
    """Aborts with the scripted (code, trailers) in order, then answers."""

    def __init__(self, script: list[tuple[grpc.StatusCode, tuple]]) -> None:
        self.script = list(script)
        self.attempts = 0
        self.lock = threading.Lock()

    def Classify(self, request, context):
        with self.lock:
            index = self.attempts
            self.attempts += 1
        if index < len(self.script):
            code, trailers = self.script[index]
            if trailers:
                context.set_trailing_metadata(trailers)
            context.abort(code, f"scripted {code.name}")
        cat = classify_pb2.Prediction(label="cat", index=7, score=0.9)
        return classify_pb2.ClassifyResponse(
            model_name=request.model_name,
            model_version="3",
            results=[classify_pb2.ImageResult(predictions=[cat]) for _ in request.images],
        )


@pytest.fixture
def grpc_server():
    servers = []

    def make(*script):
        servicer = ScriptedClassify(list(script))
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        classify_pb2_grpc.add_ClassifyServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return servicer, f"127.0.0.1:{port}"

    yield make
    for server in servers:
        server.stop(None)


UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, ())


def test_grpc_unavailable_twice_then_ok_is_retried(grpc_server):
    servicer, address = grpc_server(UNAVAILABLE, UNAVAILABLE)
    retries: list = []
    with GrpcClient(address, model="m", retry=_policy(retries)) as client:
        result = client.classify_many([IMAGE, IMAGE], batch_size=2)
    assert servicer.attempts == 3 and len(retries) == 2
    assert [r.top.index for r in result] == [7, 7] and result.model_version == "3"


def test_grpc_invalid_argument_is_not_retried(grpc_server):
    servicer, address = grpc_server((grpc.StatusCode.INVALID_ARGUMENT, ()))
    retries: list = []
    with (
        GrpcClient(address, model="m", retry=_policy(retries)) as client,
        pytest.raises(errors.InvalidInputError, match="scripted INVALID_ARGUMENT"),
    ):
        client.classify(IMAGE)
    assert servicer.attempts == 1 and retries == []


def test_grpc_pushback_is_queue_full_and_honoured(grpc_server):
    servicer, address = grpc_server((grpc.StatusCode.UNAVAILABLE, (("grpc-retry-pushback-ms", "300"),)))
    retries: list = []
    with GrpcClient(address, model="m", retry=_policy(retries)) as client:
        client.classify(IMAGE)
    (_attempt, err, delay), = retries
    assert isinstance(err, errors.QueueFullError) and err.retry_after == 0.3 and delay >= 0.3
    assert servicer.attempts == 2


def test_async_grpc_unavailable_twice_then_ok_is_retried(grpc_server):
    servicer, address = grpc_server(UNAVAILABLE, UNAVAILABLE)
    retries: list = []

    async def main():
        async with AsyncGrpcClient(address, model="m", retry=_policy(retries)) as client:
            return await client.classify(IMAGE)

    assert asyncio.run(main()).top.label == "cat"
    assert servicer.attempts == 3 and len(retries) == 2


def test_async_grpc_gives_up_after_max_attempts(grpc_server):
    servicer, address = grpc_server(*[UNAVAILABLE] * 5)
    retries: list = []

    async def main():
        async with AsyncGrpcClient(address, model="m", retry=_policy(retries, max_attempts=2)) as client:
            await client.classify(IMAGE)

    with pytest.raises(errors.UnavailableError):
        asyncio.run(main())
    assert servicer.attempts == 2 and len(retries) == 1


def test_a_model_name_is_required():
    with HttpClient("127.0.0.1:1") as client, pytest.raises(ValueError, match="no model name"):
        client.classify(IMAGE)
