"""The gRPC front end (grpc.aio): converts messages into :class:`~server.core.DataPlane` calls and back.

Services:

- ``ddrnet.v1.Classify`` (``protos/classify.proto``): ``Classify`` (unary) and ``ClassifyStream``
  (bidirectional; requests are handled concurrently, responses come back as they finish and carry the
  request's ``id``; a failed request gets a response with ``error`` set and the stream goes on);
- ``inference.GRPCInferenceService`` (Open Inference Protocol v2): ServerLive, ServerReady, ModelReady,
  ServerMetadata, ModelMetadata, ModelInfer (``raw_input_contents`` or typed ``contents``; outputs as
  ``raw_output_contents``, which is what tritonclient reads);
- ``grpc.health.v1.Health``: service ``""`` and the two services above follow the server's readiness,
  and each model name is a service following that model's readiness;
- server reflection.

Errors are gRPC statuses from ``server.errors`` (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE with a
``grpc-retry-pushback-ms`` trailer when the queue is full, DEADLINE_EXCEEDED, INTERNAL,
UNAUTHENTICATED), raised as ServingErrors and turned into statuses in one place (:func:`rpc`); auth, OIP
parameters and the requested outputs are the core's to check. The call's deadline caps the request's; a
cancelled call leaves the queue. With an ``auth_token`` the inference RPCs (Classify, ClassifyStream,
ModelInfer) require metadata ``authorization: Bearer <token>``; health, metadata and reflection stay
open. Message size limits are ``max_request_bytes`` both ways (grpc itself refuses a larger message with
RESOURCE_EXHAUSTED before it reaches a handler); TLS when ``tls_cert``/``tls_key`` are set. A request
message that is not valid protobuf (a string field holding invalid UTF-8, a length cut short) is
INVALID_ARGUMENT naming the message type, on every service (:class:`MalformedRequestGuard`), not grpc's
UNKNOWN with the parser's exception class.

Bounds: calls in progress (``grpc_max_concurrent_rpcs``; more are refused with RESOURCE_EXHAUSTED
before a handler runs) and per connection (``grpc_max_concurrent_streams``); a ClassifyStream holds
at most ``max_queue_size`` requests in progress and as many unread responses, then stops reading.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from protos import classify_pb2, classify_pb2_grpc, grpc_service_pb2, grpc_service_pb2_grpc
from server import oip_codec
from server.core import ClassifyResult, DataPlane, InferInput, InferResponse, RequestedOutput
from server.errors import ErrorKind, ServingError, grpc_code_number, grpc_status

log = logging.getLogger(__name__)

CLASSIFY_SERVICE = classify_pb2.DESCRIPTOR.services_by_name["Classify"].full_name
INFERENCE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
_STREAM_END = object()


async def _abort(context: grpc.aio.ServicerContext, err: ServingError) -> None:
    if err.retry_after_s is not None:
        context.set_trailing_metadata((("grpc-retry-pushback-ms", str(math.ceil(err.retry_after_s * 1000))),))
    try:
        await context.abort(grpc_status(err), err.message)
    except grpc.aio.InternalError:
        # The call ended (its deadline passed or the client cancelled) in the instant between the
        # error and its status being sent: the client already has its status and nothing is lost. Left
        # to grpc this is a logged ExecuteBatchError traceback; returning ends the call quietly.
        log.debug("call ended before its status (%s) could be sent", grpc_status(err).name)


Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def rpc(model_field: str | None = None) -> Callable[[Handler], Handler]:
    """The one error path of every unary RPC: a ServingError ends the call with its status (and the
    queue's ``grpc-retry-pushback-ms``). With ``model_field``, an inference RPC's refusal that the core
    did not see (a missing token, a malformed tensor) is counted in the request metrics for the model
    named by that field of the request."""

    def wrap(method: Handler) -> Handler:
        @functools.wraps(method)
        async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.monotonic()
            try:
                return await method(self, request, context)
            except ServingError as err:
                if model_field is not None:
                    self.core.observe_error(getattr(request, model_field), "grpc", err, started)
                await _abort(context, err)

        return handler

    return wrap


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    """The token of the call's ``authorization: Bearer <token>`` metadata, None when there is none."""
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, credentials = value.partition(" ")
            if scheme.lower() == "bearer":
                return credentials.strip()
    return None


def parameter_values(parameters: Any) -> dict[str, Any]:
    """An OIP ``map<string, InferParameter>`` as plain Python values (what the core reads)."""
    out = {}
    for key, param in parameters.items():
        kind = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, kind) if kind else None
    return out


# -- ddrnet.v1.Classify -------------------------------------------------------------------------------


