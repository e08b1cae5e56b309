"""DataPlane: classify and OIP infer through the real batcher and worker processes (fake model),
every error a ServingError of the documented kind, deadlines, shutdown, request metrics."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time

import numpy as np
import pytest
from PIL import Image

from server.core import InferInput
from server.errors import ErrorKind, ServingError
from server.model_manager import IMAGES_INPUT
from server.postprocess import check_top_k, softmax, top_k
from tests.support import server_fixtures as sf


def run(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def repository(tmp_path):
    sf.make_fake_version(tmp_path, "fake", 1)
    return tmp_path


async def _expect(kind: ErrorKind, coro, *, contains: str = "") -> ServingError:
    with pytest.raises(ServingError) as info:
        await coro
    assert info.value.kind is kind, info.value
    assert contains in info.value.message
    return info.value


def _kill_workers(core) -> None:
    for instance in core.manager.get("fake").current.instances:
        os.kill(instance.worker.pid, signal.SIGKILL)


# -- postprocess ----------------------------------------------------------------------------------------


def test_softmax_and_top_k_order_and_labels() -> None:
    logits = np.array([[1.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 10.0]], dtype=np.float32)
    probs = softmax(logits)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    preds = top_k(logits, 3, ["a", "b", "c", "d"])
    assert [p.index for p in preds[0]] == [1, 3, 2]  # ties: lower index first
    assert [p.label for p in preds[1]][:1] == ["d"]
    assert preds[1][0].score == pytest.approx(float(probs[1, 3]))
    assert len(top_k(logits, 99, ["a", "b", "c", "d"])[0]) == 4


@pytest.mark.parametrize("value", [0, -1, 1001, 1.5, "3", True])
def test_top_k_rule_refuses(value) -> None:
    with pytest.raises(ServingError) as info:
        check_top_k(value, 10)
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT and "top_k" in info.value.message


def test_top_k_rule_defaults_and_caps() -> None:
    assert check_top_k(None, 10) == 5
    assert check_top_k(None, 3) == 3
    assert check_top_k(1000, 10) == 10


# -- classify -------------------------------------------------------------------------------------------


def test_classify_returns_each_image_its_own_label(repository) -> None:
    async def main():
        async with sf.started_core(sf.settings_for(repository)) as core:
            assert core.ready()
            names = ["green", "red", "blue", "blue", "red"]
            result = await core.classify([sf.colour_image(n) for n in names], model="fake", top_k=2,
                                         protocol="http")
            assert (result.model, result.version) == ("fake", "1")
            assert [preds[0].label for preds in result.results] == names
            assert all(len(preds) == 2 for preds in result.results)
            assert all(preds[0].score > preds[1].score for preds in result.results)
            assert [p.index for p in result.results[1]][:1] == [0]
            # JPEG decodes to nearly the same colour, and versions may be named explicitly.
            result = await core.classify([sf.colour_image("blue", "JPEG")], model="fake", version="1",
                                         protocol="grpc")
            assert result.results[0][0].label == "blue"
            metrics = core.metrics
            assert sf.sample(metrics, "ddrnet_requests_total", model="fake", version="1", protocol="http",
                             code="200") == 1
            assert sf.sample(metrics, "ddrnet_requests_total", model="fake", version="1", protocol="grpc",
                             code="OK") == 1
            assert sf.sample(metrics, "ddrnet_preprocess_duration_seconds_count", model="fake",
                             version="1") == 2

    run(main())


def test_concurrent_requests_get_their_own_results(repository) -> None:
    async def main():
        settings = sf.settings_for(repository, max_batch_size=4, max_queue_delay_ms=5)
        async with sf.started_core(settings) as core:
            names = [list(sf.COLOURS)[i % 3] for i in range(30)]
            rng = np.random.default_rng(0)
            rng.shuffle(names)
            results = await asyncio.gather(
                *(core.classify([sf.colour_image(n)], model="fake", protocol="http") for n in names)
            )
            assert [r.results[0][0].label for r in results] == names
            assert sf.sample(core.metrics, "ddrnet_batch_size_sum", model="fake", version="1") == 30

    run(main())


def test_classify_errors_have_documented_kinds(repository) -> None:
    async def main():
        settings = sf.settings_for(repository, max_images_per_request=3)
        async with sf.started_core(settings) as core:
            red = sf.colour_image("red")

            def call(images, **kw):
                kw.setdefault("model", "fake")
                return core.classify(images, protocol="http", **kw)

            await _expect(ErrorKind.NOT_FOUND, call([red], model="nope"), contains="nope")
            await _expect(ErrorKind.NOT_FOUND, call([red], version="2"), contains="version")
            await _expect(ErrorKind.INVALID_ARGUMENT, call([]), contains="no images")
            await _expect(ErrorKind.PAYLOAD_TOO_LARGE, call([red] * 4), contains="at most 3")
            await _expect(ErrorKind.INVALID_ARGUMENT, call([red], top_k=0), contains="top_k")
            await _expect(ErrorKind.INVALID_ARGUMENT, call([red, b"not an image"]), contains="image 1:")
            await _expect(ErrorKind.INVALID_ARGUMENT, call([b""]), contains="empty")
            bomb = sf.solid_image((1, 2, 3), size=64)
            small = sf.settings_for(repository, max_image_pixels=100)
            async with sf.started_core(small) as tight:
                await _expect(ErrorKind.PAYLOAD_TOO_LARGE,
                              tight.classify([bomb], model="fake", protocol="http"), contains="pixels")
            assert (await call([red])).results[0][0].label == "red"  # still serving
            assert sf.sample(core.metrics, "ddrnet_requests_total", model="_unknown", version="",
                             protocol="http", code="404") == 1

    run(main())


def test_queue_full_is_refused_at_once_and_deadline_expires_in_queue(repository) -> None:
    async def main():
        settings = sf.settings_for(repository, max_queue_size=2, max_batch_size=1)
        async with sf.started_core(settings) as core:
            hang = np.full((1, 3, 8, 8), -2.0, dtype=np.float32)  # the fake model sleeps on this batch
            blocker = asyncio.ensure_future(core.infer(
                model="fake", version=None, inputs=[InferInput("input", "FP32", [1, 3, 8, 8], hang)],
                timeout_s=30, protocol="grpc"))
            await asyncio.sleep(0.5)  # the hanging batch occupies the only instance
            waiting = [asyncio.ensure_future(core.classify([sf.colour_image("red")], model="fake",
                                                           timeout_s=0.3, protocol="http"))
                       for _ in range(2)]
            await asyncio.sleep(0.05)
            err = await _expect(ErrorKind.QUEUE_FULL,
                                core.classify([sf.colour_image("red")], model="fake", protocol="http"))
            assert err.retry_after_s is not None and err.retry_after_s > 0
            for task in waiting:  # never reach the model: the deadline passes in the queue
                await _expect(ErrorKind.DEADLINE_EXCEEDED, task)
            assert sf.sample(core.metrics, "ddrnet_dropped_total", model="fake", reason="deadline") == 2
            assert sf.sample(core.metrics, "ddrnet_rejected_total", model="fake", reason="queue_full") == 1
            blocker.cancel()
            _kill_workers(core)  # the hanging batch would hold the worker's shutdown for 10 s

    run(main())


def test_cancelled_request_leaves_the_queue(repository) -> None:
    async def main():
        async with sf.started_core(sf.settings_for(repository, max_batch_size=1)) as core:
            hang = np.full((1, 3, 8, 8), -2.0, dtype=np.float32)
            blocker = asyncio.ensure_future(core.infer(
                model="fake", version=None, inputs=[InferInput("input", "FP32", [1, 3, 8, 8], hang)],
                protocol="grpc"))
            await asyncio.sleep(0.5)
            queued = asyncio.ensure_future(core.classify([sf.colour_image("red")], model="fake",
                                                         protocol="grpc"))
            await asyncio.sleep(0.2)
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            assert sf.sample(core.metrics, "ddrnet_dropped_total", model="fake", reason="cancelled") == 1
            assert sf.sample(core.metrics, "ddrnet_requests_total", model="fake", version="1",
                             protocol="grpc", code="CANCELLED") == 1
            blocker.cancel()
            _kill_workers(core)

    run(main())


# -- infer (OIP v2) ---------------------------------------------------------------------------------------


def test_infer_bytes_and_tensor_inputs_agree(repository) -> None:
    async def main():
        async with sf.started_core(sf.settings_for(repository)) as core:
            images = [sf.colour_image(n) for n in ("blue", "red")]
            by_bytes = await core.infer(
                model="fake", version=None, inputs=[InferInput(IMAGES_INPUT, "BYTES", [2], images)],
                request_id="r1", protocol="http")
            assert (by_bytes.model_name, by_bytes.model_version, by_bytes.id) == ("fake", "1", "r1")
            out = by_bytes.outputs[0]
            assert (out.name, out.datatype, out.shape) == ("logits", "FP32", [2, 3])
            assert out.data.argmax(axis=1).tolist() == [2, 0]
            served = core.manager.get("fake").current
            tensor = served.transform.batch(images)
            by_tensor = await core.infer(
                model="fake", version="1", inputs=[InferInput("input", "FP32", [2, 3, 8, 8], tensor)],
                outputs=["logits"], protocol="http")
            np.testing.assert_allclose(by_tensor.outputs[0].data, out.data, atol=1e-6)
            np.testing.assert_allclose(out.data, tensor.mean(axis=(2, 3)), atol=1e-6)

    run(main())


def test_infer_refuses_wrong_names_types_and_shapes(repository) -> None:
    async def main():
        async with sf.started_core(sf.settings_for(repository)) as core:
            ok = np.zeros((1, 3, 8, 8), np.float32)

            def infer(*inputs, outputs=None):
                return core.infer(model="fake", version=None, inputs=list(inputs), outputs=outputs,
                                  protocol="http")

            bad = ErrorKind.INVALID_ARGUMENT
            await _expect(bad, infer(InferInput("x", "FP32", [1, 3, 8, 8], ok)), contains="no input 'x'")
            await _expect(bad, infer(InferInput("input", "FP64", [1, 3, 8, 8], ok.astype(np.float64))),
                          contains="FP32")
            await _expect(bad, infer(InferInput("input", "FP32", [1, 3, 4, 4], ok[:, :, :4, :4])),
                          contains="shape")
            await _expect(bad, infer(InferInput("input", "FP32", [1, 3, 8, 8], ok * np.nan)), contains="NaN")
            await _expect(bad, infer(InferInput(IMAGES_INPUT, "FP32", [1], ok)), contains="BYTES")
            await _expect(bad, infer(InferInput(IMAGES_INPUT, "BYTES", [2], [b"a"])), contains="elements")
            await _expect(bad, infer(InferInput("input", "FP32", [1, 3, 8, 8], ok), outputs=["probs"]),
                          contains="no output")
            await _expect(bad, infer(), contains="exactly one input")
            fail = np.full((1, 3, 8, 8), -1.0, np.float32)  # the fake model raises on this batch
            await _expect(ErrorKind.INTERNAL, infer(InferInput("input", "FP32", [1, 3, 8, 8], fail)),
                          contains="injected runtime failure")
            result = await infer(InferInput("input", "FP32", [1, 3, 8, 8], ok))  # the next batch works
            assert result.outputs[0].shape == [1, 3]

    run(main())


# -- health, metadata, shutdown ---------------------------------------------------------------------------


def test_metadata_and_shutdown(repository) -> None:
    async def main():
        async with sf.started_core(sf.settings_for(repository)) as core:
            meta = core.model_metadata("fake")
            assert meta.versions == ["1"] and meta.labels == sf.FAKE_LABELS
            assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [
                ("input", "FP32", [-1, 3, 8, 8]), (IMAGES_INPUT, "BYTES", [-1])]
            assert [(t.name, t.shape) for t in meta.outputs] == [("logits", [-1, 3])]
            assert core.server_metadata()["name"] == "ddrnet-serve"
            assert core.model_ready("fake") and core.model_ready("fake", "1")
            with pytest.raises(ServingError):
                core.model_ready("nope")
            core.begin_shutdown()
            assert not core.ready() and core.live()
            await _expect(ErrorKind.UNAVAILABLE,
                          core.classify([sf.colour_image("red")], model="fake", protocol="http"),
                          contains="shutting down")
            assert sf.sample(core.metrics, "ddrnet_rejected_total", model="fake", reason="shutting_down") == 1

    run(main())


def test_client_deadline_is_capped_by_the_server_timeout(repository) -> None:
    async def main():
        async with sf.started_core(sf.settings_for(repository, request_timeout_ms=2000)) as core:
            now = time.monotonic()
            assert core.deadline(None) == pytest.approx(now + 2.0, abs=0.5)
            assert core.deadline(0.5) == pytest.approx(now + 0.5, abs=0.3)
            assert core.deadline(60.0) == pytest.approx(now + 2.0, abs=0.5)

    run(main())


def test_core_owns_auth_oip_parameters_outputs_and_model_status(repository) -> None:
    """What both front ends used to repeat: the bearer token, OIP's parameters.timeout, the requested
    outputs with the classification-extension refusal, and each model's status."""
    from server.core import RequestedOutput

    async def main():
        async with sf.started_core(sf.settings_for(repository, auth_token="k")) as core:
            core.authorize("k")
            for bad in (None, "", "K", "k "):
                with pytest.raises(ServingError) as info:
                    core.authorize(bad)
                assert info.value.kind is ErrorKind.UNAUTHENTICATED
            [status] = core.models()
            assert (status.name, status.version, status.ready) == ("fake", "1", True)
            ok = np.zeros((1, 3, 8, 8), np.float32)
            inputs = [InferInput("input", "FP32", [1, 3, 8, 8], ok)]

            def infer(**kw):
                return core.infer(model="fake", version=None, inputs=inputs, protocol="grpc", **kw)

            bad = ErrorKind.INVALID_ARGUMENT
            for timeout in (0, -5, "soon", True):
                await _expect(bad, infer(parameters={"timeout": timeout}), contains="parameters.timeout")
            await _expect(bad, infer(outputs=[RequestedOutput("logits", {"classification": 3})]),
                          contains="classification extension is not supported")
            answered = await infer(parameters={"timeout": 30_000_000}, outputs=[RequestedOutput("logits")])
            assert answered.outputs[0].shape == [1, 3]
            await _expect(ErrorKind.DEADLINE_EXCEEDED, infer(parameters={"timeout": 1}))  # 1 µs
            core.begin_shutdown()
            assert [m.ready for m in core.models()] == [False]

    run(main())


