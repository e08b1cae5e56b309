"""Open Inference Protocol v2 requests carrying encoded images, and their answers as logits.

Every served model takes, besides its FP32 tensor input, an ``images`` input: BYTES ``[N]`` of
encoded images that the server decodes and preprocesses like a classify request; the answer is the
model's FP32 ``[N, num_classes]`` output. This is what ``ddrnet bench --protocol oip-http|oip-grpc``
sends, and what ``ddrnet eval --server`` uses to get logits (for the loss).

REST uses the binary tensor data extension (what ``tritonclient.http`` sends): a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw input; outputs are asked for as binary
too. gRPC puts the raw input in ``raw_input_contents``. A BYTES tensor's raw form is a sequence of
(uint32 little-endian length, bytes) elements.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clients.errors import ServerInternalError
from clients.types import Logits

IMAGES_INPUT = "images"
BINARY_HEADER = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")
_DTYPES = {"FP32": np.dtype("<f4"), "FP16": np.dtype("<f2"), "FP64": np.dtype("<f8")}


def pack_bytes(elements: Sequence[bytes]) -> bytes:
    """The raw encoding of a BYTES tensor."""
    return b"".join(part for e in elements for part in (_LENGTH.pack(len(e)), bytes(e)))


def http_request(images: Sequence[bytes], timeout_s: float | None = None) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of a REST infer request for ``images`` with the binary data extension."""
    raw = pack_bytes(images)
    header: dict[str, Any] = {
        "inputs": [
            {
                "name": IMAGES_INPUT,
                "shape": [len(images)],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    if timeout_s is not None:
        header["parameters"]["timeout"] = max(1, int(timeout_s * 1e6))
    text = json.dumps(header, separators=(",", ":")).encode()
    return text + raw, {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(text))}


def parse_http_response(body: bytes, headers: Mapping[str, str]) -> Logits:
    """Logits from a REST infer answer (binary or JSON outputs)."""
    length = headers.get(BINARY_HEADER.lower()) or headers.get(BINARY_HEADER)
    try:
        if length is not None:
            split = int(length)
            header, binary = json.loads(body[:split]), memoryview(body)[split:]
        else:
            header, binary = json.loads(body), memoryview(b"")
        out = header["outputs"][0]
        shape = [int(d) for d in out["shape"]]
        dtype = _DTYPES[out["datatype"]]
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            values = np.frombuffer(binary[: int(size)], dtype=dtype).reshape(shape)
        else:
            values = np.asarray(out["data"], dtype=dtype).reshape(shape)
        version = str(header.get("model_version", ""))
        return Logits(str(header["model_name"]), version, values.astype(np.float32))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ServerInternalError(f"cannot read the OIP infer answer: {type(exc).__name__}: {exc}") from None


def grpc_request(
    model: str,
    version: str | None,
    images: Sequence[bytes],
    request_id: str = "",
    timeout_s: float | None = None,
) -> Any:
    """A ``inference.ModelInferRequest`` for ``images``."""
    from protos import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(
        model_name=model,
        model_version=version or "",
        id=request_id,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name=IMAGES_INPUT, datatype="BYTES", shape=[len(images)])
        ],
        raw_input_contents=[pack_bytes(images)],
    )
    if timeout_s is not None:
        request.parameters["timeout"].int64_param = max(1, int(timeout_s * 1e6))
    return request


def parse_grpc_response(response: Any) -> Logits:
    """Logits from a ``inference.ModelInferResponse``."""
    try:
        out = response.outputs[0]
        shape = [int(d) for d in out.shape]
        dtype = _DTYPES[out.datatype]
        if response.raw_output_contents:
            values = np.frombuffer(response.raw_output_contents[0], dtype=dtype).reshape(shape)
        else:
            values = np.asarray(out.contents.fp32_contents, dtype=dtype).reshape(shape)
        return Logits(response.model_name, response.model_version, values.astype(np.float32))
    except (ValueError, KeyError, IndexError) as exc:
        raise ServerInternalError(f"cannot read the OIP infer answer: {type(exc).__name__}: {exc}") from None
