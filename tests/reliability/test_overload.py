"""Overload, end to end on a real ``ddrnet serve`` whose model instance is slow (the synthetic model of
tests/support/slow_runtime.py: a known time per batch, real worker processes):

- a burst of 10x the capacity (queue + batch in flight), over HTTP and gRPC at once: the excess is
  refused with 503 + Retry-After / UNAVAILABLE + grpc-retry-pushback-ms before any decoding (the
  server's counters: rejected == refused, preprocessed == accepted), every accepted request completes
  with the right answer, the model ran exactly the accepted images, peak RSS stays bounded, and a
  bounded run afterwards succeeds in full (benchmarks/overload.py, small numbers);
- requests whose client went away (HTTP disconnect, gRPC cancel) or whose deadline passed while
  queued (gRPC deadline, X-Request-Timeout-Ms) leave the queue: the model never sees their images
  and ``ddrnet_dropped_total`` counts them.
"""

from __future__ import annotations

import threading
import time

import grpc
import httpx
import pytest

from benchmarks import overload
from protos import classify_pb2, classify_pb2_grpc
from tests.support import reliability_fixtures as rf

DELAY_MS = 250.0
BATCH = 2
QUEUE = 4
CAPACITY = QUEUE + BATCH
BURST = 10 * CAPACITY
RECOVERY = 12


def images_seen(log_path) -> list[list[float]]:
    """Images the model ran, leaving out the warm-up batches (all zeros)."""
    return [m for m in rf.slow_runtime.seen_means(log_path) if any(m)]


def test_a_burst_of_ten_times_capacity(tmp_path) -> None:
    model_log = tmp_path / "model.log"
    figures, outcomes = overload.run(delay_ms=DELAY_MS, max_batch_size=BATCH, max_queue_size=QUEUE,
                                     burst=BURST, recovery=RECOVERY, workdir=tmp_path, model_log=model_log)
    print(figures)
    f = figures
    assert f.offered == BURST and f.other == 0, f.other_outcomes  # each one accepted or refused
    assert f.accepted >= 1 and f.wrong_answers == 0
    assert f.rejected >= BURST // 2, figures  # the excess is refused ...
    rejected = [o for o in outcomes if o.status == "rejected"]
    assert {o.protocol for o in rejected} == {"http", "grpc"}
    assert all("queue is full" in o.message for o in rejected)
    assert f.rejections_with_retry_hint == f.rejected  # ... with Retry-After / pushback
    assert all(int(o.retry_hint) >= 1 for o in rejected if o.protocol == "http")
    # Refused before any work: the server counted each refusal and preprocessed only the accepted.
    assert f.server_rejected_queue_full == f.rejected
    assert f.server_requests_preprocessed == f.accepted
    # The model ran exactly: warm-up run + before run + the accepted ones + after run.
    assert len(images_seen(model_log)) == 2 * CAPACITY + RECOVERY + f.accepted + RECOVERY
    # Memory bounded: the burst added little to the peak RSS of the server and its worker.
    assert 0 < f.peak_rss_mib["server"] < 1024 and set(f.peak_rss_mib) == {"server", "worker0"}
    assert f.rss_growth_mib < 64, f.peak_rss_mib
    # Afterwards the server serves in full again.
    assert f.after_failures == 0 and f.after_img_s > 0


FILLERS = 6
MARKERS = [(11, 22, 33), (44, 55, 66), (77, 88, 99), (100, 110, 120), (130, 140, 150), (160, 170, 180)]


@pytest.fixture
def slow_server(tmp_path):
    rf.publish(tmp_path / "repo")
    proc = rf.SlowServer(tmp_path / "repo", tmp_path / "server.log", "--max-batch-size", "1",
                         "--max-queue-size", "32", delay_ms=400, model_log=tmp_path / "model.log").start()
    yield proc
    proc.kill()


