"""The bad-input matrix: every bad (and unusual but valid) request of issue 8 on each of the four
request surfaces, with the answer the server documents for it. One table, used two ways:

- ``test_bad_input.py`` sends every row to a real ``ddrnet serve`` process and checks the status, that
  the message names the problem, that no body carries a traceback, and that the next valid request on
  the same surface succeeds;
- ``python -m tests.support.bad_input_cases`` does the same and prints a Markdown table of what
  the server answered (status and message excerpt), which is RELIABILITY.md's bad-input section.

Surfaces: ``http-classify`` (``POST /v1/models/{m}/classify``: raw image body unless the row says
otherwise), ``http-infer`` (``POST /v2/models/{m}/infer``: OIP v2 JSON, images as a base64 BYTES
tensor, or the binary tensor data extension), ``grpc-classify`` (``ddrnet.v1.Classify/Classify``) and
``grpc-infer`` (``inference.GRPCInferenceService/ModelInfer``, images as a raw BYTES tensor).

The server runs with :data:`SERVER_ARGS`: a 256 KiB request limit, a 250,000-pixel image limit and at
most 4 images per request, so the limits are reached with small payloads.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.support import reliability_fixtures as rf

MODEL = rf.MODEL
LIMIT_BYTES = 256 * 1024
LIMIT_PIXELS = 250_000
MAX_IMAGES = 4
SERVER_ARGS = ("--max-request-bytes", str(LIMIT_BYTES), "--max-image-pixels", str(LIMIT_PIXELS),
               "--max-images-per-request", str(MAX_IMAGES), "--max-batch-size", "4")
SURFACES = ("http-classify", "http-infer", "grpc-classify", "grpc-infer")
BINARY_HEADER = "Inference-Header-Content-Length"
IMAGE_SIZE = 8  # the synthetic model's input: [N, 3, 8, 8]
TRACEBACK_MARKS = ("Traceback (most recent call last)", 'File "/', "site-packages")


# -- images ---------------------------------------------------------------------------------------------


def _noise(size: int = 64, seed: int = 0) -> Any:
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), np.uint8))


def _png_bomb(width: int, height: int) -> bytes:
    """A ~70-byte PNG that declares ``width`` x ``height`` RGB pixels (an image bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _animated_gif() -> bytes:
    from PIL import Image

    frames = [Image.new("RGB", (16, 16), rf.COLOURS[c]) for c in ("green", "red", "blue")]
    return rf.encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)


def _mode(mode: str, colour: str = "red", fmt: str = "PNG", **save: Any) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (12, 12), rf.COLOURS[colour])
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(200)
    elif mode == "I;16":
        img = Image.fromarray(np.full((12, 12), 50_000, np.uint16))
    else:
        img = img.convert(mode)
    return rf.encode(img, fmt, **save)


def _ico() -> bytes:
    from PIL import Image

    return rf.encode(Image.new("RGB", (16, 16), (1, 2, 3)), "ICO")


