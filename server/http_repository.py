"""The Open Inference Protocol's repository extension over HTTP, as Triton serves it (``tritonclient``'s
``get_model_repository_index``, ``load_model`` and ``unload_model`` work unchanged):

- ``POST /v2/repository/index`` (body optional: ``{"ready": true}``) → ``[{"name", "version", "state",
  "reason"}, ...]``;
- ``POST /v2/repository/models/{model}/load`` and ``.../unload`` (body optional: ``{"parameters": {}}``)
  → ``{}`` once the model is loaded (warmed) or unloaded (drained).

Behind the bearer token like the inference routes. Load and unload need ``--model-control explicit``
(``server.repository_control``); the errors are the server's usual ones (400 wrong mode or parameter,
404 unknown model, 503 shutting down).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from server.core import DataPlane
from server.errors import ErrorKind, ServingError
from server.http_schemas import (
    ERROR_RESPONSES,
    RepositoryIndexEntryModel,
    RepositoryIndexRequestModel,
    RepositoryModelRequestModel,
)

MAX_BODY_BYTES = 64 * 1024


async def _body(request: Request, model: type[BaseModel]) -> Any:
    """The optional JSON body as ``model`` (an empty body, as tritonclient sends, is the defaults);
    413 over :data:`MAX_BODY_BYTES`, 400 not JSON, 422 not the schema."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ServingError(ErrorKind.PAYLOAD_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return model()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ServingError(ErrorKind.INVALID_ARGUMENT, f"body is not JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ServingError(ErrorKind.UNPROCESSABLE, f"{where}: {first['msg']}") from None


def _documented(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": False,
                            "content": {"application/json": {"schema": model.model_json_schema()}}}}


def add_repository_routes(app: FastAPI, core: DataPlane, auth: list[Any]) -> None:
    """Add the three routes to ``app`` (``auth``: the inference routes' bearer-token dependency)."""
    doc: dict[str, Any] = {"tags": ["repository"], "dependencies": auth, "responses": ERROR_RESPONSES}
    index_model = list[RepositoryIndexEntryModel]

    @app.post("/v2/repository/index", summary="Repository index", response_model=index_model,
              openapi_extra=_documented(RepositoryIndexRequestModel), **doc)
    async def repository_index(request: Request) -> JSONResponse:
        body = await _body(request, RepositoryIndexRequestModel)
        return JSONResponse(core.repository_index(body.ready))

    @app.post("/v2/repository/models/{model}/load", summary="Load or reload a model (explicit model control)",
              openapi_extra=_documented(RepositoryModelRequestModel), **doc)
    async def load_model(request: Request, model: str) -> JSONResponse:
        body = await _body(request, RepositoryModelRequestModel)
        await core.load_model(model, body.parameters)
        return JSONResponse({})

    @app.post("/v2/repository/models/{model}/unload", summary="Unload a model (explicit model control)",
              openapi_extra=_documented(RepositoryModelRequestModel), **doc)
    async def unload_model(request: Request, model: str) -> JSONResponse:
        body = await _body(request, RepositoryModelRequestModel)
        await core.unload_model(model, body.parameters)
        return JSONResponse({})