def test_cancelled_and_expired_requests_never_reach_the_model(slow_server) -> None:
    server = slow_server
    url = f"{server.http_url}/v1/models/{rf.MODEL}/classify"
    png = {"content-type": "image/png"}
    results: list[int] = []

    def filler() -> None:
        results.append(httpx.post(url, content=rf.solid("red"), headers=png, timeout=60).status_code)

    fillers = [threading.Thread(target=filler) for _ in range(FILLERS)]  # 2.4 s of work ahead
    for thread in fillers:
        thread.start()
    inflight = 'ddrnet_inflight_requests{model="slow",protocol="http"}'
    assert rf.wait_until(lambda: rf.metric(httpx.get(f"{server.http_url}/metrics").text, inflight)
                         >= FILLERS, 30, 0.02)  # every filler is in the queue or running
    marker = [rf.solid(rgb) for rgb in MARKERS]
    outcomes: dict[str, str] = {}

    def http_disconnects(image: bytes, name: str) -> None:  # the client gives up and closes
        try:
            httpx.post(url, content=image, headers=png, timeout=0.3)
            outcomes[name] = "answered"
        except httpx.TimeoutException:
            outcomes[name] = "client timeout"

    def http_deadline(image: bytes, name: str) -> None:  # the server's deadline from the header
        response = httpx.post(url, content=image, headers={**png, "x-request-timeout-ms": "300"}, timeout=60)
        outcomes[name] = f"{response.status_code} {response.json().get('error', '')}"

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = classify_pb2_grpc.ClassifyStub(channel)

        def request(image: bytes) -> classify_pb2.ClassifyRequest:
            return classify_pb2.ClassifyRequest(model_name=rf.MODEL, images=[image])

        threads = [threading.Thread(target=http_disconnects, args=(marker[0], "http-disconnect")),
                   threading.Thread(target=http_deadline, args=(marker[1], "http-deadline"))]
        for thread in threads:
            thread.start()
        try:
            stub.Classify(request(marker[2]), timeout=0.3)
            outcomes["grpc-deadline"] = "answered"
        except grpc.RpcError as err:
            outcomes["grpc-deadline"] = err.code().name
        future = stub.Classify.future(request(marker[3]), timeout=60)
        time.sleep(0.2)
        future.cancel()
        outcomes["grpc-cancel"] = "cancelled" if future.cancelled() else "not cancelled"
        stream_call = stub.ClassifyStream(iter([request(marker[4]), request(marker[5])]), timeout=60)
        time.sleep(0.2)
        stream_call.cancel()
        for thread in threads:
            thread.join(60)
    for thread in fillers:
        thread.join(60)

    assert results == [200] * FILLERS
    assert outcomes["http-disconnect"] == "client timeout"
    assert outcomes["http-deadline"].startswith("504") and "deadline" in outcomes["http-deadline"]
    assert outcomes["grpc-deadline"] == "DEADLINE_EXCEEDED"
    assert outcomes["grpc-cancel"] == "cancelled"

    def dropped(reason: str) -> float:
        text = httpx.get(f"{server.http_url}/metrics").text
        return rf.metric(text, f'ddrnet_dropped_total{{model="slow",reason="{reason}"}}')

    # Counted as they leave the queue: the X-Request-Timeout-Ms deadline; 4 cancellations (HTTP
    # disconnect, gRPC cancel, the two images of the cancelled stream); the gRPC deadline is either:
    # the client's expiry cancels the call a hair before the server's copy of the deadline is due.
    assert rf.wait_until(lambda: dropped("deadline") + dropped("cancelled") >= 6, 30), (
        dropped("deadline"), dropped("cancelled"), server.log_tail())
    assert dropped("deadline") + dropped("cancelled") == 6
    assert dropped("deadline") >= 1 and dropped("cancelled") >= 4
    rf.wait_until(lambda: rf.metric(httpx.get(f"{server.http_url}/metrics").text,
                                    'ddrnet_queue_depth{model="slow"}') == 0, 30)
    seen = images_seen(server.model_log)
    for rgb in MARKERS:  # the model never saw any of them
        expected = rf.slow_runtime.normalised_means(rgb)
        assert all(max(abs(a - b) for a, b in zip(m, expected, strict=True)) > 1e-3 for m in seen), rgb
    assert len(seen) == FILLERS  # the fillers and nothing else
    after = httpx.post(url, content=rf.solid("blue"), headers=png, timeout=60)
    assert after.json()["results"][0]["predictions"][0]["label"] == "blue"


def test_grpc_concurrent_call_cap_refuses_at_once(tmp_path) -> None:
    """With --grpc-max-concurrent-rpcs 2 and 300 ms batches of one image, a burst of 6 gRPC calls gets
    RESOURCE_EXHAUSTED for the calls over the cap, at once, and the rest are answered correctly."""
    rf.publish(tmp_path / "repo")
    server = rf.SlowServer(tmp_path / "repo", tmp_path / "server.log", "--max-batch-size", "1",
                           "--grpc-max-concurrent-rpcs", "2", delay_ms=300).start()
    try:
        codes: list[grpc.StatusCode] = []
        barrier = threading.Barrier(6)

        def call() -> None:
            with grpc.insecure_channel(server.grpc_target) as channel:
                stub = classify_pb2_grpc.ClassifyStub(channel)
                request = classify_pb2.ClassifyRequest(model_name=rf.MODEL, images=[rf.solid("green")])
                barrier.wait()
                try:
                    reply = stub.Classify(request, timeout=60)
                    assert reply.results[0].predictions[0].label == "green"
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())

        threads = [threading.Thread(target=call) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(codes) == 6
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1, codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        assert codes.count(grpc.StatusCode.OK) >= 2
    finally:
        server.kill()
