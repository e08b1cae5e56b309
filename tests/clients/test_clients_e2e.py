"""Each client (HTTP and gRPC, blocking and asyncio) against a real ``ddrnet serve`` process serving a
small ONNX classifier: answers equal the model's own output on the same photos, and each server error
class arrives as its exception (unknown model/version, bad image, too large, deadline, queue full,
missing token). A second server with a one-image queue, a bearer token, a small body limit and TLS
serves the refusal, auth and TLS tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from clients import errors
from clients.grpc_client import AsyncGrpcClient, GrpcClient
from clients.http_client import AsyncHttpClient, HttpClient
from clients.retry import NO_RETRY
from tests.support.client_testutil import (
    LABELS,
    ServerProcess,
    build_onnx_repository,
    reference_logits,
    sample_images,
)
from tests.support.tls import self_signed

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    build_onnx_repository(root)
    return root


@pytest.fixture(scope="module")
def server(repository):
    with ServerProcess(repository, "--max-batch-size", "4") as proc:
        yield proc


@pytest.fixture(scope="module")
def strict(repository, tmp_path_factory):
    """A server that refuses easily: queue of one image, a token, 100 kB bodies, TLS when openssl exists."""
    pem = self_signed(tmp_path_factory.mktemp("tls"))
    tls = ["--tls-cert", str(pem[0]), "--tls-key", str(pem[1])] if pem else []
    args = ["--max-queue-size", "1", "--max-batch-size", "1", "--auth-token", TOKEN,
            "--max-request-bytes", "100000", "--preprocess-workers", "1", *tls]
    with ServerProcess(repository, *args) as proc:
        proc.cert = pem[0] if pem else None
        yield proc


@pytest.fixture(scope="module")
def photos(repository) -> tuple[list[Path], np.ndarray]:
    paths = sample_images()
    return paths, reference_logits(repository / "tiny" / "1", paths)


@pytest.fixture(scope="module")
def small(repository, tmp_path_factory) -> tuple[list[Path], np.ndarray]:
    """The sample photos as small JPEGs (under the strict server's 100 kB body limit)."""
    from PIL import Image

    out = []
    for path in sample_images():
        target = tmp_path_factory.mktemp("small") / f"{path.stem}.jpg"
        with Image.open(path) as img:
            img.convert("RGB").resize((160, 120)).save(target, quality=90)
        out.append(target)
    return out, reference_logits(repository / "tiny" / "1", out)


def _client(kind: str, server: ServerProcess, **kw):
    if kind == "http":
        return HttpClient(server.http, model="tiny", **kw)
    return GrpcClient(server.grpc, model="tiny", **kw)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_classify_one_image_equals_the_model(kind, server, photos):
    paths, logits = photos
    expected = np.argsort(-logits[0])[:3]
    with _client(kind, server) as client:
        result = client.classify(paths[0], top_k=3)
    assert (result.model_name, result.model_version) == ("tiny", "1")
    assert [p.index for p in result.predictions] == expected.tolist()
    assert [p.label for p in result.predictions] == [LABELS[i] for i in expected]
    scores = [p.score for p in result.predictions]
    np.testing.assert_allclose(scores, _softmax(logits[0])[expected], rtol=1e-5)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_classify_many_keeps_order_across_requests(kind, server, photos):
    paths, logits = photos
    with _client(kind, server, version=1) as client:
        many = client.classify_many([p.read_bytes() for p in paths], top_k=1, batch_size=2)
        batch = client.classify_batch(paths, top_k=2)
    assert len(many) == len(paths) == len(batch)
    assert [r.top.index for r in many] == logits.argmax(axis=1).tolist()
    assert [r.indices for r in batch] == np.argsort(-logits, axis=1)[:, :2].tolist()
    assert all(len(r.predictions) == 1 for r in many)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_infer_images_returns_the_logits(kind, server, photos):
    paths, logits = photos
    with _client(kind, server) as client:
        out = client.infer_images(paths)
    assert out.model_name == "tiny" and out.model_version == "1"
    np.testing.assert_allclose(out.values, logits, rtol=1e-5, atol=1e-5)


def test_async_clients_side_by_side(server, photos):
    paths, logits = photos

    async def main():
        async with AsyncHttpClient(server.http, model="tiny") as http, \
                AsyncGrpcClient(server.grpc, model="tiny") as grpc_client:
            return await asyncio.gather(
                http.classify_many(paths, batch_size=1, concurrency=3),
                grpc_client.classify_many(paths, batch_size=2, concurrency=2),
                grpc_client.infer_images(paths[:2]),
                http.classify(paths[3], top_k=1),
            )

    over_http, over_grpc, some_logits, one = asyncio.run(main())
    expected = logits.argmax(axis=1).tolist()
    assert [r.top.index for r in over_http] == expected == [r.top.index for r in over_grpc]
    np.testing.assert_allclose(some_logits.values, logits[:2], rtol=1e-5, atol=1e-5)
    assert one.top.index == expected[3]


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_unknown_model_or_version_is_not_found(kind, server, photos):
    with _client(kind, server, retry=NO_RETRY) as client:
        with pytest.raises(errors.NotFoundError, match="nope"):
            client.classify(photos[0][0], model="nope")
        with pytest.raises(errors.NotFoundError, match="7"):
            client.classify(photos[0][0], version=7)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_undecodable_image_is_invalid_input(kind, server):
    with _client(kind, server) as client, pytest.raises(errors.InvalidInputError, match="decode") as info:
        client.classify(b"this is not an image at all")
    assert (info.value.status == 400) if kind == "http" else (info.value.grpc_code == "INVALID_ARGUMENT")


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_bad_top_k_is_invalid_input(kind, server, photos):
    with _client(kind, server) as client, pytest.raises(errors.InvalidInputError, match="top_k"):
        client.classify(photos[0][0], top_k=0)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_a_tiny_deadline_is_deadline_exceeded(kind, server, photos):
    with _client(kind, server, retry=NO_RETRY) as client, pytest.raises(errors.DeadlineExceededError):
        client.classify(photos[0][0], timeout=0.001)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_missing_or_wrong_token_is_unauthenticated(kind, strict, small):
    tls = _tls_kwargs(kind, strict)
    for token in (None, "wrong"):
        with (
            _client(kind, strict, retry=NO_RETRY, token=token, **tls) as client,
            pytest.raises(errors.UnauthenticatedError, match="bearer token"),
        ):
            client.classify(small[0][0])
    with _client(kind, strict, token=TOKEN, **tls) as client:
        assert client.classify(small[0][0]).top.index == small[1][0].argmax()


def _tls_kwargs(kind: str, strict: ServerProcess) -> dict:
    if strict.cert is None:
        return {}
    return {"ca_cert": strict.cert} if kind == "http" else {"root_certificates": strict.cert}


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_body_over_the_limit_is_refused(kind, strict, photos):
    big = next(p for p in photos[0] if p.stat().st_size > 100_000)
    expected = errors.PayloadTooLargeError if kind == "http" else errors.InvalidInputError
    with (
        _client(kind, strict, token=TOKEN, retry=NO_RETRY, **_tls_kwargs(kind, strict)) as client,
        pytest.raises(expected),
    ):
        client.classify(big)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_a_burst_past_the_queue_is_queue_full(kind, strict, small):
    """With a one-image queue, a burst of concurrent requests finds it full: QueueFullError with the
    server's retry hint; the requests that got in are answered."""
    small = small[0]
    cls = AsyncHttpClient if kind == "http" else AsyncGrpcClient
    address = strict.http if kind == "http" else strict.grpc

    async def main():
        tls = _tls_kwargs(kind, strict)
        async with cls(address, model="tiny", token=TOKEN, retry=NO_RETRY, **tls) as client:
            calls = [client.classify(small[i % len(small)]) for i in range(24)]
            return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(main())
    full = [o for o in outcomes if isinstance(o, errors.QueueFullError)]
    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    others = [o for o in outcomes if isinstance(o, BaseException) and o not in full]
    assert others == []
    assert full and answered
    assert all(e.retry_after is not None and e.retry_after > 0 for e in full)
    if kind == "http":
        assert all(e.status == 503 and e.retry_after >= 1 for e in full)
    else:
        assert all(e.grpc_code == "UNAVAILABLE" for e in full)


def test_queue_full_is_retried_until_answered(strict, small):
    """The same burst with retries on: every request is answered in the end."""
    small = small[0]
    kind = "grpc"
    retries: list = []
    from clients.retry import RetryPolicy

    policy = RetryPolicy(max_attempts=20, initial_backoff=0.02, max_backoff=0.2,
                         on_retry=lambda attempt, err, delay: retries.append(err))

    async def main():
        async with AsyncGrpcClient(strict.grpc, model="tiny", token=TOKEN, retry=policy,
                                   **_tls_kwargs(kind, strict)) as client:
            return await asyncio.gather(*(client.classify(small[i % len(small)]) for i in range(6)))

    results = asyncio.run(main())
    assert len(results) == 6 and all(r.model_name == "tiny" for r in results)
    assert retries and all(isinstance(e, errors.QueueFullError) for e in retries)


def test_classify_stream_answers_every_image_and_isolates_a_bad_one(server, photos):
    paths, logits = photos
    images = [*paths[:2], b"not an image", *paths[2:]]
    expected = logits.argmax(axis=1).tolist()
    expected = [*expected[:2], None, *expected[2:]]

    def check(items):
        by_index = dict(items)
        assert sorted(by_index) == list(range(len(images)))
        for index, want in enumerate(expected):
            got = by_index[index]
            if want is None:
                assert isinstance(got, errors.InvalidInputError) and "decode" in got.message
            else:
                assert got.top.index == want and got.model_version == "1"

    with GrpcClient(server.grpc, model="tiny") as client:
        check(list(client.classify_stream(images, top_k=2)))

    async def main():
        async def produce():
            for image in images:
                yield image

        async with AsyncGrpcClient(server.grpc, model="tiny") as client:
            return [item async for item in client.classify_stream(produce())]

    check(asyncio.run(main()))


def test_server_health_and_metadata(server):
    with HttpClient(server.http, model="tiny") as http, GrpcClient(server.grpc, model="tiny") as grpc_client:
        assert http.ready() and grpc_client.ready()
        assert http.models() == [{"name": "tiny", "version": "1", "ready": True, "runtime": "onnxruntime",
                                  "device": "cpu", "precision": "fp32", "settings": {}, "versions": ["1"],
                                  "version_labels": {}, "traffic_split": {}}]
        for meta in (http.model_metadata(), grpc_client.model_metadata()):
            assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime"
            assert meta["outputs"][0]["shape"] == [-1, len(LABELS)]
        assert "ddrnet_requests_total" in http.metrics_text()
