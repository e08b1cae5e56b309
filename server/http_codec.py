"""The HTTP API's body codec: request bodies into core calls, results into response bodies.

Reading: the body under ``max_request_bytes`` (Content-Length checked before reading, gzip/deflate
decompressed under the same limit), the three classify forms (one raw image, multipart file parts,
JSON base64), OIP v2 infer bodies (JSON tensors or the binary tensor data extension), and the
``X-Request-Timeout-Ms`` header. Parsing, base64, the binary extension and decompression run in the
core's decode pool, off the event loop; a tensor or image list declaring more images than a request
may carry is refused before any of its elements is decoded. Writing: classify and
metadata JSON, OIP responses with JSON or binary outputs. Every problem is a
:class:`~server.errors.ServingError` naming it (400 / 413 / 415 / 422).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from server import oip_codec
from server.core import ClassifyResult, DataPlane, InferInput, InferResponse, RequestedOutput
from server.errors import ErrorKind, ServingError
from server.http_schemas import BINARY_HEADER, ClassifyJSON, InferRequestModel

TIMEOUT_HEADER = "X-Request-Timeout-Ms"

Decode = Callable[..., Awaitable[Any]]  # the core's decode pool: ``await decode(fn, *args)``


def describe_validation(errors: Any) -> str:
    """One line for pydantic's validation errors: the first problem's location and message."""
    errors = list(errors)
    if not errors:
        return "request does not follow the schema"
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    where = ".".join(loc) or "request"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


# -- request bodies ------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int, decode: Decode | None = None) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes (Content-Length is
    checked before reading); gzip/deflate bodies decompressed under the same limit, through ``decode``
    (the core's decode pool: inflating is CPU work) when given."""
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
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise _too_large(total, limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ServingError(ErrorKind.CANCELLED, f"the client went away after {total} bytes of the body",
                           reason="client_closed") from None
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ServingError(
            ErrorKind.UNSUPPORTED_MEDIA,
            f"unsupported Content-Encoding {encoding!r} (gzip, deflate, identity)",
        )
    if decode is None:
        return inflate(body, encoding, limit)
    return await decode(inflate, body, encoding, limit)


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip/deflate body decompressed, at most ``limit`` bytes (zlib with a bounded output, so a
    small body cannot expand without limit); a truncated stream is INVALID_ARGUMENT."""
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
    if not inflater.eof:
        raise ServingError(ErrorKind.INVALID_ARGUMENT, f"truncated {encoding} body: the stream ends early")
    return out


def _too_large(size: int, limit: int) -> ServingError:
    return ServingError(
        ErrorKind.PAYLOAD_TOO_LARGE, f"request body of {size} bytes exceeds the limit of {limit} bytes",
        reason="body_too_large",
    )


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def classify_inputs(request: Request, core: DataPlane) -> tuple[list[bytes], int | None]:
    """(images, top_k from the body or None) for the three body forms; parsing runs in the core's
    decode pool."""
    settings = core.settings
    media = _media_type(request)
    if not (media.startswith("image/") or media in ("application/octet-stream", "multipart/form-data",
                                                      "application/json")):
        shown = media or "none"
        raise ServingError(
            ErrorKind.UNSUPPORTED_MEDIA,
            f"unsupported Content-Type {shown}: send image/*, application/octet-stream (one image), "
            "multipart/form-data (image files) or application/json ({\"images\": [base64, ...]})",
        )
    body = await read_body(request, settings.max_request_bytes, core.decode)
    if media == "application/json":
        return await core.decode(_classify_json_body, body, settings.max_images_per_request)
    if media == "multipart/form-data":
        return await _classify_multipart(request, body, settings.max_images_per_request)
    if not body:
        raise ServingError(ErrorKind.INVALID_ARGUMENT, "empty request body: no image", reason="empty")
    return [body], None


def _classify_json_body(body: bytes, max_images: int) -> tuple[list[bytes], int | None]:
    try:
        parsed = ClassifyJSON.model_validate_json(body)
    except ValidationError as exc:
        raise _json_error(exc) from None
    oip_codec.admit("images", "BYTES", [len(parsed.images)], max_images)  # before any base64 decoding
    images = [oip_codec.b64decode(f"images[{i}]", text) for i, text in enumerate(parsed.images)]
    return images, parsed.top_k


def _json_error(exc: ValidationError) -> ServingError:
    errors = exc.errors()
    if errors and errors[0].get("type") == "json_invalid":
        return ServingError(ErrorKind.INVALID_ARGUMENT, f"malformed JSON body: {errors[0].get('msg')}")
    return ServingError(ErrorKind.UNPROCESSABLE, describe_validation(errors))


class _InMemoryMultiPartParser(MultiPartParser):
    """Starlette's parser, keeping file parts in memory: the whole body already is (it was read under
    ``max_request_bytes``), so spooling parts over 1 MiB to a temporary file would only add a copy and
    a disk that can fill up."""

    spool_max_size = 1 << 62


async def _classify_multipart(
    request: Request, body: bytes, max_files: int
) -> tuple[list[bytes], int | None]:
    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = _InMemoryMultiPartParser(request.headers, stream(), max_files=max_files, max_fields=16)
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
    except OSError as exc:  # the parts are kept in memory; a failure here is the server's, not the body's
        raise ServingError(ErrorKind.UNAVAILABLE, f"cannot buffer the multipart body: {exc}",
                           reason="spool_error") from None
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


def header_timeout(request: Request) -> float | None:
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


ParsedInfer = tuple[InferRequestModel, dict[str, bool], list[RequestedOutput], list[InferInput]]


async def infer_inputs(request: Request, core: DataPlane) -> ParsedInfer:
    """Read an OIP infer body and parse it in the core's decode pool."""
    settings = core.settings
    body = await read_body(request, settings.max_request_bytes, core.decode)
    return await core.decode(_parse_infer, body, request.headers.get(BINARY_HEADER),
                             settings.max_images_per_request)


