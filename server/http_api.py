"""The HTTP front end (FastAPI): converts requests into :class:`~server.core.DataPlane` calls and back.

Routes (OpenAPI docs at ``/docs``, schema at ``/openapi.json``):

- ``POST /v1/models/{model}/classify`` and ``/v1/models/{model}/versions/{version}/classify``: images
  as the raw body (``Content-Type: image/*`` or ``application/octet-stream``), as multipart file parts
  (one or many; any field name; an optional ``top_k`` form field), or as JSON
  ``{"images": ["<base64>", ...], "top_k": 5}``; ``?top_k=`` works for every form (a body value wins).
  Answer: ``{"model_name", "model_version", "results": [{"predictions": [{"label", "index",
  "score"}, ...]}, ...]}``, one result per image in request order, best prediction first.
- ``GET /v1/models``: the served models, their versions and readiness.
- Open Inference Protocol v2: ``GET /v2/health/live``, ``/v2/health/ready`` (503 until every model is
  loaded and warmed, and while draining), ``/v2``, ``/v2/models/{m}[/versions/{v}]``,
  ``/v2/models/{m}[/versions/{v}]/ready``; ``POST /v2/models/{m}[/versions/{v}]/infer`` with JSON
  tensors or the binary tensor data extension (``Inference-Header-Content-Length``; what
  ``tritonclient.http`` sends by default), gzip/deflate request bodies, and binary or JSON outputs.
- ``GET /metrics``: Prometheus text format.

Errors are ``{"error": "<message naming the problem>"}`` with the status of ARCHITECTURE.md's table
(``server.errors``): 400 malformed body or bad value, 401 missing/wrong bearer token, 404 unknown model
or version, 413 body/image/request too large, 415 unsupported content type or image format, 422 a
well-formed JSON body that does not follow the schema (also bad query parameters), 503 queue full
(with ``Retry-After``) / not ready / shutting down, 504 deadline passed in the queue, 500 a runtime
failure of that batch only. Never a traceback.

Bearer token (``auth_token``): required on the classify and infer routes only; health, metadata,
``/metrics`` and the docs stay open. ``X-Request-Timeout-Ms`` (and OIP's ``parameters.timeout`` in
microseconds) shorten the server's request timeout. A client that disconnects cancels its request,
which leaves the queue and never reaches the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from server import oip_codec
from server.core import ClassifyResult, DataPlane, InferInput, InferResponse
from server.errors import ErrorKind, ServingError, from_exception, http_body, http_headers, http_status
from server.postprocess import DEFAULT_TOP_K, MAX_TOP_K

log = logging.getLogger(__name__)

TIMEOUT_HEADER = "X-Request-Timeout-Ms"
BINARY_HEADER = "Inference-Header-Content-Length"
OFF_LOOP_BYTES = 256 * 1024  # bodies above this are parsed in a thread
CLIENT_CLOSED = 499  # nginx's status for "client closed the request" (nobody reads it)

T = TypeVar("T")

# The range is documented in the schema but checked by server.postprocess.check_top_k, so that a bad
# top_k is the same 400 with the same message in every body form and over gRPC.
TOP_K_TEXT = (f"predictions per image, 1 to {MAX_TOP_K} (or the model's class count when larger); "
              f"default {DEFAULT_TOP_K}")


# -- schemas (validation + OpenAPI) ---------------------------------------------------------------------


class ClassifyJSON(BaseModel):
    """JSON body of the classify route."""

    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(description="base64-encoded images (JPEG, PNG, ...); data: URLs allowed")
    top_k: StrictInt | None = Field(None, description=TOP_K_TEXT, json_schema_extra={"minimum": 1})


class PredictionModel(BaseModel):
    label: str
    index: int
    score: float


class ImageResultModel(BaseModel):
    predictions: list[PredictionModel]


class ClassifyResponseModel(BaseModel):
    model_name: str
    model_version: str
    results: list[ImageResultModel]


class ErrorModel(BaseModel):
    error: str


class InferInputModel(BaseModel):
    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestedOutputModel(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequestModel(BaseModel):
    """OIP v2 inference request (JSON part)."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInputModel]
    outputs: list[RequestedOutputModel] | None = None