def test_decode_budget_refuses_what_cannot_fit_and_bounds_what_is_in_flight() -> None:
    """An image costing more than the whole budget is 413 before decoding; images that do not fit
    beside the ones in progress wait (bounded) or get 503; the bytes held never exceed the budget."""
    import threading

    from model.preprocess import ImageTooLargeError
    from server.preprocessing import DecodeBudget

    budget = DecodeBudget(100, wait_s=0.2)
    with pytest.raises(ImageTooLargeError) as info, budget.hold(101):
        pass
    assert info.value.reason == "too_much_memory"
    with budget.hold(60):
        with pytest.raises(ServingError) as busy, budget.hold(60):
            pass
        assert busy.value.kind is ErrorKind.UNAVAILABLE and busy.value.retry_after_s == 1.0
    peak = []

    def worker() -> None:
        for _ in range(50):
            with budget.hold(40):
                peak.append(budget.in_use)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    budget.wait_s = 30.0
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(peak) == 300 and max(peak) <= 100 and budget.peak <= 100 and budget.in_use == 0


def test_an_image_over_the_decode_budget_is_413_before_decoding(repository) -> None:
    big = np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")

    async def main():
        async with sf.started_core(sf.settings_for(repository, max_decode_memory_bytes=2 << 20)) as core:
            with pytest.raises(ServingError) as info:
                await core.classify([buf.getvalue()], model="fake", protocol="http")
            assert info.value.kind is ErrorKind.PAYLOAD_TOO_LARGE
            assert "decode memory budget" in info.value.message
            ok = await core.classify([sf.colour_image("red")], model="fake", protocol="http")
            assert ok.results[0][0].label == "red"

    run(main())
