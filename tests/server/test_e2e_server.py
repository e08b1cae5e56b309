"""End to end: the real ``ddrnet serve`` process on loopback ports serving a real exported
DDRNet-23-slim (freshly initialised, 64x64, ONNX Runtime workers), driven the way users drive it:
curl-style HTTP (three body forms), gRPC Classify (unary, stream), tritonclient HTTP and gRPC (OIP v2),
health and reflection, /metrics; and its lifecycle: hot reload under load, SIGTERM drain, a SIGKILLed
worker, a missing device, the MindSpore Lite runtime in a Python 3.7 worker.

Every answer is checked against the same ONNX model run here in-process on the same eval transform,
image by image, so a result that went to the wrong request would not match.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from model import manifest as mf
from model.preprocess import EvalTransform
from protos import classify_pb2, classify_pb2_grpc
from server.postprocess import softmax
from tests.support import server_fixtures as sf
from tests.support.triton_venv import triton_grpc_python

pytestmark = pytest.mark.slow

LITE_PYTHON = sf.REPO_ROOT / ".venv-lite37" / "bin" / "python"
ATOL = 1e-4


# -- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def version_dir(slim_repository) -> Path:
    return slim_repository / sf.SLIM_NAME / "1"


class Reference:
    """The photos, their model input, and the ONNX model's logits and probabilities, computed here."""

    def __init__(self, version_dir: Path) -> None:
        import onnxruntime as ort

        manifest = mf.load_manifest(version_dir)
        self.labels = manifest.labels
        self.images = sf.photos()
        self.transform = EvalTransform(manifest.preprocess)
        self.tensor = self.transform.batch(self.images)
        session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        self.logits = session.run(None, {manifest.input.name: self.tensor})[0]
        self.probs = softmax(self.logits)
        # The photos must be told apart by their scores, or routing could not be checked.
        gaps = np.abs(self.probs[:, None] - self.probs[None]).max(-1) + np.eye(len(self.images))
        assert gaps.min() > 100 * ATOL

    def check(self, index: int, predictions: list[tuple[int, float]]) -> None:
        """``predictions`` (class index, score), best first, must be this photo's."""
        order = np.argsort(-self.probs[index], kind="stable")[: len(predictions)]
        assert [i for i, _ in predictions] == order.tolist()
        np.testing.assert_allclose([s for _, s in predictions], self.probs[index][order], atol=ATOL)


@pytest.fixture(scope="module")
def reference(version_dir) -> Reference:
    return Reference(version_dir)


@pytest.fixture(scope="module")
def server(slim_repository, tmp_path_factory):
    """One server shared by the tests that do not change its state."""
    repository = sf.copy_repository(slim_repository, tmp_path_factory.mktemp("shared") / "repo")
    proc = sf.ServerProcess(repository, tmp_path_factory.mktemp("logs") / "shared.log",
                            "--max-batch-size", "4", "--max-queue-delay-ms", "2")
    proc.start()
    yield proc
    proc.kill()


def http_predictions(result: dict) -> list[tuple[int, float]]:
    return [(p["index"], p["score"]) for p in result["predictions"]]


def grpc_predictions(result) -> list[tuple[int, float]]:
    return [(p.index, p.score) for p in result.predictions]


# -- classify over HTTP and gRPC ----------------------------------------------------------------------------


