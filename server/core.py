"""The protocol-free service core (MLServer's ``DataPlane``): the HTTP and gRPC front ends only
convert their wire formats into calls here and the results back.

Owns: health (live / ready / model ready, each served model's status), server and model metadata,
the bearer-token check (:meth:`DataPlane.authorize`), ``classify`` (encoded images → top-k
predictions) and ``infer`` (Open Inference Protocol v2: one input, either ``images``, BYTES ``[N]``
of encoded images, or the model's FP32 ``[N, 3, S, S]`` tensor, already preprocessed → logits; the
request's ``parameters`` — ``timeout`` in microseconds — and its requested outputs, refusing the
classification extension), request deadlines, the shutdown switch, and the request metrics
(``requests_total``, ``request_duration_seconds``, ``inflight_requests``,
``preprocess_duration_seconds``, ``rejected_total``). Everything it raises is a
:class:`~server.errors.ServingError`, marked ``counted`` once the request is in the metrics, so a front
end counts only what it refused before the core saw it (:meth:`DataPlane.observe_error`).

The order inside a request keeps overload cheap: the model's queue is asked for room
(:meth:`~server.batcher.Batcher.reserve`) *before* any image is decoded, so a full queue refuses a
request at once; the images are then preprocessed with the transform of the version that will run
them (the reservation's), queued, batched and answered with that version's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import Any, TypeVar

import numpy as np

from server.errors import ErrorKind, ServingError, from_exception
from server.metrics import UNKNOWN_MODEL, ServerMetrics, code_label
from server.model_manager import IMAGES_INPUT, ModelManager
from server.offload import Offloader
from server.postprocess import Prediction, check_top_k, top_k
from server.preprocessing import Preprocessor
from server.served import Lane, ServedVersion
from server.settings import ServerSettings
from server.tracing import Tracing

log = logging.getLogger(__name__)

SERVER_NAME = "ddrnet-serve"
EXTENSIONS = (
    "binary_tensor_data", "health", "metadata", "model_repository", "model_repository(unload_dependents)",
)
LABEL_PARAMETER = "version_label"  # OIP request parameter naming a version label
CANCELLED_CODES = {"http": "499", "grpc": "CANCELLED"}  # client went away (nginx's 499)

T = TypeVar("T")


def server_version() -> str:
    try:
        return importlib_metadata.version("ddrnet-serve")
    except importlib_metadata.PackageNotFoundError:
        return "0.0.0"


# -- results ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifyResult:
    """Top-k predictions per request image (request order) and the model version that made them."""

    model: str
    version: str
    results: list[list[Prediction]]


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    labels: list[str] = field(default_factory=list)


@dataclass
class InferInput:
    """One decoded OIP input tensor: ``data`` is a numpy array (numeric types, already in ``shape``)
    or a list of bytes (BYTES, flattened)."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]


@dataclass(frozen=True)
class RequestedOutput:
    """An output a client asked for by name, with its OIP ``parameters`` (as plain values)."""

    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelStatus:
    """A served model: the version new requests go to, and whether it takes requests now; the runtime,
    device and precision it runs at."""

    name: str
    version: str
    ready: bool
    runtime: str = ""
    device: str = ""
    precision: str = "fp32"
    settings: dict[str, Any] = field(default_factory=dict)  # what the model's config.yaml sets
    versions: list[str] = field(default_factory=list)  # every served version, newest first
    version_labels: dict[str, str] = field(default_factory=dict)  # label -> version
    traffic_split: dict[str, float] = field(default_factory=dict)  # label -> weight (unpinned requests)


@dataclass
class InferOutput:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[InferOutput]

    @property
    def version(self) -> str:
        return self.model_version


@dataclass
class _Call:
    """Bookkeeping of one request for its metrics (the version, once the queue assigned one)."""

    version: str = ""


# -- the data plane -----------------------------------------------------------------------------------


