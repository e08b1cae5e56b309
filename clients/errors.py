"""Client-side exceptions: one class per server error class, and the mapping from HTTP statuses and
gRPC status codes onto them (the inverse of ``server/errors.py``'s two tables).

| class                    | HTTP             | gRPC                                   | retried |
|--------------------------|------------------|----------------------------------------|---------|
| InvalidInputError        | 400, 422         | INVALID_ARGUMENT                       | no      |
| PayloadTooLargeError     | 413              | (INVALID_ARGUMENT)                     | no      |
| UnsupportedMediaError    | 415              | (INVALID_ARGUMENT)                     | no      |
| UnauthenticatedError     | 401              | UNAUTHENTICATED                        | no      |
| NotFoundError            | 404              | NOT_FOUND                              | no      |
| QueueFullError           | 503 + Retry-After | UNAVAILABLE + grpc-retry-pushback-ms  | yes     |
| UnavailableError         | 503, no answer   | UNAVAILABLE (also: cannot connect)     | yes     |
| DeadlineExceededError    | 504, client timeout | DEADLINE_EXCEEDED                   | no      |
| ServerInternalError      | 500, other 5xx   | INTERNAL, UNKNOWN, others              | no      |

gRPC carries one INVALID_ARGUMENT for all four input errors, so over gRPC they arrive as
:class:`InvalidInputError`; the payload/media subclasses only come from HTTP. ``QueueFullError`` is an
``UnavailableError`` (``except UnavailableError`` catches both). Every exception keeps the server's
message (``{"error": "..."}`` body or gRPC details) as its text.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Mapping
from typing import Any

#: gRPC trailer the server sets on a queue-full UNAVAILABLE (gRFC A6 "server pushback").
PUSHBACK_TRAILER = "grpc-retry-pushback-ms"


class ClientError(Exception):
    """Base class: any failed request. ``status`` is the HTTP status (None over gRPC), ``grpc_code``
    the gRPC status name (None over HTTP); ``kind`` is a short snake_case name for reports."""

    kind = "error"
    retryable = False

    def __init__(self, message: str, *, status: int | None = None, grpc_code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.grpc_code = grpc_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status}, grpc_code={self.grpc_code})"


class InvalidInputError(ClientError):
    """The request was refused as malformed: undecodable image, bad field or value (400 / 422)."""

    kind = "invalid_input"


class PayloadTooLargeError(InvalidInputError):
    """The body, an image or the image count exceeds the server's limits (413)."""

    kind = "payload_too_large"


class UnsupportedMediaError(InvalidInputError):
    """Unsupported content type, encoding or image format (415)."""

    kind = "unsupported_media"


class UnauthenticatedError(ClientError):
    """Missing or wrong bearer token (401 / UNAUTHENTICATED)."""

    kind = "unauthenticated"


class NotFoundError(ClientError):
    """Unknown model or version (404 / NOT_FOUND)."""

    kind = "not_found"


class UnavailableError(ClientError):
    """The server cannot take the request now: not ready, shutting down, restarting an instance,
    or not reachable at all. Retried with backoff."""

    kind = "unavailable"
    retryable = True


class QueueFullError(UnavailableError):
    """The model's queue is full (503 with Retry-After / UNAVAILABLE with a pushback trailer).
    ``retry_after`` is the server's hint in seconds (None when it gave none)."""

    kind = "queue_full"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class DeadlineExceededError(ClientError):
    """The request's deadline passed: in the server's queue (504 / DEADLINE_EXCEEDED) or on the
    client while waiting for the answer."""

    kind = "deadline_exceeded"


class ServerInternalError(ClientError):
    """The model failed on the batch holding this request (500 / INTERNAL), or the server answered
    something this client cannot read."""

    kind = "internal"


class CancelledError(ClientError):
    """The call was cancelled (gRPC CANCELLED)."""

    kind = "cancelled"


_HTTP: dict[int, type[ClientError]] = {
    400: InvalidInputError,
    401: UnauthenticatedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaError,
    422: InvalidInputError,
    500: ServerInternalError,
    503: UnavailableError,
    504: DeadlineExceededError,
}

_GRPC: dict[str, type[ClientError]] = {
    "INVALID_ARGUMENT": InvalidInputError,
    "OUT_OF_RANGE": InvalidInputError,
    "FAILED_PRECONDITION": InvalidInputError,
    "UNAUTHENTICATED": UnauthenticatedError,
    "PERMISSION_DENIED": UnauthenticatedError,
    "NOT_FOUND": NotFoundError,
    "UNAVAILABLE": UnavailableError,
    "RESOURCE_EXHAUSTED": InvalidInputError,  # grpc's own message size limit
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "CANCELLED": CancelledError,
    "INTERNAL": ServerInternalError,
    "UNKNOWN": ServerInternalError,
    "UNIMPLEMENTED": ServerInternalError,
    "DATA_LOSS": ServerInternalError,
}


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` value (delta-seconds or an HTTP-date); None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _message_from_body(status: int, body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"]
    text = body.decode("utf-8", "replace").strip()
    return text[:300] if text else f"HTTP {status}"


def from_http(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> ClientError:
    """The exception for an HTTP error answer (status >= 400)."""
    headers = headers or {}
    message = _message_from_body(status, body)
    if status == 503:
        retry_after = parse_retry_after(headers.get("retry-after") or headers.get("Retry-After"))
        if retry_after is not None:
            return QueueFullError(message, retry_after=retry_after, status=status)
    cls = _HTTP.get(status)
    if cls is None:
        cls = ServerInternalError if status >= 500 else InvalidInputError if status >= 400 else ClientError
    return cls(message, status=status)


def _metadata_value(metadata: Any, key: str) -> str | None:
    for item in metadata or ():
        k, v = item[0], item[1]
        if k.lower() == key:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


def from_grpc_code(code_name: str, message: str, trailing_metadata: Any = None) -> ClientError:
    """The exception for a gRPC status name (``"UNAVAILABLE"``) and its details."""
    if code_name == "UNAVAILABLE":
        pushback = _metadata_value(trailing_metadata, PUSHBACK_TRAILER)
        if pushback is not None:
            try:
                retry_after = max(0.0, int(pushback) / 1000.0)
            except ValueError:
                retry_after = None
            return QueueFullError(message, retry_after=retry_after, grpc_code=code_name)
    cls = _GRPC.get(code_name, ServerInternalError)
    return cls(message, grpc_code=code_name)


def from_grpc(error: Any) -> ClientError:
    """The exception for a ``grpc.RpcError`` (sync) or ``grpc.aio.AioRpcError``."""
    code = error.code()
    name = getattr(code, "name", str(code))
    message = error.details() or name
    try:
        trailers = error.trailing_metadata()
    except Exception:  # a sync RpcError that is not a Call carries none
        trailers = None
    return from_grpc_code(name, message, trailers)


def from_grpc_number(code: int, message: str) -> ClientError:
    """The exception for a numeric gRPC code (the per-message ``Status`` of ``ClassifyStream``)."""
    import grpc

    for status in grpc.StatusCode:
        if status.value[0] == code:
            return from_grpc_code(status.name, message)
    return ServerInternalError(message, grpc_code=str(code))
