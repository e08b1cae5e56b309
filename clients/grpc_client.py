"""gRPC clients for ddrnet-serve: :class:`GrpcClient` (blocking) and :class:`AsyncGrpcClient` (grpc.aio).

The same shape as the HTTP clients: ``classify(image)`` and ``classify_many(images)`` call
``ddrnet.v1.Classify/Classify`` (``classify_many`` sends requests of up to ``batch_size`` images);
``infer_images(images)`` calls the Open Inference Protocol v2 ``ModelInfer`` with the ``images``
BYTES input and returns logits; ``classify_stream(images)`` sends one image per message over one
bidirectional ``ClassifyStream`` call and yields ``(index, result or error)`` as answers arrive (for
high-rate clients; not retried); ``ready()`` asks ``grpc.health.v1.Health``. Errors are the exceptions
of :mod:`clients.errors` (a queue-full UNAVAILABLE carries the server's ``grpc-retry-pushback-ms``);
UNAVAILABLE is retried with backoff (:mod:`clients.retry`).

Deadlines: ``timeout`` bounds the whole call, retries included; each attempt is sent with the time
left as its gRPC deadline, which the server also applies to the request's time in its queue.

TLS: ``tls=True`` with the system roots, or ``root_certificates`` (PEM bytes or a path);
``private_key`` + ``certificate_chain`` for mutual TLS; ``server_name`` overrides the name checked
in the server's certificate. ``token`` adds ``authorization: Bearer <token>`` metadata.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import oip
from clients.classify_methods import AsyncClassifyMethods, SyncClassifyMethods
from clients.errors import (
    ClientError,
    DeadlineExceededError,
    ServerInternalError,
    from_grpc,
    from_grpc_number,
)
from clients.payload import ImageLike, to_bytes
from clients.retry import RetryPolicy, acall_with_retry, call_with_retry
from clients.types import ClassifyResult, ImageResult, Logits, result_from_proto
from protos import classify_pb2, classify_pb2_grpc, grpc_service_pb2, grpc_service_pb2_grpc

DEFAULT_TIMEOUT_S = 30.0
MAX_MESSAGE_BYTES = 256 * 2**20  # the server enforces its own (smaller) limit


def _pem(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class _GrpcBase:
    """Channel settings, request building and answer checks shared by the two clients."""

    def __init__(
        self,
        target: str = "127.0.0.1:8001",
        *,
        model: str | None = None,
        version: str | int | None = None,
        label: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | str | Path | None = None,
        private_key: bytes | str | Path | None = None,
        certificate_chain: bytes | str | Path | None = None,
        server_name: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        target = target.strip()
        for prefix in ("grpc://", "grpcs://"):
            if target.startswith(prefix):
                tls = tls or prefix == "grpcs://"
                target = target[len(prefix) :]
        if not target:
            raise ValueError("gRPC target is empty (expected HOST:PORT)")
        self.target = target
        self.model = model
        self.version = None if version is None else str(version)
        self.label = label or ""  # a version label (ClassifyRequest.version_label)
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._tls = tls or any(v is not None for v in (root_certificates, private_key, certificate_chain))
        self._credentials = (
            grpc.ssl_channel_credentials(
                _pem(root_certificates), _pem(private_key), _pem(certificate_chain)
            )
            if self._tls
            else None
        )
        opts = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 0),  # retries are ours (clients.retry), not the channel's
        ]
        if server_name:
            opts.append(("grpc.ssl_target_name_override", server_name))
        self._options = opts + list(options)

    def _names(self, model: str | None, version: str | int | None) -> tuple[str, str]:
        name = model or self.model
        if not name:
            raise ValueError("no model name: pass model= to the client or to the call")
        chosen = self.version if version is None else str(version)
        return name, chosen or ""

    @staticmethod
    def _left(deadline: float | None) -> float | None:
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError("deadline passed before the request could be sent")
        return left

    def _classify_request(
        self, images: Sequence[bytes], top_k: int | None, model: str | None, version: Any
    ) -> classify_pb2.ClassifyRequest:
        name, chosen = self._names(model, version)
        request = classify_pb2.ClassifyRequest(model_name=name, model_version=chosen, images=list(images),
                                               version_label="" if chosen else self.label)
        if top_k is not None:
            request.top_k = top_k
        return request

    @staticmethod
    def _stream_item(response: classify_pb2.ClassifyResponse) -> tuple[int, ImageResult | ClientError]:
        """(request index, its result or its error) from one ClassifyStream response."""
        index = int(response.id)
        if response.HasField("error"):
            return index, from_grpc_number(response.error.code, response.error.message)
        result = result_from_proto(response)
        if len(result) != 1:
            return index, ServerInternalError(f"stream answer {index} has {len(result)} results, not 1")
        return index, result[0]

    @staticmethod
    def _classify_result(response: classify_pb2.ClassifyResponse, count: int) -> ClassifyResult:
        result = result_from_proto(response)
        if len(result) != count:
            raise ServerInternalError(f"sent {count} images, the answer has {len(result)} results")
        return result


class GrpcClient(_GrpcBase, SyncClassifyMethods):
    """Blocking gRPC client over one channel; thread-safe. Use as a context manager or ``close()``."""

    def __init__(self, target: str = "127.0.0.1:8001", **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        if self._credentials is not None:
            self._channel = grpc.secure_channel(self.target, self._credentials, options=self._options)
        else:
            self._channel = grpc.insecure_channel(self.target, options=self._options)
        self._classify = classify_pb2_grpc.ClassifyStub(self._channel)
        self._inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any, deadline: float | None) -> Any:
        def attempt() -> Any:
            try:
                return method(request, timeout=self._left(deadline), metadata=self._metadata)
            except grpc.RpcError as exc:
                raise from_grpc(exc) from None

        return call_with_retry(self.retry, deadline, attempt)

    def _classify_call(
        self,
        images: Sequence[bytes],
        top_k: int | None,
        model: str | None,
        version: Any,
        deadline: float | None,
    ) -> ClassifyResult:
        request = self._classify_request(images, top_k, model, version)
        return self._classify_result(self._call(self._classify.Classify, request, deadline), len(images))

    def infer_images(
        self, images: Sequence[ImageLike], *, model: str | None = None, version: str | int | None = None,
        timeout: float | None = None,
    ) -> Logits:
        """The model's logits for ``images`` (one OIP v2 ModelInfer)."""
        name, chosen = self._names(model, version)
        request = oip.grpc_request(name, chosen, [to_bytes(image) for image in images])
        reply = self._call(self._inference.ModelInfer, request, self._deadline(timeout))
        return oip.parse_grpc_response(reply)

    def classify_stream(
        self, images: Iterable[ImageLike], *, top_k: int | None = None, model: str | None = None,
        version: str | int | None = None, timeout: float | None = None,
    ) -> Iterator[tuple[int, ImageResult | ClientError]]:
        """Classify ``images`` over one ``ClassifyStream`` call, one image per message; yields
        ``(index, ImageResult or ClientError)`` as answers arrive (not in order). A failed image does
        not end the stream; a broken call (deadline, server gone) raises. Streams are not retried;
        ``timeout`` bounds the whole call."""
        def requests() -> Iterator[classify_pb2.ClassifyRequest]:
            for index, image in enumerate(images):
                request = self._classify_request([to_bytes(image)], top_k, model, version)
                request.id = str(index)
                yield request

        call = self._classify.ClassifyStream(
            requests(), timeout=self._left(self._deadline(timeout)), metadata=self._metadata
        )
        try:
            for response in call:
                yield self._stream_item(response)
        except grpc.RpcError as exc:
            raise from_grpc(exc) from None
        finally:
            call.cancel()

    def ready(self, timeout: float | None = 5.0) -> bool:
        """Whether the server reports SERVING on ``grpc.health.v1.Health``; UnavailableError when
        it cannot be reached."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            raise from_grpc(exc) from None
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def model_metadata(self, model: str | None = None, timeout: float | None = 5.0) -> dict[str, Any]:
        """OIP v2 model metadata as a dict (``name``, ``versions``, ``platform``, ``inputs``, ``outputs``)."""
        name, chosen = self._names(model, None)
        try:
            reply = self._inference.ModelMetadata(
                grpc_service_pb2.ModelMetadataRequest(name=name, version=chosen), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise from_grpc(exc) from None
        return _metadata_dict(reply)


class AsyncGrpcClient(_GrpcBase, AsyncClassifyMethods):
    """grpc.aio client. The channel is opened on first use inside the running event loop;
    ``async with`` it or ``await aclose()``. ``classify_many`` sends its requests concurrently."""

    def __init__(self, target: str = "127.0.0.1:8001", **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._channel: grpc.aio.Channel | None = None

    def _open(self) -> grpc.aio.Channel:
        if self._channel is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials, options=self._options)
            else:
                self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
            self._classify = classify_pb2_grpc.ClassifyStub(self._channel)
            self._inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
            self._health = health_pb2_grpc.HealthStub(self._channel)
        return self._channel

    async def __aenter__(self) -> AsyncGrpcClient:
        self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _call(self, method_name: str, request: Any, deadline: float | None) -> Any:
        self._open()
        stub = self._inference if method_name == "ModelInfer" else self._classify
        method = getattr(stub, method_name)

        async def attempt() -> Any:
            try:
                return await method(request, timeout=self._left(deadline), metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                raise from_grpc(exc) from None

        return await acall_with_retry(self.retry, deadline, attempt)

    async def _classify_call(
        self,
        images: Sequence[bytes],
        top_k: int | None,
        model: str | None,
        version: Any,
        deadline: float | None,
    ) -> ClassifyResult:
        request = self._classify_request(images, top_k, model, version)
        return self._classify_result(await self._call("Classify", request, deadline), len(images))

    async def infer_images(
        self, images: Sequence[ImageLike], *, model: str | None = None, version: str | int | None = None,
        timeout: float | None = None,
    ) -> Logits:
        """The model's logits for ``images`` (one OIP v2 ModelInfer)."""
        name, chosen = self._names(model, version)
        request = oip.grpc_request(name, chosen, [to_bytes(image) for image in images])
        return oip.parse_grpc_response(await self._call("ModelInfer", request, self._deadline(timeout)))

    async def classify_stream(
        self, images: Iterable[ImageLike] | AsyncIterable[ImageLike], *, top_k: int | None = None,
        model: str | None = None, version: str | int | None = None, timeout: float | None = None,
    ) -> AsyncIterator[tuple[int, ImageResult | ClientError]]:
        """Classify ``images`` (an iterable or async iterable) over one ``ClassifyStream`` call; yields
        ``(index, ImageResult or ClientError)`` as answers arrive (see :meth:`GrpcClient.classify_stream`)."""
        self._open()

        async def requests() -> AsyncIterator[classify_pb2.ClassifyRequest]:
            index = 0
            if isinstance(images, AsyncIterable):
                async for image in images:
                    yield self._request_at(index, image, top_k, model, version)
                    index += 1
            else:
                for image in images:
                    yield self._request_at(index, image, top_k, model, version)
                    index += 1

        call = self._classify.ClassifyStream(
            requests(), timeout=self._left(self._deadline(timeout)), metadata=self._metadata
        )
        try:
            async for response in call:
                yield self._stream_item(response)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc) from None
        finally:
            call.cancel()

    def _request_at(
        self, index: int, image: ImageLike, top_k: int | None, model: str | None, version: Any
    ) -> classify_pb2.ClassifyRequest:
        request = self._classify_request([to_bytes(image)], top_k, model, version)
        request.id = str(index)
        return request

    async def ready(self, timeout: float | None = 5.0) -> bool:
        self._open()
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc) from None
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def model_metadata(self, model: str | None = None, timeout: float | None = 5.0) -> dict[str, Any]:
        self._open()
        name, chosen = self._names(model, None)
        try:
            reply = await self._inference.ModelMetadata(
                grpc_service_pb2.ModelMetadataRequest(name=name, version=chosen), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc) from None
        return _metadata_dict(reply)


def _metadata_dict(reply: Any) -> dict[str, Any]:
    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": reply.name,
        "versions": list(reply.versions),
        "platform": reply.platform,
        "inputs": tensors(reply.inputs),
        "outputs": tensors(reply.outputs),
    }
