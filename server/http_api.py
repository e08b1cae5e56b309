"""The HTTP front end (FastAPI): the routes, converting requests into :class:`~server.core.DataPlane`
calls and back with the body codec (``server.http_codec``) and the schemas (``server.http_schemas``).

Routes (OpenAPI docs at ``/docs``, schema at ``/openapi.json``):

- ``POST /v1/models/{model}/classify``, ``/v1/models/{model}/versions/{version}/classify`` and
  ``/v1/models/{model}/labels/{label}/classify`` (a version label, ``server.versions``): images
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

Bearer token (``auth_token``, checked by the core): required on the classify and infer routes only;
health, metadata, ``/metrics`` and the docs stay open. A refusal on those routes that the core did not
see (a bad body, a missing token) is still counted in ``ddrnet_requests_total``.
``X-Request-Timeout-Ms`` (and OIP's ``parameters.timeout`` in microseconds) shorten the server's request
timeout. A client that disconnects cancels its request, which leaves the queue and never reaches the
model."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from server import http_codec as codec
from server.core import DataPlane
from server.errors import ErrorKind, ServingError, from_exception, http_body, http_headers, http_status
from server.http_repository import add_repository_routes
from server.http_schemas import (
    CLASSIFY_BODY,
    ERROR_RESPONSES,
    INFER_BODY,
    TOP_K_TEXT,
    ClassifyResponseModel,
    ModelMetadataModel,
)
from server.http_web import add_web_routes

log = logging.getLogger(__name__)

CLIENT_CLOSED = 499  # nginx's status for "client closed the request" (nobody reads it)

T = TypeVar("T")


# -- the application -----------------------------------------------------------------------------------


def create_app(core: DataPlane) -> FastAPI:
    """The FastAPI application serving ``core``."""
    app = FastAPI(
        title="ddrnet-serve",
        version=core.version,
        description="DDRNet image classification: classify endpoint, Open Inference Protocol v2, metrics.",
    )
    app.state.core = core
    _install_error_handlers(app)
    if core.tracing is not None:
        core.tracing.instrument_http(app)
    auth = [Depends(_inference_call)]

    # -- classify ----------------------------------------------------------------------------------

    async def classify(
        request: Request, model: str, version: str | None, top_k: int | None, label: str | None = None
    ) -> Response:
        core.precheck(model, version, label)  # before reading a body that would be refused anyway
        images, body_top_k = await codec.classify_inputs(request, core)
        timeout_s = codec.header_timeout(request)
        k = body_top_k if body_top_k is not None else top_k
        result = await _until_disconnect(
            request,
            core.classify(
                images, model=model, version=version, top_k=k, timeout_s=timeout_s, protocol="http",
                label=label,
            ),
        )
        if result is None:
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse(codec.classify_json(result))

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

    @app.post("/v1/models/{model}/labels/{label}/classify", summary="Classify images (a version label)",
              **classify_doc)
    async def classify_label(
        request: Request, model: str, label: str, top_k: int | None = top_k_query
    ) -> Response:
        return await classify(request, model, None, top_k, label)

    @app.get("/v1/models", summary="Served models", tags=["classify"])
    async def list_models() -> dict[str, Any]:
        return {"models": [dataclasses.asdict(m) for m in core.models()]}

    # -- Open Inference Protocol v2: health and metadata -------------------------------------------

    @app.get("/v2/health/live", tags=["v2"], summary="Liveness (503 once an instance stays down too long)",
             responses={503: {"description": "not live: restart the process"}})
    async def live() -> JSONResponse:
        ok = core.live()
        return JSONResponse({"live": ok}, status_code=200 if ok else 503)

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
        return JSONResponse(codec.metadata_json(core, model, None))

    @app.get("/v2/models/{model}/versions/{version}", tags=["v2"], response_model=ModelMetadataModel,
             responses=ERROR_RESPONSES, summary="Model version metadata")
    async def model_version_metadata(model: str, version: str) -> JSONResponse:
        return JSONResponse(codec.metadata_json(core, model, version))

    @app.get("/v2/models/{model}/ready", tags=["v2"], responses=ERROR_RESPONSES, summary="Model readiness")
    async def model_ready(model: str) -> JSONResponse:
        return _ready_json(core, model, None)

    @app.get("/v2/models/{model}/versions/{version}/ready", tags=["v2"], responses=ERROR_RESPONSES,
             summary="Model version readiness")
    async def model_version_ready(model: str, version: str) -> JSONResponse:
        return _ready_json(core, model, version)

    # -- Open Inference Protocol v2: infer ---------------------------------------------------------

    async def infer(request: Request, model: str, version: str | None) -> Response:
        core.precheck(model, version)
        parsed, binary_outputs, requested, inputs = await codec.infer_inputs(request, core)
        response = await _until_disconnect(
            request,
            core.infer(
                model=model, version=version, inputs=inputs, outputs=requested, parameters=parsed.parameters,
                request_id=parsed.id or "", timeout_s=codec.header_timeout(request), protocol="http",
            ),
        )
        if response is None:
            return Response(status_code=CLIENT_CLOSED)
        return codec.infer_response(response, binary_outputs)

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

    add_repository_routes(app, core, auth)
    add_web_routes(app, core)

    # -- metrics -------------------------------------------------------------------------------------

    @app.get("/metrics", tags=["metrics"], summary="Prometheus metrics",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        body, content_type = core.metrics.render()
        return Response(body, media_type=content_type)

    return app


_bearer = HTTPBearer(auto_error=False, description="required when the server runs with --auth-token")


async def _inference_call(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """First step of every inference route: note when the call started (for the metrics of a refusal
    the core never sees) and have the core check the bearer token."""
    request.state.started = time.monotonic()
    request.app.state.core.authorize(credentials.credentials if credentials is not None else None)


def _ready_json(core: DataPlane, model: str, version: str | None) -> JSONResponse:
    ok = core.model_ready(model, version)
    return JSONResponse({"name": model, "ready": ok}, status_code=200 if ok else 503)


# -- error handling ------------------------------------------------------------------------------------


def error_response(err: ServingError) -> JSONResponse:
    headers = http_headers(err)
    if err.kind is ErrorKind.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(http_body(err), status_code=http_status(err), headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def serving_error(request: Request, err: ServingError) -> JSONResponse:
        started = getattr(request.state, "started", None)
        if started is not None:  # an inference route: count what the core did not see
            request.app.state.core.observe_error(request.path_params.get("model", ""), "http", err, started)
        if err.kind is ErrorKind.CANCELLED:  # one line, no traceback: the client is gone
            log.info("%s %s: %s", request.method, request.url.path, err.message)
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(ServingError(ErrorKind.UNPROCESSABLE, codec.describe_validation(exc.errors())))

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