class DataPlane:
    """One service core for both protocols; see the module docstring."""

    def __init__(
        self,
        settings: ServerSettings,
        manager: ModelManager,
        preprocessor: Preprocessor,
        metrics: ServerMetrics,
        offloader: Offloader | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.tracing = tracing
        self.manager = manager
        self.preprocessor = preprocessor
        self.metrics = metrics
        self.offloader = offloader or Offloader(max(1, min(4, settings.preprocess_workers or 1)))
        metrics.ready.set_function(lambda: 1.0 if self.ready() else 0.0)  # read at each scrape
        self.draining = False
        self.version = server_version()

    # -- health and metadata -----------------------------------------------------------------------

    def live(self) -> bool:
        """The process answers, and no served instance has been without a working worker for longer
        than ``max_worker_down_s`` (its restarts keep failing: a broken venv, no memory, a lost
        device). Failing liveness makes Kubernetes restart the pod, which a process alone cannot do."""
        bound = self.settings.max_worker_down_s
        if bound <= 0:
            return True
        down, name = self.manager.longest_down()
        if down > bound:
            log.error("liveness failing: instance %s has had no working worker for %.0f s (bound %.0f s)",
                      name, down, bound)
            return False
        return True

    def authorize(self, token: str | None) -> None:
        """The bearer-token check of the inference calls: UNAUTHENTICATED unless ``token`` (what the
        client sent, None when nothing) equals the server's ``auth_token``; nothing to check without one.
        Compared in constant time."""
        expected = self.settings.auth_token
        if expected is None:
            return
        if not hmac.compare_digest((token or "").encode(), expected.encode()):
            raise ServingError(ErrorKind.UNAUTHENTICATED, "missing or wrong bearer token (Bearer <token>)")

    def models(self) -> list[ModelStatus]:
        """Every served model's status (readiness is false for all while draining)."""
        return [
            ModelStatus(name, served.current.version, served.ready and not self.draining,
                        served.current.runtime, served.current.device, served.current.precision,
                        dict(served.current.overrides), served.served_versions,
                        {k: str(v) for k, v in served.policy.labels.items()},
                        dict(served.policy.traffic))
            for name, served in list(self.manager.models.items()) if served.lanes
        ]

    def ready(self) -> bool:
        """Models loaded and warmed, every served model has a ready instance, not shutting down."""
        return not self.draining and self.manager.ready

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether ``name`` (at ``version``, when given) can take requests: False for a model of the
        repository that is not loaded (unloaded, or waiting for an explicit load), NOT_FOUND when unknown."""
        try:
            served = self.manager.get(name, version)
        except ServingError as err:
            if err.kind is ErrorKind.NOT_FOUND and version is None and self.manager.in_repository(name):
                return False
            raise
        return not self.draining and served.ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": self.version, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        served = self.manager.get(name, version)
        cur = served.current
        return ModelMetadata(
            name=name,
            versions=self.manager.models[name].served_versions,
            platform=cur.runtime,
            inputs=[
                TensorMetadata(cur.input_name, "FP32", [-1, *cur.item_shape]),
                TensorMetadata(IMAGES_INPUT, "BYTES", [-1]),
            ],
            outputs=[TensorMetadata(cur.output_name, "FP32", [-1, cur.num_classes])],
            labels=list(cur.labels),
        )

    async def decode(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a front end's request decoding (``fn(*args)``) off the event loop, in the bounded
        decode pool (``server.offload``)."""
        return await self.offloader.run(fn, *args)

    def close(self) -> None:
        """Stop the decode pool (the model manager and the preprocessor are closed by their owners)."""
        self.offloader.close()

    def begin_shutdown(self) -> None:
        """Stop accepting: readiness turns false, new requests get UNAVAILABLE."""
        self.draining = True

    def precheck(self, model: str, version: str | None = None, label: str | None = None) -> None:
        """Refuse early what would be refused anyway (unknown model, version or label, not ready,
        shutting down, queue full), so a front end need not read a large request body first."""
        served = self._admit(model, version, label)
        served.batcher.reserve(1).release()  # QUEUE_FULL / UNAVAILABLE (and counted) when refused

    # -- repository control (server.repository_control) -----------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository extension's index: name, version, state, reason per model."""
        return self.manager.index(ready_only)

    async def load_model(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Load (or reload) ``name``; refused unless ``--model-control explicit``."""
        self._check_control("load", parameters, ())
        await self.manager.load_model(name)

    async def unload_model(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Unload ``name`` after finishing what it accepted; refused unless ``--model-control explicit``.
        ``unload_dependents`` is accepted (there are no ensembles to unload with it)."""
        self._check_control("unload", parameters, ("unload_dependents",))
        await self.manager.unload_model(name)

    def _check_control(
        self, what: str, parameters: Mapping[str, Any] | None, allowed: tuple[str, ...]
    ) -> None:
        if self.draining:
            raise ServingError(ErrorKind.UNAVAILABLE, "server is shutting down", reason="shutting_down")
        mode = self.settings.model_control
        if mode != "explicit":
            raise ServingError(ErrorKind.INVALID_ARGUMENT, f"explicit model {what} is not allowed with "
                               f"--model-control {mode}: start the server with --model-control explicit")
        unknown = sorted(set(parameters or {}) - set(allowed))
        if unknown:
            raise ServingError(ErrorKind.INVALID_ARGUMENT, f"{what} parameters {unknown} are not supported: "
                               "a model's files and settings come from its repository directory")

    # -- deadlines ---------------------------------------------------------------------------------

    def deadline(self, client_timeout_s: float | None = None, model: str | None = None) -> float:
        """``time.monotonic()`` deadline: the request timeout (the model's own when its config.yaml sets
        one, else the server's), or the client's when shorter."""
        settings = self.manager.settings_for(model) if model is not None else self.settings
        timeout = settings.request_timeout_ms / 1000.0
        if client_timeout_s is not None and math.isfinite(client_timeout_s):
            timeout = min(timeout, max(0.0, client_timeout_s))
        return time.monotonic() + timeout

    # -- classify ----------------------------------------------------------------------------------

    async def classify(
        self,
        images: Sequence[bytes],
        *,
        model: str,
        version: str | None = None,
        top_k: int | None = None,
        timeout_s: float | None = None,
        protocol: str,
        label: str | None = None,
    ) -> ClassifyResult:
        """Top-k predictions for encoded ``images`` with model ``model`` (at ``version`` or version
        ``label``, if given; else as its traffic split or newest version)."""
        return await self._accounted(
            model, protocol,
            lambda call: self._classify(call, images, model, version, label, top_k, timeout_s),
        )

    async def _classify(
        self,
        call: _Call,
        images: Sequence[bytes],
        model: str,
        version: str | None,
        label: str | None,
        k: int | None,
        timeout_s: float | None,
    ) -> ClassifyResult:
        served = self._admit(model, version, label)
        self._check_count(len(images))
        check_top_k(k, served.current.num_classes)
        deadline = self.deadline(timeout_s, model)
        with served.batcher.reserve(len(images), deadline=deadline) as reservation:
            call.version = reservation.version
            self._annotate(model, reservation.version, len(images))
            info = served.version(reservation.version)
            arrays = await self._preprocess(info, images, deadline)
            result = await reservation.infer(list(arrays))
        logits = np.stack(result.outputs)
        if not np.isfinite(logits).all():  # scores would be NaN: a model fault, answered as one
            raise ServingError(
                ErrorKind.INTERNAL,
                f"model {model!r} version {result.version} returned NaN or infinite logits",
                reason="non_finite_output",
            )
        predictions = top_k(logits, check_top_k(k, info.num_classes), info.labels)
        return ClassifyResult(model=model, version=result.version, results=predictions)

    # -- infer (Open Inference Protocol v2) ----------------------------------------------------------

    async def infer(
        self,
        *,
        model: str,
        version: str | None,
        inputs: Sequence[InferInput],
        outputs: Sequence[RequestedOutput | str] | None = None,
        parameters: Mapping[str, Any] | None = None,
        request_id: str = "",
        timeout_s: float | None = None,
        protocol: str,
    ) -> InferResponse:
        """Logits for one OIP v2 request (see the module docstring for the accepted inputs). The
        request's ``parameters.timeout`` (microseconds) shortens ``timeout_s`` (the transport's);
        ``outputs`` are the requested outputs (a plain name means no parameters)."""
        return await self._accounted(
            model, protocol,
            lambda call: self._infer(call, model, version, inputs, outputs or (), parameters or {},
                                     request_id, timeout_s),
        )

    async def _infer(
        self,
        call: _Call,
        model: str,
        version: str | None,
        inputs: Sequence[InferInput],
        outputs: Sequence[RequestedOutput | str],
        parameters: Mapping[str, Any],
        request_id: str,
        timeout_s: float | None,
    ) -> InferResponse:
        outputs = [RequestedOutput(o) if isinstance(o, str) else o for o in outputs]
        oip_timeout = _oip_timeout(parameters)
        if oip_timeout is not None:
            timeout_s = oip_timeout if timeout_s is None else min(timeout_s, oip_timeout)
        served = self._admit(model, version, _oip_label(parameters))
        cur = served.current
        tensor_hint = f"'{cur.input_name}' (FP32 {[-1, *cur.item_shape]})"
        accepted = f"{tensor_hint} or '{IMAGES_INPUT}' (BYTES [-1] of encoded images)"
        if len(inputs) != 1:
            raise _invalid(f"model {model!r} takes exactly one input, {accepted}; got {len(inputs)}")
        inp = inputs[0]
        for out in outputs:
            if "classification" in out.parameters:
                raise _invalid(
                    f"output {out.name!r}: the classification extension is not supported; use "
                    "/v1/models/{model}/classify or ddrnet.v1.Classify for top-k labels"
                )
            if out.name != cur.output_name:
                raise _invalid(f"model {model!r} has no output {out.name!r} (outputs: '{cur.output_name}')")
        if inp.name == IMAGES_INPUT:
            images = _bytes_input(inp)
            count = len(images)
        elif inp.name == cur.input_name:
            tensor = _tensor_input(inp, cur)
            count = int(tensor.shape[0])
        else:
            raise _invalid(f"model {model!r} has no input {inp.name!r}; send {accepted}")
        self._check_count(count)
        deadline = self.deadline(timeout_s, model)
        with served.batcher.reserve(count, deadline=deadline) as reservation:
            call.version = reservation.version
            self._annotate(model, reservation.version, count)
            info = served.version(reservation.version)
            if inp.name == IMAGES_INPUT:
                arrays = await self._preprocess(info, images, deadline)
            else:
                if tuple(tensor.shape[1:]) != info.item_shape:  # a hot swap changed the input size
                    raise _invalid(
                        f"input {inp.name!r} has shape {list(tensor.shape)}; model {model!r} version "
                        f"{info.version} takes {[-1, *info.item_shape]}"
                    )
                arrays = tensor
            result = await reservation.infer(list(arrays))
        logits = np.ascontiguousarray(np.stack(result.outputs), dtype=np.float32)
        output = InferOutput(info.output_name, "FP32", list(logits.shape), logits)
        return InferResponse(model, result.version, request_id, [output])

    # -- shared steps --------------------------------------------------------------------------------

    def _admit(self, model: str, version: str | None, label: str | None = None) -> Lane:
        if self.draining:
            self._reject(model, "shutting_down")
            raise ServingError(ErrorKind.UNAVAILABLE, "server is shutting down", reason="shutting_down")
        if not self.manager.started:
            self._reject(model, "not_ready")
            raise ServingError(
                ErrorKind.UNAVAILABLE, "server is starting: models are being loaded", reason="not_ready"
            )
        return self.manager.get(model, version, label)

    def _check_count(self, count: int) -> None:
        if count < 1:
            raise _invalid("request has no images")
        limit = self.settings.max_images_per_request
        if count > limit:
            raise ServingError(
                ErrorKind.PAYLOAD_TOO_LARGE,
                f"request has {count} images; at most {limit} per request",
                reason="too_many_images",
            )

    def _annotate(self, model: str, version: str, count: int) -> None:
        if self.tracing is not None:
            self.tracing.annotate({"ddrnet.model": model, "ddrnet.version": version, "ddrnet.images": count})

    async def _preprocess(self, info: ServedVersion, images: Sequence[bytes], deadline: float) -> np.ndarray:
        started = time.monotonic()
        span = (contextlib.nullcontext() if self.tracing is None
                else self.tracing.span("preprocess", {"ddrnet.images": len(images)}))
        with span:
            arrays = await self.preprocessor.run(info.transform, images, deadline)
        self.metrics.preprocess_duration.labels(info.model, info.version).observe(time.monotonic() - started)
        return arrays

    def _reject(self, model: str, reason: str) -> None:
        label = model if self.manager.has(model) else UNKNOWN_MODEL
        self.metrics.rejected_total.labels(label, reason).inc()

    async def _accounted(self, model: str, protocol: str, work: Callable[[_Call], Awaitable[T]]) -> T:
        """Run ``work`` counting the request: in-flight gauge, duration, final code; every exception
        leaves as a ServingError (unexpected ones are logged with their traceback, server-side only)."""
        started = time.monotonic()
        label = model if self.manager.has(model) else UNKNOWN_MODEL
        call = _Call()
        code = code_label(protocol, None)
        gauge = self.metrics.inflight_requests.labels(label, protocol)
        gauge.inc()
        try:
            return await work(call)
        except ServingError as err:
            code = code_label(protocol, err)
            err.counted = True
            raise
        except asyncio.CancelledError:
            code = CANCELLED_CODES.get(protocol, "cancelled")
            raise
        except Exception as exc:
            log.exception("request to model %s failed unexpectedly", model)
            err = from_exception(exc)
            code = code_label(protocol, err)
            err.counted = True
            raise err from None
        finally:
            gauge.dec()
            self.metrics.observe_request(label, call.version, protocol, code, time.monotonic() - started)

    def observe_error(self, model: str, protocol: str, err: ServingError, started: float) -> None:
        """Count a request a front end refused before it reached the core (bad body, auth ...); a no-op
        for an error already counted."""
        if err.counted:
            return
        err.counted = True
        label = model if self.manager.has(model) else UNKNOWN_MODEL
        elapsed = time.monotonic() - started
        self.metrics.observe_request(label, "", protocol, code_label(protocol, err), elapsed)


# -- input checks -------------------------------------------------------------------------------------


def _invalid(message: str) -> ServingError:
    return ServingError(ErrorKind.INVALID_ARGUMENT, message)


def _oip_label(parameters: Mapping[str, Any]) -> str | None:
    """The request's ``version_label`` parameter (the version label to run, ``server.versions``)."""
    label = parameters.get(LABEL_PARAMETER)
    if label is None:
        return None
    if not isinstance(label, str) or not label:
        raise _invalid(f"parameter '{LABEL_PARAMETER}' must be a non-empty string (a version label)")
    return label


def _oip_timeout(parameters: Mapping[str, Any]) -> float | None:
    """OIP's request parameter ``timeout`` (microseconds) in seconds, None when absent."""
    value = parameters.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise _invalid(f"parameters.timeout must be a positive number of microseconds, got {value!r}")
    return float(value) / 1e6


def _bytes_input(inp: InferInput) -> list[bytes]:
    if inp.datatype != "BYTES":
        raise _invalid(f"input {inp.name!r} must have datatype BYTES (encoded images), got {inp.datatype}")
    shape = list(inp.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 0:
        raise _invalid(f"input {inp.name!r} must have shape [N] or [N, 1], got {shape}")
    data = inp.data
    if isinstance(data, np.ndarray):
        data = [bytes(x) for x in data.reshape(-1)]
    if len(data) != shape[0]:
        raise _invalid(f"input {inp.name!r} has shape {shape} but holds {len(data)} elements")
    return [bytes(x) for x in data]


def _tensor_input(inp: InferInput, cur: ServedVersion) -> np.ndarray:
    expected = [-1, *cur.item_shape]
    if inp.datatype != "FP32":
        raise _invalid(f"input {inp.name!r} must have datatype FP32, got {inp.datatype}")
    shape = list(inp.shape)
    if len(shape) != len(expected) or shape[0] < 1 or shape[1:] != expected[1:]:
        raise _invalid(f"input {inp.name!r} must have shape {expected}, got {shape}")
    if not isinstance(inp.data, np.ndarray):
        raise _invalid(f"input {inp.name!r} holds no FP32 data")
    tensor = inp.data
    if list(tensor.shape) != shape:
        raise _invalid(f"input {inp.name!r} declares shape {shape} but holds {tensor.size} values")
    if not np.isfinite(tensor).all():
        raise _invalid(f"input {inp.name!r} contains NaN or infinite values")
    return np.asarray(tensor, dtype=np.float32)
