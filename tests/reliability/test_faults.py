"""Faults, end to end on a real ``ddrnet serve`` (synthetic model, real worker processes) under steady
HTTP + gRPC traffic:

- a runtime exception in one batch fails only that batch (500 / INTERNAL), the worker stays;
- a SIGKILLed worker fails at most its batch in flight (503 / UNAVAILABLE) and is replaced while the
  server keeps answering;
- a corrupt (checksum), half-written (no complete model.json) or unloadable new version is never
  served, is counted in ``ddrnet_model_load_failures_total``, and the current version keeps serving
  with zero failed requests; a good version published afterwards is picked up;
- the repository directory vanishing does not crash the server, and it picks up models again when
  the directory comes back;
- SIGTERM under load (HTTP, gRPC unary and a gRPC stream) finishes every accepted request, refuses new
  ones with 503 / UNAVAILABLE, and exits 0.

(The same promises on the exported DDRNet-23-slim are in tests/server/test_e2e_server.py, marked slow.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading

import grpc
import httpx
import numpy as np
import pytest

from model import manifest as mf
from model import repository as repo
from protos import classify_pb2, classify_pb2_grpc
from tests.support import reliability_fixtures as rf


def start(tmp_path, *args: str, delay_ms: float = 20.0) -> rf.SlowServer:
    rf.publish(tmp_path / "repo")
    return rf.SlowServer(tmp_path / "repo", tmp_path / "server.log", *args, delay_ms=delay_ms).start()


def metrics(server: rf.SlowServer) -> str:
    return httpx.get(f"{server.http_url}/metrics", timeout=30).text


def infer_fp32(server: rf.SlowServer, first: float) -> httpx.Response:
    tensor = np.zeros((1, 3, 8, 8), np.float32)
    tensor[0, 0, 0, 0] = first
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8],
                        "data": tensor.ravel().tolist()}]}
    return httpx.post(f"{server.http_url}/v2/models/{rf.MODEL}/infer", json=body, timeout=60)


def test_a_runtime_exception_fails_only_its_batch(tmp_path) -> None:
    server = start(tmp_path, "--max-batch-size", "1")
    try:
        traffic = rf.Traffic(server)
        [worker] = rf.sf.worker_pids(server.pid)
        assert traffic.wait_for(10)
        poisoned = [infer_fp32(server, rf.slow_runtime.FAIL) for _ in range(3)]
        with grpc.insecure_channel(server.grpc_target) as channel:
            from protos import grpc_service_pb2, grpc_service_pb2_grpc

            tensor = np.zeros((1, 3, 8, 8), np.float32)
            tensor[0, 0, 0, 0] = rf.slow_runtime.FAIL
            request = grpc_service_pb2.ModelInferRequest(
                model_name=rf.MODEL, raw_input_contents=[tensor.tobytes()],
                inputs=[grpc_service_pb2.ModelInferRequest.InferInputTensor(
                    name="input", datatype="FP32", shape=[1, 3, 8, 8])])
            with pytest.raises(grpc.RpcError) as info:
                grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
        assert info.value.code() is grpc.StatusCode.INTERNAL
        assert "injected runtime failure" in info.value.details()
        assert traffic.wait_for(10)
        answers = traffic.stop()
        for response in poisoned:
            assert response.status_code == 500 and "injected runtime failure" in response.json()["error"]
        assert traffic.failures() == [] and len(answers) >= 20
        assert infer_fp32(server, 0.5).status_code == 200
        assert rf.sf.worker_pids(server.pid) == [worker]  # the worker was not restarted
        assert rf.metric(metrics(server), 'ddrnet_worker_restarts_total{model="slow"') == 0
    finally:
        server.kill()


def test_a_sigkilled_worker_is_replaced_while_serving(tmp_path) -> None:
    server = start(tmp_path, "--max-batch-size", "2", delay_ms=60)
    try:
        traffic = rf.Traffic(server, clients=3)
        assert traffic.wait_for(15)
        [worker] = rf.sf.worker_pids(server.pid)
        os.kill(worker, signal.SIGKILL)
        assert rf.wait_until(lambda: rf.sf.worker_pids(server.pid) not in ([], [worker]), 60)
        assert traffic.wait_for(30)
        traffic.stop()
        failed = traffic.failures()
        assert all(f[1] in ("503", "UNAVAILABLE") for f in failed), failed
        assert len(failed) <= 2, failed  # at most the batch in flight (max batch size 2)
        assert traffic.answers[-1][1] in ("200", "OK")
        restarts = 'ddrnet_worker_restarts_total{model="slow",reason="worker_died"}'
        assert rf.wait_until(lambda: rf.metric(metrics(server), restarts) == 1, 10)
        assert httpx.get(f"{server.http_url}/v2/health/ready", timeout=30).status_code == 200
    finally:
        server.kill()


def _corrupt_copy(repository, source_version: int, version: int) -> None:
    """Publish (atomically) a copy of a version whose model file no longer matches its checksum."""
    staging = repo.create_staging_dir(repository, rf.MODEL)
    source = repo.version_dir(repository, rf.MODEL, source_version)
    data = bytearray((source / "model.onnx").read_bytes())
    data[0] ^= 0xFF  # same size, different SHA-256
    (staging / "model.onnx").write_bytes(bytes(data))
    manifest = mf.load_manifest(source)
    manifest.version = version
    mf.write_manifest(staging, manifest)
    os.rename(staging, repo.model_dir(repository, rf.MODEL) / str(version))


def _half_written(repository, version: int) -> None:
    """A version directory written in place, caught half way: model.json cut short, no model file."""
    vdir = repo.model_dir(repository, rf.MODEL) / str(version)
    vdir.mkdir()
    text = mf.load_manifest(repo.version_dir(repository, rf.MODEL, 1)).to_json()
    (vdir / "model.json").write_text(text[: len(text) // 2])


def test_broken_new_versions_are_never_served(tmp_path) -> None:
    server = start(tmp_path, "--poll-interval-s", "0.2")
    repository = server.repository
    try:
        traffic = rf.Traffic(server)
        assert traffic.wait_for(10)
        _corrupt_copy(repository, 1, 2)
        _half_written(repository, 3)
        rf.publish(repository, 4, arch="broken")  # complete, but the runtime cannot load it
        failures = 'ddrnet_model_load_failures_total{model="slow",reason="%s"}'

        def counted() -> bool:
            text = metrics(server)
            return (rf.metric(text, failures % "incomplete") >= 2
                    and rf.metric(text, failures % "load_error") >= 1)

        assert rf.wait_until(counted, 30), server.log_tail()
        assert traffic.wait_for(20)  # several polls later, still serving version 1
        text = metrics(server)
        assert rf.metric(text, failures % "incomplete") == 2 and rf.metric(text, failures % "load_error") == 1
        assert {a[2] for a in traffic.answers} == {"1"} and traffic.failures() == []
        assert httpx.get(f"{server.http_url}/v2/health/ready", timeout=30).status_code == 200
        log = server.stderr()
        for version in (2, 3):
            assert f"model slow version {version} is not complete" in log
        assert "synthetic load failure" in log
        rf.publish(repository, 5)  # a good version later is picked up, still with no failure
        assert rf.wait_until(lambda: traffic.answers[-1][2] == "5", 30), server.log_tail()
        assert traffic.wait_for(10)
        answers = traffic.stop()
        assert traffic.failures() == []
        versions = [a[2] for a in answers]
        assert set(versions) == {"1", "5"} and versions[-1] == "5"
    finally:
        server.kill()


def test_the_repository_vanishing_does_not_crash_the_server(tmp_path) -> None:
    server = start(tmp_path, "--poll-interval-s", "0.2")
    repository = server.repository
    gone = tmp_path / "moved-away"
    try:
        traffic = rf.Traffic(server)
        assert traffic.wait_for(10)
        os.rename(repository, gone)
        assert traffic.wait_for(30)  # ~6 s of polls with no repository
        assert traffic.failures() == [] and server.proc.poll() is None
        assert httpx.get(f"{server.http_url}/v2/health/ready", timeout=30).status_code == 200
        shutil.rmtree(gone)  # and gone for good; then a new repository appears with version 2
        rf.publish(repository, 2)
        assert rf.wait_until(lambda: traffic.answers[-1][2] == "2", 30), server.log_tail()
        traffic.stop()
        assert traffic.failures() == []
        assert "still serving version 1" in server.stderr()
    finally:
        server.kill()


def test_sigterm_under_load_drains_every_accepted_request(tmp_path) -> None:
    server = start(tmp_path, "--max-batch-size", "2", "--max-queue-size", "256", delay_ms=100)
    url = f"{server.http_url}/v1/models/{rf.MODEL}/classify"
    colours = list(rf.COLOURS)
    results: dict[str, object] = {}

    def http_client(n: int) -> None:
        files = [("f", (f"{i}.png", rf.solid(colours[(n + i) % 3]), "image/png")) for i in range(3)]
        response = httpx.post(url, files=files, timeout=120)
        results[f"http{n}"] = (response.status_code, [r["predictions"][0]["label"] for r in
                                                      response.json().get("results", [])])

    def grpc_client(n: int, stub) -> None:
        images = [rf.solid(colours[(n + i) % 3]) for i in range(3)]
        try:
            request = classify_pb2.ClassifyRequest(model_name=rf.MODEL, images=images)
            reply = stub.Classify(request, timeout=120)
            results[f"grpc{n}"] = ("OK", [r.predictions[0].label for r in reply.results])
        except grpc.RpcError as err:
            results[f"grpc{n}"] = (err.code().name, err.details())

    def stream_client(stub) -> None:
        requests = [classify_pb2.ClassifyRequest(model_name=rf.MODEL, images=[rf.solid(colours[i % 3])],
                                                 id=str(i)) for i in range(6)]
        try:
            replies = list(stub.ClassifyStream(iter(requests), timeout=120))
            answers = [(int(r.id), r.results[0].predictions[0].label) for r in replies]
            results["stream"] = ("OK", sorted(answers))
        except grpc.RpcError as err:
            results["stream"] = (err.code().name, err.details())

    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = classify_pb2_grpc.ClassifyStub(channel)
            threads = [threading.Thread(target=http_client, args=(n,)) for n in range(6)]
            threads += [threading.Thread(target=grpc_client, args=(n, stub)) for n in range(6)]
            threads.append(threading.Thread(target=stream_client, args=(stub,)))
            for thread in threads:
                thread.start()
            inflight = 'ddrnet_inflight_requests{model="slow"'
            done = 'ddrnet_requests_total{code='

            def all_accepted() -> bool:  # 12 requests + 6 stream messages reached the core
                text = metrics(server)
                running = rf.metric(text, inflight)
                return running >= 1 and running + rf.metric(text, done) >= 18

            assert rf.wait_until(all_accepted, 60, 0.02), server.log_tail()
            server.signal(signal.SIGTERM)
            ready = f"{server.http_url}/v2/health/ready"
            assert rf.wait_until(lambda: httpx.get(ready).status_code == 503, 10)
            late = httpx.post(url, content=rf.solid("red"), headers={"content-type": "image/png"}, timeout=30)
            assert late.status_code == 503 and "shutting down" in late.json()["error"]
            with pytest.raises(grpc.RpcError) as info:
                stub.Classify(classify_pb2.ClassifyRequest(model_name=rf.MODEL, images=[rf.solid("red")]),
                              timeout=30)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            for thread in threads:
                thread.join(120)
        assert server.wait(60) == 0, server.log_tail()
        assert len(results) == 13, results
        for n in range(6):
            expected = [colours[(n + i) % 3] for i in range(3)]
            assert results[f"http{n}"] == (200, expected)
            assert results[f"grpc{n}"] == ("OK", expected)
        assert results["stream"] == ("OK", [(i, colours[i % 3]) for i in range(6)])
        assert any("stopped" in line for line in server.lines)
        assert json.dumps(results)  # plain data: nothing was left as an exception object
    finally:
        server.kill()


def test_an_upload_cut_off_mid_body_is_one_log_line_and_counted(tmp_path) -> None:
    """A client that promises 200 kB, sends 1 kB and closes: one log line (no traceback), counted as
    ``code="499"``, and the server goes on answering."""
    import socket
    from urllib.parse import urlsplit

    server = start(tmp_path)
    try:
        url = urlsplit(server.http_url)
        for _ in range(3):
            with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
                head = (f"POST /v1/models/{rf.MODEL}/classify HTTP/1.1\r\nHost: x\r\n"
                        "Content-Type: image/png\r\nContent-Length: 200000\r\n\r\n")
                sock.sendall(head.encode() + b"\x89PNG" + b"\0" * 1000)
        closed = f'ddrnet_requests_total{{code="499",model="{rf.MODEL}",protocol="http"'
        assert rf.wait_until(lambda: rf.metric(metrics(server), closed) == 3, 30, 0.1), metrics(server)
        ok = httpx.post(f"{server.http_url}/v1/models/{rf.MODEL}/classify", content=rf.solid("red"),
                        headers={"content-type": "image/png"}, timeout=30)
        assert ok.status_code == 200
    finally:
        server.kill()
    log = server.stderr()
    assert "Traceback" not in log, log[-3000:]
    assert log.count("the client went away after 1004 bytes") == 3, log[-3000:]
