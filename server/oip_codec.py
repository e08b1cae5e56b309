"""Open Inference Protocol v2 tensor encodings, shared by the REST and gRPC front ends.

Three wire forms of a tensor are decoded here into what :class:`server.core.InferInput` holds (a
numpy array for numeric types, a list of bytes for BYTES):

- *raw* bytes (gRPC ``raw_input_contents``; REST's binary tensor data extension): little-endian,
  row-major; a BYTES tensor is a sequence of (uint32 little-endian length, bytes) elements;
- REST JSON ``data``: a flat or nested list of numbers, or for BYTES a list of strings. JSON has no
  binary strings, so BYTES elements in JSON are **base64** (encoded images are not UTF-8 text);
- gRPC typed ``contents`` (``fp32_contents``, ``bytes_contents`` ...), see :data:`CONTENTS_FIELD`.

Admission comes first (:func:`admit`): a tensor whose declared shape asks for more images than a
request may carry is refused before a single element is decoded (a BYTES input of millions of empty
elements costs nothing to refuse). Every size is then checked against the declared shape before
anything is allocated, and every failure is a ServingError naming the tensor (INVALID_ARGUMENT, or
PAYLOAD_TOO_LARGE for too many images).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from server.errors import ErrorKind, ServingError

#: OIP datatype → little-endian numpy dtype (BYTES is handled separately).
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES = (*NUMPY_DTYPES, "BYTES")

#: OIP datatype → the InferTensorContents field that carries it (gRPC typed contents).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}  # fmt: skip

_LENGTH = struct.Struct("<I")


def _invalid(message: str) -> ServingError:
    return ServingError(ErrorKind.INVALID_ARGUMENT, message)


def check_datatype(name: str, datatype: Any) -> str:
    if datatype not in DATATYPES:
        raise _invalid(f"input {name!r} has unknown datatype {datatype!r} (known: {', '.join(DATATYPES)})")
    return datatype


def check_shape(name: str, shape: Any) -> list[int]:
    """A list of non-negative integer dimensions."""
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _invalid(f"input {name!r} has an invalid shape {shape!r}: expected a list of integers >= 0")
    return [int(d) for d in shape]


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1


def admit(name: str, datatype: str, shape: Sequence[int], max_images: int) -> None:
    """Refuse, before decoding, a tensor that declares more images than ``max_images``: a BYTES tensor
    holds one encoded image per element, a tensor of rank 2 or more one image per row of its first
    (batch) dimension. (A rank-1 numeric tensor has no batch dimension; the core refuses its shape.)"""
    if datatype == "BYTES":
        count = element_count(shape)
    elif len(shape) >= 2:
        count = shape[0]
    else:
        return
    if count > max_images:
        raise ServingError(
            ErrorKind.PAYLOAD_TOO_LARGE,
            f"input {name!r} declares {count} images (shape {list(shape)}); at most {max_images} per request",
            reason="too_many_images",
        )


Decoded = np.ndarray | list[bytes]


def decode_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> Decoded:
    """Decode raw tensor bytes (see the module docstring) into an array of ``shape`` or a BYTES list."""
    count = element_count(shape)
    if datatype == "BYTES":
        return unpack_bytes(name, raw, count)
    dtype = NUMPY_DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise _invalid(
            f"input {name!r}: {len(raw)} bytes of {datatype} data for shape {list(shape)} "
            f"(expected {expected})"
        )
    return _reshape(name, np.frombuffer(raw, dtype=dtype), shape)


def unpack_bytes(name: str, raw: bytes | memoryview, count: int) -> list[bytes]:
    """Split length-prefixed BYTES elements; exactly ``count`` elements must fill ``raw``."""
    view = memoryview(raw)
    out: list[bytes] = []
    offset = 0
    while offset < len(view):
        if len(view) - offset < _LENGTH.size:
            raise _invalid(f"input {name!r}: BYTES data ends inside an element length")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if length > len(view) - offset:
            raise _invalid(f"input {name!r}: BYTES element {len(out)} declares {length} bytes, "
                           f"only {len(view) - offset} left")
        out.append(bytes(view[offset : offset + length]))
        offset += length
        if len(out) > count:
            break
    if len(out) != count:
        raise _invalid(f"input {name!r}: BYTES data holds {len(out)} elements, shape says {count}")
    return out


def pack_bytes(elements: Sequence[bytes]) -> bytes:
    """The raw encoding of a BYTES tensor (the inverse of :func:`unpack_bytes`)."""
    return b"".join(_LENGTH.pack(len(e)) + bytes(e) for e in elements)


def decode_json(name: str, datatype: str, shape: Sequence[int], data: Any) -> Decoded:
    """Decode REST JSON ``data`` (flat or nested lists; BYTES as base64 strings)."""
    count = element_count(shape)
    if datatype == "BYTES":
        flat = _flatten_strings(name, data)
        if len(flat) != count:
            raise _invalid(f"input {name!r} has {len(flat)} elements, shape {list(shape)} needs {count}")
        return [b64decode(f"input {name!r} element {i}", s) for i, s in enumerate(flat)]
    try:
        array = np.asarray(data, dtype=NUMPY_DTYPES[datatype])
    except (ValueError, TypeError, OverflowError):
        raise _invalid(f"input {name!r}: data is not a (nested) list of {datatype} numbers") from None
    if array.size != count:
        raise _invalid(f"input {name!r} has {array.size} values, shape {list(shape)} needs {count}")
    return _reshape(name, array, shape)


def decode_contents(name: str, datatype: str, shape: Sequence[int], contents: Any) -> Decoded:
    """Decode gRPC typed ``InferTensorContents``."""
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise _invalid(f"input {name!r}: datatype {datatype} cannot be sent as typed contents; use raw")
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise _invalid(f"input {name!r} has {len(values)} {field} values, shape {list(shape)} needs {count}")
    if datatype == "BYTES":
        return [bytes(v) for v in values]
    return _reshape(name, np.asarray(values, dtype=NUMPY_DTYPES[datatype]), shape)


def _reshape(name: str, array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    try:
        return array.reshape(shape)
    except ValueError:  # e.g. [0, 2**63 - 1]: no elements, but dimensions numpy cannot represent
        raise _invalid(f"input {name!r}: shape {list(shape)} has dimensions too large to represent") from None


def _flatten_strings(name: str, data: Any) -> list[str]:
    out: list[str] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, list):
            stack.extend(reversed(item))
        else:
            raise _invalid(f"input {name!r}: BYTES data must be base64 strings, got {type(item).__name__}")
    return out


def b64decode(what: str, text: str) -> bytes:
    """Strict base64 (a ``data:...;base64,`` URL prefix is allowed); INVALID_ARGUMENT naming ``what``."""
    if text.startswith("data:") and ";base64," in text[:100]:  # data URL, as browsers produce
        text = text.split(";base64,", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"{what} is not valid base64") from None