def test_http_classify_all_three_body_forms(server, reference) -> None:
    url = f"{server.http_url}/v1/models/slim/classify"
    with httpx.Client(timeout=60) as client:
        raw = client.post(url, content=reference.images[0], headers={"content-type": "image/jpeg"},
                          params={"top_k": 3})
        assert raw.status_code == 200, raw.text
        body = raw.json()
        assert (body["model_name"], body["model_version"]) == ("slim", "1")
        reference.check(0, http_predictions(body["results"][0]))
        top = body["results"][0]["predictions"][0]
        assert top["label"] == reference.labels[reference.probs[0].argmax()]

        files = [("file", (f"photo{i}", data, "application/octet-stream"))
                 for i, data in enumerate(reference.images)]
        multi = client.post(url, files=files, data={"top_k": "5"})
        assert multi.status_code == 200, multi.text
        for i, result in enumerate(multi.json()["results"]):
            reference.check(i, http_predictions(result))

        payload = {"images": [base64.b64encode(d).decode() for d in reference.images[2:5]], "top_k": 2}
        as_json = client.post(f"{server.http_url}/v1/models/slim/versions/1/classify", json=payload)
        assert as_json.status_code == 200, as_json.text
        for i, result in enumerate(as_json.json()["results"], start=2):
            reference.check(i, http_predictions(result))


def test_grpc_classify_unary_and_stream(server, reference) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = classify_pb2_grpc.ClassifyStub(channel)
        everything = classify_pb2.ClassifyRequest(model_name="slim", images=reference.images, top_k=4)
        reply = stub.Classify(everything, timeout=60)
        assert reply.model_version == "1" and len(reply.results) == len(reference.images)
        for i, result in enumerate(reply.results):
            reference.check(i, grpc_predictions(result))

        order = [i % len(reference.images) for i in range(3 * len(reference.images))]
        requests = [classify_pb2.ClassifyRequest(model_name="slim", images=[reference.images[i]],
                                                 id=f"{n}:{i}", top_k=3) for n, i in enumerate(order)]
        requests.append(classify_pb2.ClassifyRequest(model_name="slim", images=[b"GIF89a broken"], id="bad"))
        replies = list(stub.ClassifyStream(iter(requests), timeout=120))
        assert len(replies) == len(requests)
        for reply in replies:
            if reply.id == "bad":
                assert reply.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
                continue
            reference.check(int(reply.id.split(":")[1]), grpc_predictions(reply.results[0]))


def test_results_go_to_the_right_request_under_concurrency(server, reference) -> None:
    """32 concurrent single-image requests over both protocols, photos in shuffled order."""
    order = np.random.default_rng(7).permutation([i % len(reference.images) for i in range(64)]).tolist()
    url = f"{server.http_url}/v1/models/slim/classify"

    def by_http(index: int) -> list[tuple[int, float]]:
        response = httpx.post(url, content=reference.images[index], params={"top_k": 3},
                              headers={"content-type": "application/octet-stream"}, timeout=60)
        assert response.status_code == 200, response.text
        return http_predictions(response.json()["results"][0])

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = classify_pb2_grpc.ClassifyStub(channel)

        def by_grpc(index: int) -> list[tuple[int, float]]:
            image = reference.images[index]
            message = classify_pb2.ClassifyRequest(model_name="slim", images=[image], top_k=3)
            reply = stub.Classify(message, timeout=60)
            return grpc_predictions(reply.results[0])

        with ThreadPoolExecutor(32) as pool:
            futures = [(i, pool.submit(by_http if n % 2 else by_grpc, i)) for n, i in enumerate(order)]
            for index, future in futures:
                reference.check(index, future.result())
    metrics = httpx.get(f"{server.http_url}/metrics").text
    batches = _metric(metrics, 'ddrnet_batch_size_count{model="slim",version="1"}')
    images = _metric(metrics, 'ddrnet_batch_size_sum{model="slim",version="1"}')
    assert images > batches  # requests were really batched together


# -- Open Inference Protocol v2 clients ---------------------------------------------------------------------