class ClassifyServicer(classify_pb2_grpc.ClassifyServicer):
    def __init__(self, core: DataPlane) -> None:
        self.core = core

    async def _classify(
        self, request: classify_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> classify_pb2.ClassifyResponse:
        result = await self.core.classify(
            list(request.images),
            model=request.model_name,
            version=request.model_version or None,
            label=request.version_label or None,
            top_k=request.top_k if request.HasField("top_k") else None,
            timeout_s=context.time_remaining(),
            protocol="grpc",
        )
        return _classify_proto(result, request.id)

    @rpc(model_field="model_name")
    async def Classify(
        self, request: classify_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> classify_pb2.ClassifyResponse:
        self.core.authorize(bearer_token(context))
        return await self._classify(request, context)

    async def ClassifyStream(
        self, request_iterator: AsyncIterator[classify_pb2.ClassifyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[classify_pb2.ClassifyResponse]:
        try:
            self.core.authorize(bearer_token(context))
        except ServingError as err:
            await _abort(context, err)
        # Bounded per stream: a request holds its slot until its response is queued for the client, and
        # the queue is no longer than the slots. A client that stops reading its responses stops having
        # its requests read (HTTP/2 flow control pushes back), instead of growing a queue on the server.
        limit = max(1, self.core.settings.max_queue_size)
        slots = asyncio.Semaphore(limit)
        responses: asyncio.Queue = asyncio.Queue(maxsize=limit + 1)  # + the end marker
        tasks: set[asyncio.Task] = set()

        async def handle(request: classify_pb2.ClassifyRequest) -> None:
            try:
                try:
                    response = await self._classify(request, context)
                except ServingError as err:
                    response = classify_pb2.ClassifyResponse(
                        model_name=request.model_name,
                        id=request.id,
                        error=classify_pb2.Status(code=grpc_code_number(err), message=err.message),
                    )
                await responses.put(response)
            finally:
                slots.release()

        async def read_all() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    task = asyncio.get_running_loop().create_task(handle(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.wait(set(tasks))
            finally:
                await responses.put(_STREAM_END)

        reader = asyncio.get_running_loop().create_task(read_all())
        try:
            while (response := await responses.get()) is not _STREAM_END:
                yield response
            await reader  # re-raises a broken request stream
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()


def _classify_proto(result: ClassifyResult, request_id: str) -> classify_pb2.ClassifyResponse:
    return classify_pb2.ClassifyResponse(
        model_name=result.model,
        model_version=result.version,
        id=request_id,
        results=[
            classify_pb2.ImageResult(
                predictions=[
                    classify_pb2.Prediction(label=p.label, index=p.index, score=p.score) for p in preds
                ]
            )
            for preds in result.results
        ],
    )


# -- inference.GRPCInferenceService (OIP v2) ----------------------------------------------------------


def _repository_parameters(parameters: Any) -> dict[str, Any]:
    """A repository request's ``map<string, ModelRepositoryParameter>`` as plain values."""
    return {key: getattr(value, value.WhichOneof("parameter_choice") or "bool_param")
            for key, value in parameters.items()}


class InferenceServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: DataPlane) -> None:
        self.core = core

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return grpc_service_pb2.ServerLiveResponse(live=self.core.live())

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return grpc_service_pb2.ServerReadyResponse(ready=self.core.ready())

    @rpc()
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ready = self.core.model_ready(request.name, request.version or None)
        return grpc_service_pb2.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = self.core.server_metadata()
        return grpc_service_pb2.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    @rpc()
    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.core.authorize(bearer_token(context))
        entry = grpc_service_pb2.RepositoryIndexResponse.ModelIndex
        return grpc_service_pb2.RepositoryIndexResponse(
            models=[entry(**m) for m in self.core.repository_index(request.ready)]
        )

    @rpc()
    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.core.authorize(bearer_token(context))
        await self.core.load_model(request.model_name, _repository_parameters(request.parameters))
        return grpc_service_pb2.RepositoryModelLoadResponse()

    @rpc()
    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.core.authorize(bearer_token(context))
        await self.core.unload_model(request.model_name, _repository_parameters(request.parameters))
        return grpc_service_pb2.RepositoryModelUnloadResponse()

    @rpc()
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = self.core.model_metadata(request.name, request.version or None)
        tensor = grpc_service_pb2.ModelMetadataResponse.TensorMetadata
        return grpc_service_pb2.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs],
        )

    @rpc(model_field="model_name")
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.core.authorize(bearer_token(context))
        limit = self.core.settings.max_images_per_request
        inputs = await self.core.decode(_decode_inputs, request, limit)
        response = await self.core.infer(
            model=request.model_name,
            version=request.model_version or None,
            inputs=inputs,
            outputs=[RequestedOutput(o.name, parameter_values(o.parameters)) for o in request.outputs],
            parameters=parameter_values(request.parameters),
            request_id=request.id,
            timeout_s=context.time_remaining(),
            protocol="grpc",
        )
        return _infer_proto(response)


def _decode_inputs(request: Any, max_images: int) -> list[InferInput]:
    """The request's tensors, each admitted (declared images within ``max_images``) before any of its
    elements is decoded; runs in the core's decode pool."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ServingError(
            ErrorKind.INVALID_ARGUMENT,
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: give one per input, in order",
        )
    out = []
    for index, tensor in enumerate(request.inputs):
        datatype = oip_codec.check_datatype(tensor.name, tensor.datatype)
        shape = oip_codec.check_shape(tensor.name, list(tensor.shape))
        oip_codec.admit(tensor.name, datatype, shape, max_images)
        if raw:
            data = oip_codec.decode_raw(tensor.name, datatype, shape, raw[index])
        else:
            data = oip_codec.decode_contents(tensor.name, datatype, shape, tensor.contents)
        out.append(InferInput(tensor.name, datatype, shape, data))
    return out


def _infer_proto(response: InferResponse) -> Any:
    tensor = grpc_service_pb2.ModelInferResponse.InferOutputTensor
    return grpc_service_pb2.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
        outputs=[tensor(name=o.name, datatype=o.datatype, shape=o.shape) for o in response.outputs],
        raw_output_contents=[
            o.data.astype(oip_codec.NUMPY_DTYPES[o.datatype], copy=False).tobytes() for o in response.outputs
        ],
    )


# -- health ---------------------------------------------------------------------------------------------


class HealthReporter:
    """Keeps ``grpc.health.v1.Health`` statuses in step with the core's readiness."""

    def __init__(self, core: DataPlane) -> None:
        self.core = core
        self.servicer = health_aio.HealthServicer()

    async def sync(self) -> None:
        ready = self.core.ready()
        status = health_pb2.HealthCheckResponse
        overall = status.SERVING if ready else status.NOT_SERVING
        for service in ("", CLASSIFY_SERVICE, INFERENCE_SERVICE):
            await self.servicer.set(service, overall)
        for model in self.core.models():
            await self.servicer.set(model.name, status.SERVING if model.ready else status.NOT_SERVING)

    async def shutdown(self) -> None:
        await self.servicer.enter_graceful_shutdown()


# -- malformed request messages ------------------------------------------------------------------------


class _Malformed:
    """A request message that did not parse; the handler answers it with INVALID_ARGUMENT."""

    def __init__(self, message: str) -> None:
        self.message = message


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        # grpc would answer UNKNOWN "Unexpected <class ...DecodeError>". protobuf's pure-Python
        # implementation raises UnicodeDecodeError for a string field with bad UTF-8 where upb raises
        # DecodeError; importing MindSpore sets PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python for its
        # process and every child, so a server started from such a process gets that implementation.
        except (DecodeError, UnicodeDecodeError) as exc:
            return _Malformed(f"cannot parse the request message: {exc}")

    return deserialize


class MalformedRequestGuard(grpc.aio.ServerInterceptor):
    """Answers a request message that is not valid protobuf with INVALID_ARGUMENT, on every method.

    grpc runs the request deserializer before any handler and answers its exception with UNKNOWN and
    the exception's class; this interceptor swaps in a deserializer that keeps the parse error, and
    wraps the handler so that a malformed message (a unary request, or any message of a request
    stream) ends the call with INVALID_ARGUMENT and the parser's message.
    """

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = _lenient(handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, parse, serialize)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                async for response in inner_us(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream, parse, serialize)

        async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            async for request in requests:
                if isinstance(request, _Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                yield request

        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                return await inner_su(checked(requests, context), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, parse, serialize)
        inner_ss = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            async for response in inner_ss(checked(requests, context), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream, parse, serialize)


# -- the server -----------------------------------------------------------------------------------------


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def create_server(core: DataPlane, health: HealthReporter) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with every service added and bound (not started); returns it and its port."""
    settings = core.settings
    limit = settings.max_request_bytes
    server = grpc.aio.server(
        # The tracing interceptor first: its server span covers the guard's refusals too.
        interceptors=[*([core.tracing.grpc_interceptor()] if core.tracing is not None else []),
                      MalformedRequestGuard()],
        # Calls beyond this are refused with RESOURCE_EXHAUSTED before a handler runs: the memory of the
        # calls in progress (each up to max_request_bytes) stays bounded whatever clients send.
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a silently shared port
        ],
    )
    classify_pb2_grpc.add_ClassifyServicer_to_server(ClassifyServicer(core), server)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    reflection.enable_server_reflection(
        (
            CLASSIFY_SERVICE,
            INFERENCE_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = _address(settings.grpc_host, settings.grpc_port)
    if settings.tls_cert is not None and settings.tls_key is not None:
        credentials = grpc.ssl_server_credentials(
            [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if not port:
        raise OSError(f"cannot bind gRPC to {address}")
    return server, port