class TensorMetadataModel(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadataModel(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadataModel]
    outputs: list[TensorMetadataModel]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorModel, "description": text}
    for code, text in (
        (400, "malformed request, bad image or value"),
        (401, "missing or wrong bearer token"),
        (404, "unknown model or version"),
        (413, "body, image or image count over the limit"),
        (415, "unsupported content type, encoding or image format"),
        (422, "JSON body or parameter does not follow the schema"),
        (500, "the model failed on the batch holding this request"),
        (503, "queue full (Retry-After), not ready, or shutting down"),
        (504, "the request's deadline passed while it waited"),
    )
}

CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "description": "one image as the raw body, image files as multipart parts, or JSON base64",
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "top_k": {"type": "integer", "minimum": 1, "description": TOP_K_TEXT},
                    },
                }
            },
            "application/json": {"schema": ClassifyJSON.model_json_schema()},
        },
    }
}

INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": (
            "OIP v2 inference request. With the binary tensor data extension the body is the JSON "
            f"header ({BINARY_HEADER} bytes) followed by the inputs' raw data."
        ),
        "content": {
            "application/json": {"schema": InferRequestModel.model_json_schema()},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


# -- the application -----------------------------------------------------------------------------------


def create_app(core: DataPlane) -> FastAPI:
    """The FastAPI application serving ``core``."""
    settings = core.settings
    app = FastAPI(
        title="ddrnet-serve",
        version=core.version,
        description="DDRNet image classification: classify endpoint, Open Inference Protocol v2, metrics.",
    )
    app.state.core = core
    _install_error_handlers(app)
    auth = [Depends(_authorize)]

    # -- classify ----------------------------------------------------------------------------------

    async def classify(request: Request, model: str, version: str | None, top_k: int | None) -> Response:
        started = time.monotonic()
        try:
            core.precheck(model, version)  # before reading a body that would be refused anyway
            images, body_top_k = await _classify_inputs(request, settings)
            timeout_s = _header_timeout(request)
        except ServingError as err:
            core.observe_error(model, "http", err, started)
            raise
        k = body_top_k if body_top_k is not None else top_k
        result = await _until_disconnect(
            request,
            core.classify(
                images, model=model, version=version, top_k=k, timeout_s=timeout_s, protocol="http"
            ),
        )
        if result is None:
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse(_classify_json(result))

    classify_doc = {
        "response_model": ClassifyResponseModel,
        "responses": ERROR_RESPONSES,
        "openapi_extra": CLASSIFY_BODY,
        "dependencies": auth,
        "tags": ["classify"],
    }
    top_k_query = Query(None, description=TOP_K_TEXT, json_schema_extra={"minimum": 1})

    @app.post("/v1/models/{model}/classify", summary="Classify images (newest version)", **classify_doc)
    async def classify_newest(request: Request, model: str, top_k: int | None = top_k_query) -> Response:
        return await classify(request, model, None, top_k)

    @app.post("/v1/models/{model}/versions/{version}/classify", summary="Classify images (one version)",
              **classify_doc)
    async def classify_version(
        request: Request, model: str, version: str, top_k: int | None = top_k_query
    ) -> Response:
        return await classify(request, model, version, top_k)

    @app.get("/v1/models", summary="Served models", tags=["classify"])
    async def list_models() -> dict[str, Any]:
        return {
            "models": [
                {"name": name, "version": served.current.version, "ready": served.ready and not core.draining}
                for name, served in core.manager.models.items()
            ]
        }

    # -- Open Inference Protocol v2: health and metadata -------------------------------------------

    @app.get("/v2/health/live", tags=["v2"], summary="Liveness")
    async def live() -> JSONResponse:
        return JSONResponse({"live": core.live()})

    @app.get("/v2/health/ready", tags=["v2"], summary="Readiness (503 until models are loaded and warmed)",
             responses={503: {"description": "not ready"}})
    async def ready() -> JSONResponse:
        ok = core.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2", tags=["v2"], summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return core.server_metadata()

    @app.get("/v2/models/{model}", tags=["v2"], response_model=ModelMetadataModel, responses=ERROR_RESPONSES,
             summary="Model metadata")
    async def model_metadata(model: str) -> JSONResponse:
        return JSONResponse(_metadata_json(core, model, None))

    @app.get("/v2/models/{model}/versions/{version}", tags=["v2"], response_model=ModelMetadataModel,
             responses=ERROR_RESPONSES, summary="Model version metadata")
    async def model_version_metadata(model: str, version: str) -> JSONResponse:
        return JSONResponse(_metadata_json(core, model, version))

    @app.get("/v2/models/{model}/ready", tags=["v2"], responses=ERROR_RESPONSES, summary="Model readiness")
    async def model_ready(model: str) -> JSONResponse:
        return _ready_json(core, model, None)

    @app.get("/v2/models/{model}/versions/{version}/ready", tags=["v2"], responses=ERROR_RESPONSES,
             summary="Model version readiness")
    async def model_version_ready(model: str, version: str) -> JSONResponse:
        return _ready_json(core, model, version)

    # -- Open Inference Protocol v2: infer ---------------------------------------------------------

    async def infer(request: Request, model: str, version: str | None) -> Response:
        started = time.monotonic()
        try:
            core.precheck(model, version)
            parsed, binary_outputs, requested, inputs = await _infer_inputs(request, settings)
            timeout_s = _header_timeout(request)
            oip_timeout = _oip_timeout(parsed.parameters)
            if oip_timeout is not None:
                timeout_s = oip_timeout if timeout_s is None else min(timeout_s, oip_timeout)
        except ServingError as err:
            core.observe_error(model, "http", err, started)
            raise
        response = await _until_disconnect(
            request,
            core.infer(
                model=model, version=version, inputs=inputs, outputs=requested,
                request_id=parsed.id or "", timeout_s=timeout_s, protocol="http",
            ),
        )
        if response is None:
            return Response(status_code=CLIENT_CLOSED)
        return _infer_response(response, binary_outputs)

    infer_doc = {
        "responses": ERROR_RESPONSES,
        "openapi_extra": INFER_BODY,
        "dependencies": auth,
        "tags": ["v2"],
    }

    @app.post("/v2/models/{model}/infer", summary="OIP v2 inference (newest version)", **infer_doc)
    async def infer_newest(request: Request, model: str) -> Response:
        return await infer(request, model, None)

    @app.post("/v2/models/{model}/versions/{version}/infer", summary="OIP v2 inference (one version)",
              **infer_doc)
    async def infer_version(request: Request, model: str, version: str) -> Response:
        return await infer(request, model, version)

    # -- metrics -------------------------------------------------------------------------------------

    @app.get("/metrics", tags=["metrics"], summary="Prometheus metrics",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        body, content_type = core.metrics.render()
        return Response(body, media_type=content_type)

    return app


_bearer = HTTPBearer(auto_error=False, description="required when the server runs with --auth-token")


async def _authorize(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """The bearer-token check of the inference routes (nothing to check without ``auth_token``)."""
    token = request.app.state.core.settings.auth_token
    if token is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ServingError(
            ErrorKind.UNAUTHENTICATED, "missing or wrong bearer token (Authorization: Bearer <token>)"
        )


# -- error handling ------------------------------------------------------------------------------------


def error_response(err: ServingError) -> JSONResponse:
    headers = http_headers(err)
    if err.kind is ErrorKind.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(http_body(err), status_code=http_status(err), headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def serving_error(_request: Request, err: ServingError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(ServingError(ErrorKind.UNPROCESSABLE, _describe_validation(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            detail = f"no route {request.method} {request.url.path}"
        return JSONResponse({"error": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(from_exception(exc))


def _describe_validation(errors: Any) -> str:
    errors = list(errors)
    if not errors:
        return "request does not follow the schema"
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    where = ".".join(loc) or "request"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


# -- request bodies ------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes (Content-Length is
    checked before reading), gzip/deflate bodies decompressed under the same limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ServingError(ErrorKind.INVALID_ARGUMENT, f"bad Content-Length {declared!r}") from None
        if size > limit:
            raise _too_large(size, limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large(total, limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ServingError(
            ErrorKind.UNSUPPORTED_MEDIA,
            f"unsupported Content-Encoding {encoding!r} (gzip, deflate, identity)",
        )
    # zlib with a bounded output, so a small compressed body cannot expand without limit.
    inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ServingError(ErrorKind.INVALID_ARGUMENT, f"cannot decompress {encoding} body: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ServingError(
            ErrorKind.PAYLOAD_TOO_LARGE,
            f"decompressed body exceeds the limit of {limit} bytes",
            reason="body_too_large",
        )
    return out


def _too_large(size: int, limit: int) -> ServingError:
    return ServingError(
        ErrorKind.PAYLOAD_TOO_LARGE, f"request body of {size} bytes exceeds the limit of {limit} bytes",
        reason="body_too_large",
    )


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _classify_inputs(request: Request, settings: Any) -> tuple[list[bytes], int | None]:
    """(images, top_k from the body or None) for the three body forms."""
    media = _media_type(request)
    if not (media.startswith("image/") or media in ("application/octet-stream", "multipart/form-data",
                                                      "application/json")):
        shown = media or "none"
        raise ServingError(
            ErrorKind.UNSUPPORTED_MEDIA,
            f"unsupported Content-Type {shown}: send image/*, application/octet-stream (one image), "
            "multipart/form-data (image files) or application/json ({\"images\": [base64, ...]})",
        )
    body = await read_body(request, settings.max_request_bytes)
    if media == "application/json":
        return await _off_loop(len(body), _classify_json_body, body)
    if media == "multipart/form-data":
        return await _classify_multipart(request, body, settings.max_images_per_request)
    if not body:
        raise ServingError(ErrorKind.INVALID_ARGUMENT, "empty request body: no image", reason="empty")
    return [body], None


async def _off_loop(size: int, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, in a thread when the body is large: parsing megabytes of JSON or base64 takes
    tens of milliseconds, which would stall every other request on the event loop."""
    if size <= OFF_LOOP_BYTES:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


def _classify_json_body(body: bytes) -> tuple[list[bytes], int | None]:
    try:
        parsed = ClassifyJSON.model_validate_json(body)
    except ValidationError as exc:
        raise _json_error(exc) from None
    images = [oip_codec.b64decode(f"images[{i}]", text) for i, text in enumerate(parsed.images)]
    return images, parsed.top_k


def _json_error(exc: ValidationError) -> ServingError:
    errors = exc.errors()
    if errors and errors[0].get("type") == "json_invalid":
        return ServingError(ErrorKind.INVALID_ARGUMENT, f"malformed JSON body: {errors[0].get('msg')}")
    return ServingError(ErrorKind.UNPROCESSABLE, _describe_validation(errors))


async def _classify_multipart(
    request: Request, body: bytes, max_files: int
) -> tuple[list[bytes], int | None]:
    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=max_files, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if "too many files" in str(exc).lower():  # Starlette's own max_files check fires first
            raise ServingError(
                ErrorKind.PAYLOAD_TOO_LARGE,
                f"request has more than {max_files} images; at most {max_files} per request",
                reason="too_many_images",
            ) from None
        raise ServingError(ErrorKind.INVALID_ARGUMENT, f"malformed multipart body: {exc}") from None
    except (UnicodeDecodeError, ValueError, KeyError) as exc:
        raise ServingError(ErrorKind.INVALID_ARGUMENT, f"malformed multipart body: {exc}") from None
    try:
        images: list[bytes] = []
        top_k: int | None = None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                images.append(await value.read())
            elif key == "top_k":
                try:
                    top_k = int(value)
                except ValueError:
                    raise ServingError(
                        ErrorKind.INVALID_ARGUMENT, f"top_k must be an integer, got {value!r}"
                    ) from None
    finally:
        await form.close()
    if not images:
        raise ServingError(
            ErrorKind.INVALID_ARGUMENT,
            "multipart body has no file part: send images as files (e.g. curl -F file=@photo.jpg)",
        )
    return images, top_k


def _header_timeout(request: Request) -> float | None:
    value = request.headers.get(TIMEOUT_HEADER)
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        ms = math.nan
    if not (math.isfinite(ms) and ms > 0):
        raise ServingError(
            ErrorKind.INVALID_ARGUMENT,
            f"{TIMEOUT_HEADER} must be a positive number of milliseconds, got {value!r}",
        )
    return ms / 1000.0


def _oip_timeout(parameters: dict[str, Any] | None) -> float | None:
    value = (parameters or {}).get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ServingError(
            ErrorKind.INVALID_ARGUMENT,
            f"parameters.timeout must be a positive number of microseconds, got {value!r}",
        )
    return float(value) / 1e6


ParsedInfer = tuple[InferRequestModel, dict[str, bool], list[str] | None, list[InferInput]]


async def _infer_inputs(request: Request, settings: Any) -> ParsedInfer:
    """Read and parse an OIP infer body (off the event loop when large)."""
    body = await read_body(request, settings.max_request_bytes)
    return await _off_loop(len(body), _parse_infer, body, request.headers.get(BINARY_HEADER))


def _parse_infer(body: bytes, header_length: str | None) -> ParsedInfer:
    """(request, binary-output choice per output name, requested output names or None, decoded inputs)."""
    binary = b""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise ServingError(
                ErrorKind.INVALID_ARGUMENT,
                f"{BINARY_HEADER} {header_length!r} is not a length within the {len(body)}-byte body",
            )
        body, binary = body[:length], body[length:]
    try:
        parsed = InferRequestModel.model_validate_json(body)
    except ValidationError as exc:
        raise _json_error(exc) from None
    _attach_binary(parsed, binary)
    params = parsed.parameters or {}
    default_binary = bool(params.get("binary_data_output", False))
    outputs: dict[str, bool] = {}
    requested: list[str] | None = None
    if parsed.outputs:
        requested = []
        for out in parsed.outputs:
            out_params = out.parameters or {}
            if "classification" in out_params:
                raise ServingError(
                    ErrorKind.INVALID_ARGUMENT,
                    f"output {out.name!r}: the classification extension is not supported; use "
                    "/v1/models/{model}/classify for top-k labels",
                )
            outputs[out.name] = bool(out_params.get("binary_data", default_binary))
            requested.append(out.name)
    outputs["*"] = default_binary
    return parsed, outputs, requested, _decode_inputs(parsed)


def _attach_binary(parsed: InferRequestModel, binary: bytes) -> None:
    """Give each input with ``parameters.binary_data_size`` its slice of the binary section."""
    offset = 0
    view = memoryview(binary)
    for inp in parsed.inputs:
        size = (inp.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(view):
            raise ServingError(
                ErrorKind.INVALID_ARGUMENT,
                f"input {inp.name!r}: binary_data_size {size!r} does not fit the {len(view) - offset} "
                "binary bytes left",
            )
        inp.data = view[offset : offset + size]
        offset += size
    if offset != len(view):
        raise ServingError(
            ErrorKind.INVALID_ARGUMENT,
            f"{len(view) - offset} bytes of binary data are not claimed by any input's binary_data_size",
        )


def _decode_inputs(parsed: InferRequestModel) -> list[InferInput]:
    out = []
    for inp in parsed.inputs:
        datatype = oip_codec.check_datatype(inp.name, inp.datatype)
        shape = oip_codec.check_shape(inp.name, inp.shape)
        if isinstance(inp.data, memoryview):
            data = oip_codec.decode_raw(inp.name, datatype, shape, inp.data)
        elif inp.data is None:
            raise ServingError(ErrorKind.INVALID_ARGUMENT, f"input {inp.name!r} has no data")
        else:
            data = oip_codec.decode_json(inp.name, datatype, shape, inp.data)
        out.append(InferInput(inp.name, datatype, shape, data))
    return out


# -- responses -----------------------------------------------------------------------------------------


def _classify_json(result: ClassifyResult) -> dict[str, Any]:
    return {
        "model_name": result.model,
        "model_version": result.version,
        "results": [
            {"predictions": [{"label": p.label, "index": p.index, "score": p.score} for p in preds]}
            for preds in result.results
        ],
    }


def _metadata_json(core: DataPlane, model: str, version: str | None) -> dict[str, Any]:
    meta = core.model_metadata(model, version)
    return {
        "name": meta.name,
        "versions": meta.versions,
        "platform": meta.platform,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in meta.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in meta.outputs],
    }


def _ready_json(core: DataPlane, model: str, version: str | None) -> JSONResponse:
    ok = core.model_ready(model, version)
    return JSONResponse({"name": model, "ready": ok}, status_code=200 if ok else 503)


def _infer_response(response: InferResponse, binary_outputs: dict[str, bool]) -> Response:
    header: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        header["id"] = response.id
    outputs = []
    blobs: list[bytes] = []
    for out in response.outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if binary_outputs.get(out.name, binary_outputs.get("*", False)):
            blob = np.ascontiguousarray(out.data, dtype=oip_codec.NUMPY_DTYPES[out.datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            if not np.isfinite(out.data).all():
                raise ServingError(
                    ErrorKind.INVALID_ARGUMENT,
                    f"output {out.name!r} holds NaN or infinite values, which JSON cannot carry; "
                    "ask for binary_data outputs",
                )
            entry["data"] = out.data.reshape(-1).tolist()
        outputs.append(entry)
    header["outputs"] = outputs
    text = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return Response(text, media_type="application/json")
    return Response(
        b"".join([text, *blobs]),
        media_type="application/octet-stream",
        headers={BINARY_HEADER: str(len(text))},
    )


# -- cancellation --------------------------------------------------------------------------------------


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Run ``work``; if the client disconnects first, cancel it (the request leaves the queue) and
    return None. Starlette's StreamingResponse listens for ``http.disconnect`` the same way."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, ServingError):
        await task
    log.info("client went away: %s %s cancelled", request.method, request.url.path)
    return None