def test_tritonclient_http_bytes_and_fp32(server, reference) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server.http_port}", network_timeout=60)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("slim")
    meta = client.get_model_metadata("slim")
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {"input": "FP32", "images": "BYTES"}

    images = triton.InferInput("images", [len(reference.images)], "BYTES")
    images.set_data_from_numpy(np.array(reference.images, dtype=object))  # binary by default
    result = client.infer("slim", [images])
    np.testing.assert_allclose(result.as_numpy("logits"), reference.logits, atol=ATOL)
    assert result.get_response()["model_version"] == "1"

    tensor = triton.InferInput("input", list(reference.tensor.shape), "FP32")
    tensor.set_data_from_numpy(reference.tensor, binary_data=False)  # JSON in, JSON out
    wanted = triton.InferRequestedOutput("logits", binary_data=False)
    result = client.infer("slim", [tensor], outputs=[wanted], model_version="1")
    np.testing.assert_allclose(result.as_numpy("logits"), reference.logits, atol=ATOL)

    wrong = triton.InferInput("input", [1, 3, 32, 32], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(triton.InferenceServerException, match="shape"):
        client.infer("slim", [wrong])


TRITON_GRPC_CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as triton

target, images_path, tensor_path = sys.argv[1:4]
client = triton.InferenceServerClient(target)
out = {"live": client.is_server_live(), "ready": client.is_model_ready("slim")}
blobs = np.load(images_path, allow_pickle=True)
images = triton.InferInput("images", [len(blobs)], "BYTES")
images.set_data_from_numpy(blobs)
result = client.infer("slim", [images], client_timeout=60)
out["bytes"] = result.as_numpy("logits").tolist()
out["version"] = result.get_response().model_version
tensor = np.load(tensor_path)
inp = triton.InferInput("input", list(tensor.shape), "FP32")
inp.set_data_from_numpy(tensor)
result = client.infer("slim", [inp], outputs=[triton.InferRequestedOutput("logits")])
out["fp32"] = result.as_numpy("logits").tolist()
try:
    client.infer("nope", [inp])
except triton.InferenceServerException as exc:
    out["error"] = exc.status()
print(json.dumps(out))
"""


def test_tritonclient_grpc_from_its_own_venv(server, reference, tmp_path) -> None:
    python = triton_grpc_python()
    images = tmp_path / "images.npy"
    np.save(images, np.array(reference.images, dtype=object), allow_pickle=True)
    tensor = tmp_path / "tensor.npy"
    np.save(tensor, reference.tensor)
    script = tmp_path / "client.py"
    script.write_text(TRITON_GRPC_CLIENT)
    proc = subprocess.run([python, str(script), server.grpc_target, str(images), str(tensor)],
                          capture_output=True, text=True, timeout=180,
                          env={"PATH": os.environ.get("PATH", "")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["live"] and out["ready"] and out["version"] == "1"
    np.testing.assert_allclose(np.array(out["bytes"]), reference.logits, atol=ATOL)
    np.testing.assert_allclose(np.array(out["fp32"]), reference.logits, atol=ATOL)
    assert out["error"] == "StatusCode.NOT_FOUND"


# -- health, reflection, metrics, bad input -----------------------------------------------------------------


def test_health_and_reflection(server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    assert httpx.get(f"{server.http_url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.http_url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{server.http_url}/v2/models/slim/ready").json()["ready"] is True
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "slim", "ddrnet.v1.Classify", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING, service
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"ddrnet.v1.Classify", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
        descriptor = database.FindFileContainingSymbol("ddrnet.v1.Classify")
        assert descriptor.name.endswith("classify.proto")


def model_info(version: str) -> str:
    return f'ddrnet_model_info{{device="cpu",model="slim",runtime="onnxruntime",version="{version}"}}'


def _metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_metrics_move_as_requests_are_served(server, reference) -> None:
    def scrape() -> str:
        return httpx.get(f"{server.http_url}/metrics").text

    before = scrape()
    ok_http = 'ddrnet_requests_total{code="200",model="slim",protocol="http",version="1"}'
    ok_grpc = 'ddrnet_requests_total{code="OK",model="slim",protocol="grpc",version="1"}'
    for i in range(3):
        httpx.post(f"{server.http_url}/v1/models/slim/classify", content=reference.images[i],
                   headers={"content-type": "image/jpeg"}, timeout=60).raise_for_status()
    with grpc.insecure_channel(server.grpc_target) as channel:
        classify_pb2_grpc.ClassifyStub(channel).Classify(
            classify_pb2.ClassifyRequest(model_name="slim", images=reference.images[:2]), timeout=60)
    httpx.post(f"{server.http_url}/v1/models/slim/classify", content=b"not an image",
               headers={"content-type": "image/jpeg"}, timeout=60)
    after = scrape()
    assert _metric(after, ok_http) - _metric(before, ok_http) == 3
    assert _metric(after, ok_grpc) - _metric(before, ok_grpc) == 1
    bad = 'ddrnet_requests_total{code="400",model="slim",protocol="http"'
    assert _metric(after, bad) - _metric(before, bad) == 1
    for name in ("ddrnet_request_duration_seconds_count", "ddrnet_queue_duration_seconds_count",
                 "ddrnet_preprocess_duration_seconds_count", "ddrnet_inference_duration_seconds_count",
                 "ddrnet_batch_size_sum"):
        assert _metric(after, name) > _metric(before, name), name
    assert _metric(after, model_info("1")) == 1
    assert _metric(after, 'ddrnet_model_load_seconds_count{model="slim",version="1"}') == 1
    assert _metric(after, "process_resident_memory_bytes") > 0
    assert "ddrnet_queue_depth" in after and "ddrnet_inflight_requests" in after


def test_bad_input_gets_4xx_and_the_server_keeps_serving(server, reference) -> None:
    url = f"{server.http_url}/v1/models/slim/classify"
    cases = [
        ({"content-type": "image/png"}, b"", 400),
        ({"content-type": "image/jpeg"}, reference.images[0][:500], 400),
        ({"content-type": "text/plain"}, b"hello", 415),
        ({"content-type": "application/json"}, b"{not json", 400),
        ({"content-type": "application/json"}, b'{"images": ["!!"]}', 400),
    ]
    for headers, body, status in cases:
        response = httpx.post(url, content=body, headers=headers, timeout=60)
        assert response.status_code == status, (headers, response.text)
        assert set(response.json()) == {"error"}
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = classify_pb2_grpc.ClassifyStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            broken = classify_pb2.ClassifyRequest(model_name="slim", images=[b"\xff\xd8\xff"])
            stub.Classify(broken, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reply = stub.Classify(classify_pb2.ClassifyRequest(model_name="slim", images=[reference.images[1]],
                                                           top_k=2), timeout=30)
        reference.check(1, grpc_predictions(reply.results[0]))


# -- lifecycle ------------------------------------------------------------------------------------------


def test_hot_reload_under_load_with_zero_failed_requests(
    slim_repository, version_dir, reference, tmp_path
) -> None:
    repository = sf.copy_repository(slim_repository, tmp_path / "repo")
    proc = sf.ServerProcess(repository, tmp_path / "server.log", "--poll-interval-s", "0.3",
                            "--max-batch-size", "4", "--instances", "1")
    proc.start()
    try:
        url = f"{proc.http_url}/v1/models/slim/classify"
        stop = threading.Event()
        failures: list[str] = []
        seen: dict[int, list[str]] = {}

        def client(worker: int) -> None:
            versions = seen.setdefault(worker, [])
            with httpx.Client(timeout=60) as http:
                for n in range(2000):  # bounded; stopped by the test well before
                    if stop.is_set():
                        return
                    index = (worker + n) % len(reference.images)
                    response = http.post(url, content=reference.images[index], params={"top_k": 2},
                                         headers={"content-type": "image/jpeg"})
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text}")
                        continue
                    body = response.json()
                    versions.append(body["model_version"])
                    try:
                        reference.check(index, http_predictions(body["results"][0]))
                    except AssertionError as exc:
                        failures.append(f"wrong result: {exc}")

        threads = [threading.Thread(target=client, args=(w,)) for w in range(3)]
        for thread in threads:
            thread.start()
        assert sf.wait_until(lambda: sum(map(len, seen.values())) >= 15, 60)
        assert sf.copy_version(version_dir, repository, sf.SLIM_NAME) == 2
        switched = sf.wait_until(lambda: all(v and v[-1] == "2" for v in seen.values()), 120)
        count = sum(map(len, seen.values()))
        sf.wait_until(lambda: sum(map(len, seen.values())) >= count + 15, 60)
        stop.set()
        for thread in threads:
            thread.join(60)
        assert failures == []
        assert switched, proc.log_tail()
        for versions in seen.values():
            assert versions[0] == "1" and versions[-1] == "2"
            assert versions == sorted(versions), "a client got version 1 again after version 2"
        assert httpx.get(f"{proc.http_url}/v2/models/slim").json()["versions"] == ["2"]
        metrics = httpx.get(f"{proc.http_url}/metrics").text
        assert _metric(metrics, model_info("2")) == 1
        assert sf.wait_until(lambda: len(sf.worker_pids(proc.pid)) == 1, 30)  # the old worker is gone
    finally:
        proc.kill()


def test_sigterm_drains_every_accepted_request_then_exits_0(slim_repository, reference, tmp_path) -> None:
    repository = sf.copy_repository(slim_repository, tmp_path / "repo")
    proc = sf.ServerProcess(repository, tmp_path / "server.log", "--max-batch-size", "1",
                            "--threads-per-instance", "1", "--max-queue-size", "1024")
    proc.start()
    try:
        url = f"{proc.http_url}/v1/models/slim/classify"
        photos = reference.images
        files = [("file", (f"p{i}", photos[i % len(photos)], "image/jpeg")) for i in range(16)]
        results: list[object] = []

        def client() -> None:
            try:
                response = httpx.post(url, files=files, timeout=120)
                results.append(response.status_code if response.status_code != 200 else response.json())
            except httpx.HTTPError as exc:
                results.append(repr(exc))

        threads = [threading.Thread(target=client) for _ in range(12)]
        for thread in threads:
            thread.start()
        inflight = 'ddrnet_inflight_requests{model="slim",protocol="http"}'
        done = 'ddrnet_requests_total{code="200",model="slim",protocol="http"'

        def all_accepted_some_running() -> bool:  # every request reached the core, not all answered
            text = httpx.get(f"{proc.http_url}/metrics").text
            return _metric(text, inflight) >= 1 and _metric(text, inflight) + _metric(text, done) == 12

        assert sf.wait_until(all_accepted_some_running, 60, 0.02)
        proc.signal(signal.SIGTERM)
        proc.signal(signal.SIGINT)  # the same stop twice (Ctrl-C to a group whose parent forwards it)
        time.sleep(0.1)
        assert httpx.get(f"{proc.http_url}/v2/health/ready").status_code == 503
        late = httpx.post(url, content=photos[0], headers={"content-type": "image/jpeg"}, timeout=30)
        assert late.status_code == 503 and "shutting down" in late.json()["error"]
        for thread in threads:
            thread.join(120)
        assert proc.wait(60) == 0, proc.log_tail()
        assert len(results) == 12
        for result in results:
            assert isinstance(result, dict), result
            for i, image_result in enumerate(result["results"]):
                reference.check(i % len(reference.images), http_predictions(image_result))
        assert any("stopped" in line for line in proc.lines)
    finally:
        proc.kill()


def test_sigkilled_worker_fails_at_most_its_batch(slim_repository, reference, tmp_path) -> None:
    repository = sf.copy_repository(slim_repository, tmp_path / "repo")
    # One instance: the test finds "the" worker to kill and bounds the failures by its one batch.
    proc = sf.ServerProcess(repository, tmp_path / "server.log", "--max-batch-size", "4", "--instances", "1")
    proc.start()
    try:
        url = f"{proc.http_url}/v1/models/slim/classify"
        statuses: list[int] = []
        stop = threading.Event()

        def client(worker: int) -> None:
            with httpx.Client(timeout=60) as http:
                for n in range(1000):
                    if stop.is_set():
                        return
                    index = (worker + n) % len(reference.images)
                    response = http.post(url, content=reference.images[index],
                                         headers={"content-type": "image/jpeg"})
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        reference.check(index, http_predictions(response.json()["results"][0])[:5])

        threads = [threading.Thread(target=client, args=(w,)) for w in range(3)]
        for thread in threads:
            thread.start()
        assert sf.wait_until(lambda: len(statuses) >= 10, 60)
        [worker] = sf.worker_pids(proc.pid)
        os.kill(worker, signal.SIGKILL)
        assert sf.wait_until(lambda: sf.worker_pids(proc.pid) not in ([], [worker]), 60)
        count = len(statuses)
        assert sf.wait_until(lambda: len(statuses) >= count + 15, 60)
        stop.set()
        for thread in threads:
            thread.join(60)
        failed = [s for s in statuses if s != 200]
        assert set(failed) <= {503} and len(failed) <= 3, failed  # at most the batch in flight
        assert statuses[-1] == 200
        restarts = 'ddrnet_worker_restarts_total{model="slim",reason="worker_died"}'
        assert sf.wait_until(lambda: _metric(httpx.get(f"{proc.http_url}/metrics").text, restarts) == 1, 10)
        assert httpx.get(f"{proc.http_url}/v2/health/ready").status_code == 200
    finally:
        proc.kill()


def test_missing_device_is_a_clear_startup_error(slim_repository, tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "serve", "--model-repository", str(slim_repository),
         "--http-port", "0", "--grpc-port", "0", "--runtime", "onnxruntime", "--device", "gpu",
         "--log-level", "error"],
        capture_output=True, text=True, timeout=120, cwd=str(sf.REPO_ROOT),
        env=dict(os.environ, PYTHONPATH=str(sf.REPO_ROOT)))
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ddrnet serve: error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "model 'slim' could not be loaded" in errors[0] and "CUDAExecutionProvider" in errors[0]
    assert "Traceback" not in proc.stderr


def test_lite_runtime_in_a_python37_worker(slim_repository, reference, tmp_path) -> None:
    if not LITE_PYTHON.exists():
        pytest.skip(f"no Python 3.7 MindSpore Lite venv at {LITE_PYTHON} (run scripts/setup_lite_py37.sh)")
    probe = subprocess.run([str(LITE_PYTHON), "-c", "import mindspore_lite, numpy"], capture_output=True,
                           timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"{LITE_PYTHON} cannot import mindspore_lite: {probe.stderr[-300:]!r}")
    repository = sf.copy_repository(slim_repository, tmp_path / "repo")
    proc = sf.ServerProcess(repository, tmp_path / "server.log", "--runtime", "lite", "--runtime-python",
                            str(LITE_PYTHON), "--threads-per-instance", "1",
                            env={"HOME": str(tmp_path)})  # Lite's converted-model cache goes under $HOME
    proc.start(timeout_s=300)
    try:
        assert any("slim v1 (lite)" in line for line in proc.lines)
        assert httpx.get(f"{proc.http_url}/v2/models/slim").json()["platform"] == "lite"
        files = [("file", (f"p{i}", d, "image/jpeg")) for i, d in enumerate(reference.images)]
        response = httpx.post(f"{proc.http_url}/v1/models/slim/classify", timeout=120, files=files)
        assert response.status_code == 200, response.text
        for i, result in enumerate(response.json()["results"]):
            top = result["predictions"][0]
            assert top["index"] == int(reference.probs[i].argmax())
            assert top["score"] == pytest.approx(float(reference.probs[i].max()), abs=1e-3)
    finally:
        proc.kill()