def _parse_infer(body: bytes, header_length: str | None, max_images: int) -> ParsedInfer:
    """(request, binary-output choice per output name, requested outputs, decoded inputs)."""
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
    requested: list[RequestedOutput] = []
    for out in parsed.outputs or ():
        out_params = out.parameters or {}
        outputs[out.name] = bool(out_params.get("binary_data", default_binary))
        requested.append(RequestedOutput(out.name, out_params))
    outputs["*"] = default_binary
    return parsed, outputs, requested, _decode_inputs(parsed, max_images)


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


def _decode_inputs(parsed: InferRequestModel, max_images: int) -> list[InferInput]:
    out = []
    for inp in parsed.inputs:
        datatype = oip_codec.check_datatype(inp.name, inp.datatype)
        shape = oip_codec.check_shape(inp.name, inp.shape)
        oip_codec.admit(inp.name, datatype, shape, max_images)
        if isinstance(inp.data, memoryview):
            data = oip_codec.decode_raw(inp.name, datatype, shape, inp.data)
        elif inp.data is None:
            raise ServingError(ErrorKind.INVALID_ARGUMENT, f"input {inp.name!r} has no data")
        else:
            data = oip_codec.decode_json(inp.name, datatype, shape, inp.data)
        out.append(InferInput(inp.name, datatype, shape, data))
    return out


# -- responses -----------------------------------------------------------------------------------------


def classify_json(result: ClassifyResult) -> dict[str, Any]:
    return {
        "model_name": result.model,
        "model_version": result.version,
        "results": [
            {"predictions": [{"label": p.label, "index": p.index, "score": p.score} for p in preds]}
            for preds in result.results
        ],
    }


def metadata_json(core: DataPlane, model: str, version: str | None) -> dict[str, Any]:
    meta = core.model_metadata(model, version)
    return {
        "name": meta.name,
        "versions": meta.versions,
        "platform": meta.platform,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in meta.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in meta.outputs],
    }


def infer_response(response: InferResponse, binary_outputs: dict[str, bool]) -> Response:
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
            if not np.isfinite(out.data).all():  # the model's fault, not the request's
                raise ServingError(
                    ErrorKind.INTERNAL,
                    f"output {out.name!r} holds NaN or infinite values, which JSON cannot carry; "
                    "binary_data outputs carry them",
                    reason="non_finite_output",
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
