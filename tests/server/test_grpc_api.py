"""gRPC front end (in process, grpc.aio on loopback) over the real core and fake-model workers:
Classify unary and stream, OIP v2 GRPCInferenceService, health, reflection, auth, deadlines,
cancellation, message size limits, and status codes for every error."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos import classify_pb2, classify_pb2_grpc, grpc_service_pb2, grpc_service_pb2_grpc
from server.grpc_api import CLASSIFY_SERVICE, INFERENCE_SERVICE, HealthReporter, create_server
from tests.support import server_fixtures as sf

Tensor = grpc_service_pb2.ModelInferRequest.InferInputTensor


def run(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def repository(tmp_path):
    sf.make_fake_version(tmp_path, "fake", 1)
    return tmp_path


@contextlib.asynccontextmanager
async def serving(repository, **overrides):
    async with sf.started_core(sf.settings_for(repository, **overrides)) as core:
        health = HealthReporter(core)
        server, port = create_server(core, health)
        await server.start()
        await health.sync()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            yield channel, core, health
        finally:
            await channel.close()
            await server.stop(None)


def request(*colours: str, **kw) -> classify_pb2.ClassifyRequest:
    kw.setdefault("model_name", "fake")
    return classify_pb2.ClassifyRequest(images=[sf.colour_image(c) for c in colours], **kw)


async def expect_status(code: grpc.StatusCode, call, part: str = "") -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value
    assert part.lower() in (info.value.details() or "").lower()
    return info.value


def hang_request() -> grpc_service_pb2.ModelInferRequest:
    """A batch the fake model sleeps on (its first value is -2)."""
    data = np.full((1, 3, 8, 8), -2.0, np.float32)
    return grpc_service_pb2.ModelInferRequest(
        model_name="fake", inputs=[Tensor(name="input", datatype="FP32", shape=[1, 3, 8, 8])],
        raw_input_contents=[data.tobytes()])


def kill_workers(core) -> None:
    for instance in core.manager.get("fake").current.instances:
        os.kill(instance.worker.pid, signal.SIGKILL)


# -- Classify -----------------------------------------------------------------------------------------------


def test_classify_unary(repository) -> None:
    async def main():
        async with serving(repository) as (channel, _core, _health):
            stub = classify_pb2_grpc.ClassifyStub(channel)
            reply = await stub.Classify(request("blue", "red", "green", id="abc"), timeout=10)
            assert (reply.model_name, reply.model_version, reply.id) == ("fake", "1", "abc")
            assert [r.predictions[0].label for r in reply.results] == ["blue", "red", "green"]
            assert len(reply.results[0].predictions) == 3  # default 5, capped at 3 classes
            assert not reply.HasField("error")
            reply = await stub.Classify(request("red", top_k=1, model_version="1"))
            assert [(p.label, p.index) for p in reply.results[0].predictions] == [("red", 0)]
            assert 0 < reply.results[0].predictions[0].score <= 1

            bad = grpc.StatusCode.INVALID_ARGUMENT
            missing = grpc.StatusCode.NOT_FOUND
            await expect_status(missing, stub.Classify(request("red", model_name="nope")), "nope")
            await expect_status(missing, stub.Classify(request("red", model_version="3")))
            await expect_status(bad, stub.Classify(request("red", top_k=0)), "top_k")
            await expect_status(bad, stub.Classify(request("red", top_k=-2)), "top_k")
            await expect_status(bad, stub.Classify(request()), "no images")
            images = [sf.colour_image("red"), b"\x89PNG"]
            garbage = classify_pb2.ClassifyRequest(model_name="fake", images=images)
            await expect_status(bad, stub.Classify(garbage), "image 1")
            reply = await stub.Classify(request("green"))  # still serving
            assert reply.results[0].predictions[0].label == "green"

    run(main())


def test_classify_stream_answers_every_message_and_survives_errors(repository) -> None:
    async def main():
        async with serving(repository, max_batch_size=4) as (channel, _core, _health):
            stub = classify_pb2_grpc.ClassifyStub(channel)
            colours = [list(sf.COLOURS)[i % 3] for i in range(24)]
            messages = [request(c, id=f"m{i}", top_k=1) for i, c in enumerate(colours)]
            junk = classify_pb2.ClassifyRequest(model_name="fake", images=[b"junk"], id="bad-image")
            messages.insert(5, junk)
            messages.insert(9, request("red", model_name="nope", id="bad-model"))

            async def requests():
                for message in messages:
                    yield message

            replies = {}
            async for reply in stub.ClassifyStream(requests(), timeout=30):
                replies[reply.id] = reply
            assert len(replies) == len(messages)
            for i, colour in enumerate(colours):
                reply = replies[f"m{i}"]
                assert not reply.HasField("error")
                assert reply.results[0].predictions[0].label == colour and reply.model_version == "1"
            assert replies["bad-image"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert "decode" in replies["bad-image"].error.message and not replies["bad-image"].results
            assert replies["bad-model"].error.code == grpc.StatusCode.NOT_FOUND.value[0]

    run(main())


def test_deadline_cancellation_and_queue_full(repository) -> None:
    async def main():
        async with serving(repository, max_batch_size=1, max_queue_size=1) as (channel, core, _health):
            stub = classify_pb2_grpc.ClassifyStub(channel)
            oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            blocker = oip.ModelInfer(hang_request())
            await asyncio.sleep(0.5)
            # The call's deadline is the request's: it passes while the request waits in the queue.
            await expect_status(grpc.StatusCode.DEADLINE_EXCEEDED, stub.Classify(request("red"), timeout=0.3))
            for _ in range(50):  # the server notices the expired request (bounded wait)
                if sf.sample(core.metrics, "ddrnet_dropped_total", model="fake", reason="deadline") >= 1:
                    break
                await asyncio.sleep(0.05)
            assert sf.sample(core.metrics, "ddrnet_dropped_total", model="fake", reason="deadline") == 1
            # A cancelled call leaves the queue.
            call = stub.Classify(request("red"))
            await asyncio.sleep(0.3)
            full = await expect_status(grpc.StatusCode.UNAVAILABLE, stub.Classify(request("red")),
                                       "queue is full")
            trailers = dict(full.trailing_metadata())
            assert int(trailers["grpc-retry-pushback-ms"]) > 0
            call.cancel()
            for _ in range(50):
                if sf.sample(core.metrics, "ddrnet_dropped_total", model="fake", reason="cancelled") >= 1:
                    break
                await asyncio.sleep(0.05)
            assert sf.sample(core.metrics, "ddrnet_dropped_total", model="fake", reason="cancelled") == 1
            blocker.cancel()
            kill_workers(core)

    run(main())


# -- OIP v2 -------------------------------------------------------------------------------------------------


def test_inference_service(repository) -> None:
    async def main():
        async with serving(repository) as (channel, core, _health):
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert (await stub.ServerLive(grpc_service_pb2.ServerLiveRequest())).live
            assert (await stub.ServerReady(grpc_service_pb2.ServerReadyRequest())).ready
            assert (await stub.ModelReady(grpc_service_pb2.ModelReadyRequest(name="fake", version="1"))).ready
            await expect_status(grpc.StatusCode.NOT_FOUND,
                                stub.ModelReady(grpc_service_pb2.ModelReadyRequest(name="nope")))
            meta = await stub.ServerMetadata(grpc_service_pb2.ServerMetadataRequest())
            assert meta.name == "ddrnet-serve" and "binary_tensor_data" in meta.extensions
            model = await stub.ModelMetadata(grpc_service_pb2.ModelMetadataRequest(name="fake"))
            assert list(model.versions) == ["1"] and model.platform == "fake"
            assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
                ("input", "FP32", [-1, 3, 8, 8]), ("images", "BYTES", [-1])]
            assert [(t.name, list(t.shape)) for t in model.outputs] == [("logits", [-1, 3])]

            images = [sf.colour_image(c) for c in ("green", "blue")]
            expected = core.manager.get("fake").current.transform.batch(images).mean(axis=(2, 3))
            raw = b"".join(struct.pack("<I", len(i)) + i for i in images)
            reply = await stub.ModelInfer(grpc_service_pb2.ModelInferRequest(
                model_name="fake", id="x1", inputs=[Tensor(name="images", datatype="BYTES", shape=[2])],
                raw_input_contents=[raw]))
            assert (reply.model_version, reply.id) == ("1", "x1")
            outputs = [(o.name, o.datatype, list(o.shape)) for o in reply.outputs]
            assert outputs == [("logits", "FP32", [2, 3])]
            logits = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(2, 3)
            np.testing.assert_allclose(logits, expected, atol=1e-5)
            typed = await stub.ModelInfer(grpc_service_pb2.ModelInferRequest(
                model_name="fake", model_version="1",
                inputs=[Tensor(name="images", datatype="BYTES", shape=[2],
                               contents=grpc_service_pb2.InferTensorContents(bytes_contents=images))]))
            assert typed.raw_output_contents == reply.raw_output_contents
            tensor = core.manager.get("fake").current.transform.batch(images)
            as_floats = await stub.ModelInfer(grpc_service_pb2.ModelInferRequest(
                model_name="fake",
                inputs=[Tensor(name="input", datatype="FP32", shape=[2, 3, 8, 8],
                               contents=grpc_service_pb2.InferTensorContents(fp32_contents=tensor.ravel()))],
                outputs=[grpc_service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="logits")]))
            assert as_floats.raw_output_contents == reply.raw_output_contents

            bad = grpc.StatusCode.INVALID_ARGUMENT

            def infer(**kw):
                kw.setdefault("model_name", "fake")
                return stub.ModelInfer(grpc_service_pb2.ModelInferRequest(**kw))

            one = [Tensor(name="input", datatype="FP32", shape=[1, 3, 8, 8])]
            await expect_status(bad, infer(inputs=one, raw_input_contents=[b"\0" * 10]), "768")
            await expect_status(bad, infer(inputs=one, raw_input_contents=[b"", b""]), "raw_input_contents")
            await expect_status(bad, infer(inputs=[Tensor(name="input", datatype="FP16", shape=[1, 3, 8, 8])],
                                           raw_input_contents=[b"\0" * 384]), "FP32")
            await expect_status(bad, infer(inputs=[Tensor(name="input", datatype="BF16", shape=[1])],
                                           raw_input_contents=[b"\0\0"]), "datatype")
            await expect_status(bad, infer(inputs=[Tensor(name="images", datatype="BYTES", shape=[1])],
                                           raw_input_contents=[struct.pack("<I", 9) + b"ab"]), "declares 9")
            await expect_status(bad, infer(inputs=one), "fp32_contents")
            await expect_status(grpc.StatusCode.NOT_FOUND, infer(model_name="nope", inputs=one,
                                                                 raw_input_contents=[b"\0" * 768]))
            fail = np.full((1, 3, 8, 8), -1.0, np.float32).tobytes()
            await expect_status(grpc.StatusCode.INTERNAL, infer(inputs=one, raw_input_contents=[fail]),
                                "injected")

    run(main())


# -- health, reflection, auth, limits -----------------------------------------------------------------------


def test_health_follows_readiness_and_reflection_lists_services(repository) -> None:
    async def main():
        async with serving(repository) as (channel, core, health):
            stub = health_pb2_grpc.HealthStub(channel)
            serving_status = health_pb2.HealthCheckResponse.SERVING
            for service in ("", CLASSIFY_SERVICE, INFERENCE_SERVICE, "fake"):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == serving_status, service
            unknown = health_pb2.HealthCheckRequest(service="nope")
            await expect_status(grpc.StatusCode.NOT_FOUND, stub.Check(unknown))

            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)

            async def ask():
                yield reflection_pb2.ServerReflectionRequest(list_services="")
                yield reflection_pb2.ServerReflectionRequest(file_containing_symbol=CLASSIFY_SERVICE)

            answers = [a async for a in reflect.ServerReflectionInfo(ask())]
            names = {s.name for s in answers[0].list_services_response.service}
            assert {CLASSIFY_SERVICE, INFERENCE_SERVICE, "grpc.health.v1.Health"} <= names
            assert answers[1].file_descriptor_response.file_descriptor_proto

            core.begin_shutdown()
            await health.shutdown()
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            classify = classify_pb2_grpc.ClassifyStub(channel).Classify(request("red"))
            await expect_status(grpc.StatusCode.UNAVAILABLE, classify, "shutting down")

    run(main())


def test_bearer_token_and_message_size_limit(repository) -> None:
    async def main():
        async with serving(repository, auth_token="t0ken", max_request_bytes=4096) as (channel, core, _h):
            stub = classify_pb2_grpc.ClassifyStub(channel)
            unauth = grpc.StatusCode.UNAUTHENTICATED
            await expect_status(unauth, stub.Classify(request("red")), "bearer token")
            wrong = (("authorization", "Bearer x"),)
            await expect_status(unauth, stub.Classify(request("red"), metadata=wrong))
            good = (("authorization", "Bearer t0ken"),)
            reply = await stub.Classify(request("red"), metadata=good)
            assert reply.results[0].predictions[0].label == "red"

            async def one():
                yield request("red")

            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.ClassifyStream(one()):
                    pass
            assert info.value.code() == unauth
            oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            await expect_status(unauth, oip.ModelInfer(grpc_service_pb2.ModelInferRequest(model_name="fake")))
            # the unary refusals are counted by the one error decorator (the stream is not a unary call)
            assert sf.sample(core.metrics, "ddrnet_requests_total", model="fake", version="", protocol="grpc",
                             code="UNAUTHENTICATED") == 3
            assert (await oip.ServerReady(grpc_service_pb2.ServerReadyRequest())).ready  # health stays open
            big = classify_pb2.ClassifyRequest(model_name="fake", images=[b"\0" * 8000])
            await expect_status(grpc.StatusCode.RESOURCE_EXHAUSTED, stub.Classify(big, metadata=good))

    run(main())


@pytest.mark.parametrize("implementation", ["upb", "python"])
def test_malformed_messages_are_invalid_argument_under_either_protobuf_implementation(implementation) -> None:
    """Pure-Python protobuf raises UnicodeDecodeError for bad UTF-8 where upb raises DecodeError; the
    server sees that implementation whenever it is started from a process that imported MindSpore."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        from google.protobuf.internal import api_implementation
        from protos import classify_pb2, grpc_service_pb2
        from server.grpc_api import _lenient, _Malformed
        print(api_implementation.Type())
        for parse in (classify_pb2.ClassifyRequest.FromString, grpc_service_pb2.ModelInferRequest.FromString):
            for data in (b"\\x0a\\x02\\xff\\xfe", b"\\x12\\x80"):  # bad UTF-8 in field 1; a cut length
                got = _lenient(parse)(data)
                assert isinstance(got, _Malformed), (parse, data, got)
                assert got.message.startswith("cannot parse the request message"), got.message
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=str(sf.REPO_ROOT))
    env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = implementation
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [implementation, "ok"]