IMAGES: dict[str, Callable[[], bytes]] = {
    "red": lambda: rf.solid("red"),
    "empty": lambda: b"",
    "truncated-jpeg": lambda: (lambda b: b[: len(b) // 2])(rf.encode(_noise(), "JPEG")),
    "truncated-png": lambda: rf.encode(_noise(), "PNG")[:300],
    "random-bytes": lambda: np.random.default_rng(1).integers(0, 256, 1024, np.uint8).tobytes(),
    "text-file": lambda: b"name,value\nthis is a text file, not an image\n" * 8,
    "image-bomb": lambda: _png_bomb(100_000, 100_000),
    "over-pixel-limit": lambda: rf.solid("red", size=600),
    "unsupported-format": _ico,
    "1x1": lambda: rf.solid("red", size=1),
    "16-bit": lambda: _mode("I;16"),
    "cmyk": lambda: _mode("CMYK", fmt="JPEG", quality=95),
    "palette": lambda: _mode("P"),
    "alpha": lambda: _mode("RGBA"),
    "greyscale": lambda: _mode("L"),
    "animated-gif": _animated_gif,
}


# -- requests ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Http:
    """An HTTP request to the classify or infer route of ``model``/``version``."""

    route: str  # "classify" | "infer"
    body: Callable[[], bytes]
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    model: str = MODEL
    version: str | None = None
    chunked: bool = False  # send without Content-Length

    def path(self) -> str:
        middle = f"/versions/{self.version}" if self.version else ""
        prefix = "/v1" if self.route == "classify" else "/v2"
        return f"{prefix}/models/{self.model}{middle}/{self.route}"


@dataclass(frozen=True)
class Grpc:
    """A typed gRPC request: ``Classify`` (``ClassifyRequest`` fields) or ``ModelInfer``."""

    method: str  # "classify" | "infer"
    fields: Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class GrpcWire:
    """Raw bytes on the wire as a gRPC request (a message that is not valid protobuf)."""

    method: str  # full method path
    payload: bytes


@dataclass(frozen=True)
class Row:
    case: str  # short id, shared by the surfaces of one case
    what: str  # what is sent, in words (RELIABILITY.md)
    surface: str
    request: Http | Grpc | GrpcWire
    status: int | str  # HTTP status, or gRPC code name
    words: str  # part of the error message (case-insensitive); on success, the expected top label

    @property
    def id(self) -> str:
        return f"{self.surface}:{self.case}"

    @property
    def ok(self) -> bool:
        return self.status in (200, "OK")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _oip_json(*inputs: dict[str, Any], **extra: Any) -> Callable[[], bytes]:
    return lambda: json.dumps({"inputs": [i() if callable(i) else i for i in inputs], **extra}).encode()


def _bytes_json(image: Callable[[], bytes]) -> Callable[[], dict[str, Any]]:
    return lambda: {"name": "images", "datatype": "BYTES", "shape": [1], "data": [b64(image())]}


def _tensor_json(name: str = "input", datatype: str = "FP32", shape: list[int] | None = None,
                 count: int | None = None, value: Any = 0.25) -> dict[str, Any]:
    shape = [1, 3, IMAGE_SIZE, IMAGE_SIZE] if shape is None else shape
    n = int(np.prod(shape)) if count is None else count
    return {"name": name, "datatype": datatype, "shape": shape, "data": [value] * n}


def _binary(header: dict[str, Any], blob: bytes) -> Http:
    text = json.dumps(header).encode()
    return Http("infer", lambda: text + blob,
                headers={BINARY_HEADER: str(len(text)), "content-type": "application/octet-stream"})


def _raw_bytes(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _grpc_images(image: Callable[[], bytes], **extra: Any) -> Grpc:
    return Grpc("classify", lambda: {"model_name": MODEL, "images": [image()], **extra})


def _grpc_infer_images(image: Callable[[], bytes], **extra: Any) -> Grpc:
    def fields() -> dict[str, Any]:
        base = {"model_name": MODEL, "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1]}],
                "raw_input_contents": [_raw_bytes(image())]}
        return {**base, **extra}

    return Grpc("infer", fields)


def _grpc_tensor(name: str = "input", datatype: str = "FP32", shape: list[int] | None = None,
                 nbytes: int | None = None, **extra: Any) -> Grpc:
    shape = [1, 3, IMAGE_SIZE, IMAGE_SIZE] if shape is None else shape
    size = int(np.prod(shape)) * 4 if nbytes is None else nbytes

    def fields() -> dict[str, Any]:
        base = {"model_name": MODEL, "inputs": [{"name": name, "datatype": datatype, "shape": shape}],
                "raw_input_contents": [b"\0" * size]}
        return {**base, **extra}

    return Grpc("infer", fields)


def _image_rows(case: str, what: str, http: int, words: str, grpc: str | None = None) -> list[Row]:
    """One image case on all four surfaces (the image is the only thing wrong, or nothing is)."""
    image = IMAGES[case]
    if grpc is None:
        grpc = {200: "OK", 404: "NOT_FOUND"}.get(http, "INVALID_ARGUMENT")
    return [
        Row(case, what, "http-classify", Http("classify", image, {"content-type": "image/png"}), http, words),
        Row(case, what, "http-infer", Http("infer", _oip_json(_bytes_json(image))), http, words),
        Row(case, what, "grpc-classify", _grpc_images(image), grpc, words),
        Row(case, what, "grpc-infer", _grpc_infer_images(image), grpc, words),
    ]


CLASSIFY_URL_JSON = {"content-type": "application/json"}
PNG = {"content-type": "image/png"}


def _multipart(parts: list[tuple[str, bytes, str | None]], boundary: str = "b0undary") -> Http:
    """A multipart/form-data body built by hand: (field name, bytes, filename or None for a field)."""
    def body() -> bytes:
        out = b""
        for name, data, filename in parts:
            disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
            out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
            if filename:
                out += b"Content-Type: application/octet-stream\r\n"
            out += b"\r\n" + data + b"\r\n"
        return out + f"--{boundary}--\r\n".encode()

    return Http("classify", body, {"content-type": f"multipart/form-data; boundary={boundary}"})


def rows() -> list[Row]:
    """Every row of the matrix (the images are built lazily, when a request is sent)."""
    out: list[Row] = []
    add = out.extend
    # -- undecodable and oversized images, on every surface --------------------------------------------
    add(_image_rows("empty", "empty body / empty image", 400, "empty"))
    add(_image_rows("truncated-jpeg", "JPEG cut in half", 400, "truncated"))
    add(_image_rows("truncated-png", "PNG cut after 300 bytes", 400, "truncated"))
    add(_image_rows("random-bytes", "1 KiB of random bytes", 400, "cannot decode"))
    add(_image_rows("text-file", "a CSV text file", 400, "cannot decode"))
    add(_image_rows("image-bomb", "70-byte PNG declaring 100000x100000 pixels", 413, "too large"))
    add(_image_rows("over-pixel-limit", f"600x600 PNG, limit {LIMIT_PIXELS} pixels", 413, "limit 250000"))
    add(_image_rows("unsupported-format", "a Windows .ico icon", 415, "unsupported image format"))
    # -- unusual but valid images: succeed ---------------------------------------------------------------
    add(_image_rows("1x1", "1x1 red PNG", 200, "red"))
    add(_image_rows("16-bit", "16-bit greyscale PNG (I;16)", 200, ""))
    add(_image_rows("cmyk", "CMYK JPEG of a red square", 200, "red"))
    add(_image_rows("palette", "palette (P) PNG of a red square", 200, "red"))
    add(_image_rows("alpha", "RGBA PNG (alpha 200) of a red square", 200, "red"))
    add(_image_rows("greyscale", "greyscale (L) PNG", 200, ""))
    add(_image_rows("animated-gif", "animated GIF green/red/blue: first frame", 200, "green"))
    # -- body size -------------------------------------------------------------------------------------
    big = lambda: b"\0" * (LIMIT_BYTES + 1)  # noqa: E731
    what = f"{LIMIT_BYTES + 1}-byte body, limit {LIMIT_BYTES}"
    add([
        Row("body-too-large", what, "http-classify", Http("classify", big, PNG), 413, "exceeds the limit"),
        Row("body-too-large-chunked", what + " (chunked, no Content-Length)", "http-classify",
            Http("classify", big, PNG, chunked=True), 413, "exceeds the limit"),
        Row("body-too-large", what, "http-infer", Http("infer", big), 413, "exceeds the limit"),
        Row("body-too-large", what + " (gRPC's own limit, before any handler)", "grpc-classify",
            _grpc_images(big), "RESOURCE_EXHAUSTED", "larger than max"),
        Row("body-too-large", what + " (gRPC's own limit, before any handler)", "grpc-infer",
            _grpc_infer_images(big), "RESOURCE_EXHAUSTED", "larger than max"),
    ])
    many = lambda: [rf.solid("red")] * (MAX_IMAGES + 1)  # noqa: E731
    add([
        Row("too-many-images", f"{MAX_IMAGES + 1} images, limit {MAX_IMAGES}", "http-classify",
            Http("classify", lambda: json.dumps({"images": [b64(i) for i in many()]}).encode(),
                 CLASSIFY_URL_JSON), 413, f"at most {MAX_IMAGES}"),
        Row("too-many-images", f"{MAX_IMAGES + 1} images, limit {MAX_IMAGES}", "grpc-classify",
            Grpc("classify", lambda: {"model_name": MODEL, "images": many()}), "INVALID_ARGUMENT",
            f"at most {MAX_IMAGES}"),
        Row("no-images", "a request with no image", "http-classify",
            Http("classify", lambda: b'{"images": []}', CLASSIFY_URL_JSON), 400, "no images"),
        Row("no-images", "a request with no image", "grpc-classify",
            Grpc("classify", lambda: {"model_name": MODEL}), "INVALID_ARGUMENT", "no images"),
        Row("no-images", "a BYTES tensor of shape [0]", "grpc-infer",
            Grpc("infer", lambda: {"model_name": MODEL,
                                   "inputs": [{"name": "images", "datatype": "BYTES", "shape": [0]}],
                                   "raw_input_contents": [b""]}), "INVALID_ARGUMENT", "no images"),
    ])
    # -- HTTP body forms -------------------------------------------------------------------------------
    red = IMAGES["red"]
    add([
        Row("wrong-content-type", "image sent as text/plain", "http-classify",
            Http("classify", red, {"content-type": "text/plain"}), 415, "Content-Type"),
        Row("no-content-type", "no Content-Type header", "http-classify",
            Http("classify", red, {"content-type": ""}), 415, "Content-Type"),
        Row("wrong-content-encoding", "Content-Encoding: br", "http-classify",
            Http("classify", red, {**PNG, "content-encoding": "br"}), 415, "Content-Encoding"),
        Row("compression-bomb", "gzip body inflating past the limit", "http-classify",
            Http("classify", lambda: __import__("gzip").compress(b"\0" * (4 * LIMIT_BYTES)),
                 {**PNG, "content-encoding": "gzip"}), 413, "decompressed"),
        Row("invalid-base64", "JSON image that is not base64", "http-classify",
            Http("classify", lambda: b'{"images": ["not base64!"]}', CLASSIFY_URL_JSON), 400, "base64"),
        Row("invalid-base64", "BYTES tensor element that is not base64", "http-infer",
            Http("infer", _oip_json({"name": "images", "datatype": "BYTES", "shape": [1],
                                     "data": ["%%%"]})), 400, "base64"),
        Row("malformed-json", "truncated JSON", "http-classify",
            Http("classify", lambda: b'{"images": [', CLASSIFY_URL_JSON), 400, "malformed JSON"),
        Row("malformed-json", "truncated JSON", "http-infer",
            Http("infer", lambda: b'{"inputs": [{"name":'), 400, "malformed JSON"),
        Row("json-schema", "images is a string, not a list", "http-classify",
            Http("classify", lambda: b'{"images": "abc"}', CLASSIFY_URL_JSON), 422, "images"),
        Row("json-unknown-field", "unknown field", "http-classify",
            Http("classify", lambda: b'{"images": [], "topk": 1}', CLASSIFY_URL_JSON), 422, "topk"),
        Row("json-schema", "no inputs", "http-infer", Http("infer", lambda: b'{"outputs": []}'), 422,
            "inputs"),
        Row("multipart-no-file", "multipart with only a top_k field", "http-classify",
            _multipart([("top_k", b"3", None)]), 400, "no file"),
        Row("multipart-no-boundary", "multipart/form-data without a boundary", "http-classify",
            Http("classify", lambda: b"whatever", {"content-type": "multipart/form-data"}), 400, "multipart"),
        Row("multipart-bad-file", "multipart: a good file, then a text file", "http-classify",
            _multipart([("a", rf.solid("red"), "a.png"), ("b", b"plain text", "b.txt")]), 400,
            "image 1: cannot decode"),
        Row("bad-timeout-header", "X-Request-Timeout-Ms: soon", "http-classify",
            Http("classify", red, {**PNG, "x-request-timeout-ms": "soon"}), 400, "X-Request-Timeout-Ms"),
    ])
    # -- top_k -----------------------------------------------------------------------------------------
    for value, status, words in (("0", 400, "top_k"), ("-3", 400, "top_k"), (str(10**9), 400, "top_k"),
                                 ("five", 422, "top_k"), ("2.5", 422, "top_k")):
        add([Row(f"top_k={value}", f"?top_k={value}", "http-classify",
                 Http("classify", red, PNG, params={"top_k": value}), status, words)])
    add([
        Row("top_k=\"2\"-json", 'JSON "top_k": "2" (a string)', "http-classify",
            Http("classify", lambda: json.dumps({"images": [b64(red())], "top_k": "2"}).encode(),
                 CLASSIFY_URL_JSON), 422, "top_k"),
        Row("top_k=five-multipart", "multipart field top_k=five", "http-classify",
            _multipart([("f", rf.solid("red"), "f.png"), ("top_k", b"five", None)]), 400, "top_k"),
    ])
    for value in (0, -2, 2**31 - 1):
        add([Row(f"top_k={value}", f"top_k = {value}", "grpc-classify", _grpc_images(red, top_k=value),
                 "INVALID_ARGUMENT", "top_k")])
    # -- unknown model / version -----------------------------------------------------------------------
    for case, model, version, words in (("unknown-model", "nope", None, "unknown model 'nope'"),
                                        ("unknown-version", MODEL, "7", "no version '7'")):
        what = f"model {model!r}" + (f" version {version}" if version else "")
        add([
            Row(case, what, "http-classify", Http("classify", red, PNG, model=model, version=version), 404,
                words),
            Row(case, what, "http-infer", Http("infer", _oip_json(_bytes_json(red)), model=model,
                                               version=version), 404, words),
            Row(case, what, "grpc-classify", _grpc_images(red, model_name=model, model_version=version or ""),
                "NOT_FOUND", words),
            Row(case, what, "grpc-infer", _grpc_infer_images(red, model_name=model,
                                                             model_version=version or ""),
                "NOT_FOUND", words),
        ])
    # -- OIP v2 tensors --------------------------------------------------------------------------------
    tensor_cases = [
        ("tensor-wrong-name", "input named 'x'", dict(name="x"), "no input 'x'"),
        ("tensor-wrong-dtype", "FP32 input sent as INT32", dict(datatype="INT32"), "FP32"),
        ("tensor-unknown-dtype", "datatype 'FLOAT'", dict(datatype="FLOAT"), "unknown datatype"),
        ("tensor-wrong-shape", "shape [1, 3, 4, 4] for a [-1, 3, 8, 8] input", dict(shape=[1, 3, 4, 4]),
         "shape"),
        ("tensor-rank", "shape [192]", dict(shape=[192]), "shape"),
    ]
    for case, what, kw, words in tensor_cases:
        json_kw = dict(kw)
        if json_kw.get("datatype") == "INT32":
            json_kw["value"] = 0
        add([Row(case, what, "http-infer", Http("infer", _oip_json(_tensor_json(**json_kw))), 400, words),
             Row(case, what, "grpc-infer", _grpc_tensor(**kw), "INVALID_ARGUMENT", words)])
    add([
        Row("tensor-negative-dim", "shape [-1, 3, 8, 8] in a request", "http-infer",
            Http("infer", _oip_json(_tensor_json(shape=[-1, 3, 8, 8], count=0))), 400, "shape"),
        Row("tensor-negative-dim", "shape [-1, 3, 8, 8] in a request", "grpc-infer",
            _grpc_tensor(shape=[-1, 3, 8, 8], nbytes=0), "INVALID_ARGUMENT", "shape"),
        Row("tensor-data-count", "10 values for shape [1, 3, 8, 8]", "http-infer",
            Http("infer", _oip_json(_tensor_json(count=10))), 400, "192"),
        Row("tensor-data-count", "10 bytes of raw data for shape [1, 3, 8, 8]", "grpc-infer",
            _grpc_tensor(nbytes=10), "INVALID_ARGUMENT", "768"),
        Row("tensor-not-numbers", "strings as FP32 data", "http-infer",
            Http("infer", _oip_json(_tensor_json(value="a"))), 400, "numbers"),
        Row("tensor-no-data", "an input with no data", "http-infer",
            Http("infer", _oip_json({"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8]})), 400,
            "no data"),
        Row("tensor-no-data", "an input with no data", "grpc-infer",
            Grpc("infer", lambda: {"model_name": MODEL, "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8]}]}), "INVALID_ARGUMENT",
            "fp32_contents"),
        Row("tensor-two-inputs", "two inputs", "http-infer",
            Http("infer", _oip_json(_bytes_json(red), _bytes_json(red))), 400, "exactly one input"),
        Row("tensor-unknown-output", "output 'probs' requested", "http-infer",
            Http("infer", _oip_json(_bytes_json(red), outputs=[{"name": "probs"}])), 400,
            "no output 'probs'"),
        Row("tensor-raw-count", "two raw_input_contents for one input", "grpc-infer",
            _grpc_tensor(raw_input_contents=[b"", b""]), "INVALID_ARGUMENT", "raw_input_contents"),
        Row("bytes-element-overrun", "BYTES element declaring 50 bytes, 2 present", "grpc-infer",
            Grpc("infer", lambda: {"model_name": MODEL,
                                   "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1]}],
                                   "raw_input_contents": [struct.pack("<I", 50) + b"ab"]}),
            "INVALID_ARGUMENT", "declares 50 bytes"),
        Row("binary-header-length", f"{BINARY_HEADER}: 99 for a 2-byte body", "http-infer",
            Http("infer", lambda: b"{}", {BINARY_HEADER: "99"}), 400, BINARY_HEADER),
        Row("binary-header-not-a-number", f"{BINARY_HEADER}: abc", "http-infer",
            Http("infer", lambda: b"{}", {BINARY_HEADER: "abc"}), 400, BINARY_HEADER),
        Row("binary-size-overrun", "binary_data_size 768, 10 bytes follow", "http-infer",
            _binary({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8],
                                 "parameters": {"binary_data_size": 768}}]}, b"\0" * 10), 400,
            "binary_data_size"),
        Row("binary-unclaimed", "8 binary bytes no input claims", "http-infer",
            _binary({"inputs": [_tensor_json()]}, b"\0" * 8), 400, "not claimed"),
        Row("binary-nan", "FP32 tensor holding NaN", "http-infer",
            _binary({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8],
                                 "parameters": {"binary_data_size": 768}}]},
                    np.full((1, 3, 8, 8), np.nan, np.float32).tobytes()), 400, "NaN"),
        Row("tensor-nan", "FP32 tensor holding NaN", "grpc-infer",
            Grpc("infer", lambda: {"model_name": MODEL,
                                   "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8]}],
                                   "raw_input_contents": [np.full(192, np.nan, np.float32).tobytes()]}),
            "INVALID_ARGUMENT", "NaN"),
        Row("bad-timeout-parameter", "parameters.timeout = -5", "http-infer",
            Http("infer", _oip_json(_bytes_json(red), parameters={"timeout": -5})), 400, "timeout"),
        Row("classification-extension", "output parameter classification: 3", "http-infer",
            Http("infer", _oip_json(_bytes_json(red), outputs=[{"name": "logits",
                                                                "parameters": {"classification": 3}}])),
            400, "classification"),
        Row("valid-tensor", "FP32 [1, 3, 8, 8] of 0.25 (control)", "http-infer",
            Http("infer", _oip_json(_tensor_json())), 200, "red"),
        Row("valid-tensor", "FP32 [1, 3, 8, 8] raw zeros (control)", "grpc-infer", _grpc_tensor(), "OK",
            "red"),
    ])
    # -- gRPC messages that are not valid protobuf ---------------------------------------------------------
    bad_utf8 = b"\x0a\x02\xff\xfe"  # field 1 (model_name, a string) holding invalid UTF-8
    truncated = b"\x12\x80"  # field 2, length varint cut short
    add([
        Row("malformed-protobuf", "model_name with invalid UTF-8", "grpc-classify",
            GrpcWire("/ddrnet.v1.Classify/Classify", bad_utf8), "INVALID_ARGUMENT", "cannot parse"),
        Row("malformed-protobuf-cut", "a length cut short", "grpc-classify",
            GrpcWire("/ddrnet.v1.Classify/Classify", truncated), "INVALID_ARGUMENT", "cannot parse"),
        Row("malformed-protobuf", "model_name with invalid UTF-8", "grpc-infer",
            GrpcWire("/inference.GRPCInferenceService/ModelInfer", bad_utf8), "INVALID_ARGUMENT",
            "cannot parse"),
    ])
    return out


# -- sending ----------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int | str
    message: str  # the error message, or "" on success
    body: str  # everything a client could read (HTTP body; gRPC details + trailers)
    labels: list[str]  # top label per image on success
    headers: dict[str, str] = field(default_factory=dict)


class Client:
    """Sends rows to a running server over HTTP (httpx) and gRPC (a sync channel)."""

    def __init__(self, http_url: str, grpc_target: str) -> None:
        import grpc
        import httpx

        self.http = httpx.Client(base_url=http_url, timeout=60)
        self.channel = grpc.insecure_channel(grpc_target)

    def close(self) -> None:
        self.http.close()
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, request: Http | Grpc | GrpcWire) -> Answer:
        if isinstance(request, Http):
            return self._http(request)
        return self._grpc(request)

    def _http(self, req: Http) -> Answer:
        body = req.body()
        headers = dict(req.headers)
        content: Any = body
        if req.chunked:
            content = iter([body[i : i + 65536] for i in range(0, len(body), 65536)])
        if headers.get("content-type") == "":
            headers.pop("content-type")
        elif req.route == "infer":
            headers.setdefault("content-type", "application/json")
        response = self.http.post(req.path(), content=content, headers=headers, params=req.params)
        text = response.text
        if response.status_code != 200:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = text
            return Answer(response.status_code, message, text, [], dict(response.headers))
        return Answer(200, "", text, _http_labels(req, response), dict(response.headers))

    def _grpc(self, req: Grpc | GrpcWire) -> Answer:
        import grpc

        from protos import classify_pb2, classify_pb2_grpc, grpc_service_pb2, grpc_service_pb2_grpc

        try:
            if isinstance(req, GrpcWire):
                call = self.channel.unary_unary(req.method)  # bytes in, bytes out
                call(req.payload, timeout=60)
                return Answer("OK", "", "", [])
            if req.method == "classify":
                stub = classify_pb2_grpc.ClassifyStub(self.channel)
                reply = stub.Classify(classify_pb2.ClassifyRequest(**req.fields()), timeout=60)
                labels = [r.predictions[0].label for r in reply.results]
                return Answer("OK", "", str(reply), labels)
            fields = req.fields()
            tensor = grpc_service_pb2.ModelInferRequest.InferInputTensor
            fields["inputs"] = [tensor(**i) for i in fields.get("inputs", [])]
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
            reply = stub.ModelInfer(grpc_service_pb2.ModelInferRequest(**fields), timeout=60)
            logits = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(-1, len(rf.LABELS))
            return Answer("OK", "", str(reply), [rf.LABELS[i] for i in logits.argmax(1)])
        except grpc.RpcError as err:
            details = err.details() or ""
            trailers = " ".join(f"{k}={v}" for k, v in (err.trailing_metadata() or ()))
            return Answer(err.code().name, details, f"{details} {trailers}", [])


def _http_labels(req: Http, response: Any) -> list[str]:
    body = response.json()
    if req.route == "classify":
        return [r["predictions"][0]["label"] for r in body["results"]]
    out = body["outputs"][0]
    logits = np.array(out["data"], np.float32).reshape(out["shape"])
    return [rf.LABELS[i] for i in logits.argmax(1)]


#: One valid request per surface: sent after every bad one, it must succeed with label ``red``.
VALID: dict[str, Http | Grpc] = {
    "http-classify": Http("classify", IMAGES["red"], PNG),
    "http-infer": Http("infer", _oip_json(_bytes_json(IMAGES["red"]))),
    "grpc-classify": _grpc_images(IMAGES["red"]),
    "grpc-infer": _grpc_infer_images(IMAGES["red"]),
}


def has_traceback(text: str) -> bool:
    return any(mark in text for mark in TRACEBACK_MARKS)


# -- RELIABILITY.md -------------------------------------------------------------------------------------


def excerpt(text: str, limit: int = 90) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown(results: Iterator[tuple[Row, Answer]]) -> str:
    lines = ["| case | surface | sent | expected | answered | message (excerpt) |",
             "|---|---|---|---|---|---|"]
    for row, answer in results:
        shown = answer.message if not row.ok else ("labels " + ", ".join(answer.labels))
        mark = "" if answer.status == row.status else " **MISMATCH**"
        lines.append(f"| {row.case} | {row.surface} | {excerpt(row.what, 60)} | {row.status} | "
                     f"{answer.status}{mark} | {excerpt(shown)} |")
    return "\n".join(lines)


def main() -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repo"
        rf.publish(repository)
        server = rf.SlowServer(repository, Path(tmp) / "server.log", *SERVER_ARGS).start()
        try:
            with Client(server.http_url, server.grpc_target) as client:
                answers = [(row, client.send(row.request)) for row in rows()]
        finally:
            server.kill()
    print(markdown(iter(answers)))
    mismatches = [row.id for row, answer in answers if answer.status != row.status]
    print(f"\n{len(answers)} rows, {len(mismatches)} mismatches {mismatches or ''}", file=sys.stderr)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
