"""The control protocol between the server and a runtime worker process.

Frames: a 4-byte big-endian length, then that many bytes of UTF-8 JSON holding one object. The
server writes requests to the worker's stdin and reads replies from its stdout (the worker moves
everything libraries print to stderr first). Tensors never travel here: they sit in shared memory
(``inference.shm``), and messages carry only batch sizes. One request is answered by one reply, in order.
Every request carries an envelope ``id`` (an integer) that its reply repeats, so a late reply (to a
request the server stopped waiting for) is recognised and dropped, never taken for the next one's.

Requests (``op``):

- ``load``: ``version_dir``, ``manifest`` (model.json), ``runtime`` (``auto``, ``lite``,
  ``onnxruntime``, ``mindspore`` or ``module:Class``), ``device``, ``device_id``, ``threads``,
  ``options``, ``input``/``output`` (shared-memory specs: path, shape ``[max_batch, ...]``, dtype),
  ``log_level``. Reply: ``ready`` with ``describe`` (the runtime's), ``batch_sizes``, ``load_s``, ``pid``.
- ``infer``: ``n`` (rows of the input array to use). Reply: ``shape`` of the logits written to the
  output array, ``infer_s``.
- ``warmup``: ``batch_sizes``. Reply: ``timings`` (batch size -> seconds).
- ``shutdown``: reply, then the worker exits 0.

Replies are ``{"ok": true, ...}`` or ``{"ok": false, "error": KIND, "message": "..."}`` where KIND
is a ``inference.errors.ErrorKind`` value (``internal`` for a runtime failure in one batch,
``unavailable`` for a missing runtime/device, ``invalid_argument`` for a bad request).

Python 3.7 compatible (the worker side may run under 3.7).
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

HEADER = struct.Struct(">I")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ProtocolError(Exception):
    """A frame or message that does not follow this protocol."""


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return HEADER.pack(len(body)) + body


def decode_length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"frame announces {length} bytes, more than {MAX_MESSAGE_BYTES}")
    return length


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body.decode("utf-8"))
    except ValueError as exc:
        raise ProtocolError(f"frame is not UTF-8 JSON ({exc})") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a message must be a JSON object, got {type(message).__name__}")
    return message


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_message(stream: BinaryIO) -> dict[str, Any] | None:
    """Blocking read of one message (worker side); None at a clean end of stream."""
    header = _read_exact(stream, HEADER.size)
    if header is None:
        return None
    body = _read_exact(stream, decode_length(header))
    if body is None:
        raise ProtocolError("stream ended inside a frame")
    return decode_body(body)


def write_message(stream: BinaryIO, message: dict[str, Any]) -> None:
    stream.write(encode(message))
    stream.flush()


# -- requests ------------------------------------------------------------------------------------------


@dataclass
class LoadRequest:
    version_dir: str
    manifest: dict[str, Any]
    runtime: str
    input: dict[str, Any]
    output: dict[str, Any]
    device: str = "cpu"
    device_id: int = 0
    threads: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    log_level: str = "warning"
    op: str = "load"


@dataclass
class InferRequest:
    n: int
    op: str = "infer"


@dataclass
class WarmupRequest:
    batch_sizes: list[int]
    op: str = "warmup"


@dataclass
class ShutdownRequest:
    op: str = "shutdown"


REQUESTS = {"load": LoadRequest, "infer": InferRequest, "warmup": WarmupRequest, "shutdown": ShutdownRequest}


def to_dict(request: Any) -> dict[str, Any]:
    return asdict(request)


def parse_request(message: dict[str, Any]) -> Any:
    """The request dataclass for ``message`` (its envelope ``id`` aside); ProtocolError naming an
    unknown op or bad fields."""
    op = message.get("op")
    cls = REQUESTS.get(op) if isinstance(op, str) else None
    if cls is None:
        raise ProtocolError(f"unknown op {op!r}: expected one of {', '.join(REQUESTS)}")
    fields_ = {key: value for key, value in message.items() if key != "id"}
    try:
        return cls(**fields_)
    except TypeError as exc:
        raise ProtocolError(f"bad {op} message: {exc}") from None


def ok(**fields: Any) -> dict[str, Any]:
    reply = {"ok": True}
    reply.update(fields)
    return reply


def error(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": kind, "message": message}