def test_classify_stream_stops_reading_requests_when_its_responses_are_not_read(repository) -> None:
    """A ClassifyStream whose client does not read the responses holds at most its slots' worth of
    answered requests (max_queue_size in progress + as many queued responses), then stops pulling
    requests off the stream: no unbounded response queue on the server."""
    from server.grpc_api import ClassifyServicer

    class Context:
        def invocation_metadata(self):
            return ()

        def time_remaining(self):
            return 30.0

    async def main():
        async with sf.started_core(sf.settings_for(repository, max_queue_size=2)) as core:
            pulled = 0

            async def requests():
                nonlocal pulled
                for i in range(200):
                    pulled += 1
                    yield request("red", id=str(i))

            stream = ClassifyServicer(core).ClassifyStream(requests(), Context())
            first = await stream.__anext__()  # the reader starts; then nobody reads
            assert first.results[0].predictions[0].label == "red"
            await asyncio.sleep(1.0)
            assert pulled <= 2 * 2 + 3, f"{pulled} requests pulled with their responses unread"
            answered = [first]
            async for response in stream:  # reading again lets the stream finish
                answered.append(response)
            assert len(answered) == 200 and pulled == 200

    run(main())


def test_too_many_declared_images_are_refused_before_any_element_is_decoded(monkeypatch) -> None:
    """A BYTES input of two million empty elements (8 MB, under the message limit) is refused from its
    declared shape: the elements are never unpacked."""
    from server import grpc_api, oip_codec
    from server.errors import ErrorKind, ServingError

    unpacked = []
    monkeypatch.setattr(oip_codec, "unpack_bytes", lambda *a: unpacked.append(a) or [])
    tensor = grpc_service_pb2.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES",
                                                                  shape=[2_000_000])
    message = grpc_service_pb2.ModelInferRequest(model_name="fake", inputs=[tensor],
                                                 raw_input_contents=[struct.pack("<I", 0) * 2_000_000])
    with pytest.raises(ServingError, match="declares 2000000 images") as info:
        grpc_api._decode_inputs(message, 64)
    assert info.value.kind is ErrorKind.PAYLOAD_TOO_LARGE and unpacked == []
    typed = grpc_service_pb2.ModelInferRequest(model_name="fake", inputs=[
        grpc_service_pb2.ModelInferRequest.InferInputTensor(
            name="images", datatype="BYTES", shape=[100],
            contents=grpc_service_pb2.InferTensorContents(bytes_contents=[b""] * 100))])
    with pytest.raises(ServingError, match="at most 64 per request"):
        grpc_api._decode_inputs(typed, 64)


