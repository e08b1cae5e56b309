"""The HTTP API's schemas: pydantic models that validate JSON bodies and document every route in the
OpenAPI schema (``/openapi.json``, ``/docs``), and the documented error responses."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from server.postprocess import DEFAULT_TOP_K, MAX_TOP_K

BINARY_HEADER = "Inference-Header-Content-Length"

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


# -- the repository extension (server.http_repository) ---------------------------------------------------


class RepositoryIndexRequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ready: StrictBool = Field(False, description="list only the models ready for inference")


class RepositoryIndexEntryModel(BaseModel):
    name: str
    version: str = Field(description="the served version, else the newest in the repository")
    state: str = Field(description="READY or UNAVAILABLE")
    reason: str = Field(description="why it is not ready (the last load failure, 'unloaded', ...)")


class RepositoryModelRequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="load: none supported (files and settings come from the repository); unload: "
        "unload_dependents (accepted, nothing depends on a model here)",
    )