def test_tensors_are_decoded_off_the_event_loop(repository, monkeypatch) -> None:
    import threading

    from server import grpc_api

    threads = []
    real = grpc_api._decode_inputs

    def spy(*args):
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(grpc_api, "_decode_inputs", spy)

    async def main():
        async with serving(repository) as (channel, _core, _h):
            oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            tensor = grpc_service_pb2.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES",
                                                                          shape=[1])
            reply = await oip.ModelInfer(grpc_service_pb2.ModelInferRequest(
                model_name="fake", inputs=[tensor],
                raw_input_contents=[oip_codec_pack([sf.colour_image("red")])]))
            assert list(reply.outputs[0].shape) == [1, 3]

    run(main())
    assert threads and all(name.startswith("decode") for name in threads), threads


def oip_codec_pack(images: list[bytes]) -> bytes:
    from server.oip_codec import pack_bytes

    return pack_bytes(images)


def test_an_error_racing_the_clients_deadline_ends_the_call_without_a_traceback(caplog) -> None:
    """An error answered in the instant the client's deadline passes cannot send its status (grpc's
    ExecuteBatchError, logged with a traceback by grpc unless the handler handles it). The soak run met
    it on 6 of 1554 calls with a 2 ms deadline; here 800 calls aim at that instant on purpose."""
    import logging
    import random

    from server.errors import ErrorKind, ServingError
    from server.grpc_api import rpc

    class Late(health_pb2_grpc.HealthServicer):
        @rpc()
        async def Check(self, request, context):
            await asyncio.sleep(max(0.0, context.time_remaining() + random.uniform(-0.002, 0.002)))
            raise ServingError(ErrorKind.DEADLINE_EXCEEDED, "request deadline passed", reason="deadline")

    async def scenario() -> dict:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(Late(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        codes: dict = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)

                async def one() -> None:
                    try:
                        await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.02)
                    except grpc.aio.AioRpcError as exc:
                        codes[exc.code()] = codes.get(exc.code(), 0) + 1

                for _ in range(40):
                    await asyncio.gather(*(one() for _ in range(20)))
            await asyncio.sleep(0.3)
        finally:
            await server.stop(None)
        return codes

    with caplog.at_level(logging.INFO):
        codes = run(scenario())
    assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED: 800}
    assert not [r for r in caplog.records if r.exc_info or "ExecuteBatchError" in r.getMessage()]
