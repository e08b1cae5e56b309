"""One internal error list and its two translations (HTTP status, gRPC status code), side by side.

Everything the server can answer besides success is a :class:`ServingError` with a :class:`ErrorKind`.
Front ends never pick status codes themselves: they call :func:`http_status` / :func:`grpc_status`
(Triton's one-list-two-tables habit; MLServer's errors that carry their status). Other exceptions
become a ServingError through :func:`from_exception` (unknown ones are INTERNAL, never a traceback).

This module must stay importable by a Python 3.7 worker process with only the standard library: grpc
is imported lazily, and nothing here imports model code.
"""

from __future__ import annotations

import enum
import math
import sys


class ErrorKind(enum.Enum):
    """What went wrong, independent of the protocol. The value is the default metrics ``reason``."""

    INVALID_ARGUMENT = "invalid_argument"  # bad field, undecodable image, bad tensor
    PAYLOAD_TOO_LARGE = "payload_too_large"  # body over the size limit, image over the pixel limit
    UNSUPPORTED_MEDIA = "unsupported_media"  # content type / image format the server does not take
    UNPROCESSABLE = "unprocessable"  # well-formed but semantically wrong (e.g. schema validation)
    NOT_FOUND = "not_found"  # unknown model or version
    QUEUE_FULL = "queue_full"  # the model's queue is full: retry later (carries retry_after_s)
    DEADLINE_EXCEEDED = "deadline_exceeded"  # the request's deadline passed before inference
    UNAVAILABLE = "unavailable"  # not ready, shutting down, or the instance died mid-batch
    INTERNAL = "internal"  # a runtime failure in a batch, or a bug
    UNAUTHENTICATED = "unauthenticated"  # missing or wrong bearer token


#          kind                          HTTP  gRPC (grpc.StatusCode member name)
_TABLE = {
    ErrorKind.INVALID_ARGUMENT:  (400, "INVALID_ARGUMENT"),
    ErrorKind.PAYLOAD_TOO_LARGE: (413, "INVALID_ARGUMENT"),
    ErrorKind.UNSUPPORTED_MEDIA: (415, "INVALID_ARGUMENT"),
    ErrorKind.UNPROCESSABLE:     (422, "INVALID_ARGUMENT"),
    ErrorKind.NOT_FOUND:         (404, "NOT_FOUND"),
    ErrorKind.QUEUE_FULL:        (503, "UNAVAILABLE"),
    ErrorKind.DEADLINE_EXCEEDED: (504, "DEADLINE_EXCEEDED"),
    ErrorKind.UNAVAILABLE:       (503, "UNAVAILABLE"),
    ErrorKind.INTERNAL:          (500, "INTERNAL"),
    ErrorKind.UNAUTHENTICATED:   (401, "UNAUTHENTICATED"),
}  # fmt: skip
HTTP_STATUS: dict[ErrorKind, int] = {kind: pair[0] for kind, pair in _TABLE.items()}
GRPC_STATUS_NAME: dict[ErrorKind, str] = {kind: pair[1] for kind, pair in _TABLE.items()}


class ServingError(Exception):
    """An error the server answers with: a kind, a message naming the problem, a metrics reason.

    ``reason`` is a short snake_case label for metrics and logs (defaults to the kind's value);
    ``retry_after_s`` is set for QUEUE_FULL (how long the queue needs to drain, an estimate).
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        reason: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.reason = reason or kind.value
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return f"ServingError({self.kind.name}, {self.message!r}, reason={self.reason!r})"

    def __reduce__(self):  # keeps kind and reason across pickling (worker → server messages)
        return (_rebuild, (self.kind.value, self.message, self.reason, self.retry_after_s))


def _rebuild(kind: str, message: str, reason: str | None, retry_after_s: float | None) -> ServingError:
    return ServingError(ErrorKind(kind), message, reason=reason, retry_after_s=retry_after_s)


def http_status(err: ServingError) -> int:
    """The HTTP status code for ``err`` (ARCHITECTURE.md's table)."""
    return HTTP_STATUS[err.kind]


def http_headers(err: ServingError) -> dict[str, str]:
    """Extra HTTP response headers: ``Retry-After`` (whole seconds, at least 1) when the error has one."""
    if err.retry_after_s is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(err.retry_after_s)))}


def http_body(err: ServingError) -> dict[str, str]:
    """The JSON error body, in the Open Inference Protocol's ``{"error": "..."}`` shape."""
    return {"error": err.message}


def grpc_status(err: ServingError):
    """The ``grpc.StatusCode`` for ``err``."""
    import grpc  # lazily: worker processes import this module without grpc installed

    return grpc.StatusCode[GRPC_STATUS_NAME[err.kind]]


def grpc_code_number(err: ServingError) -> int:
    """The numeric gRPC status code (google.rpc.Code), for per-message statuses in streams."""
    return grpc_status(err).value[0]


def from_exception(exc: BaseException) -> ServingError:
    """Map any exception to the ServingError to answer with.

    ServingError passes through; the image errors of ``model.preprocess`` become client errors
    keeping their message and ``reason`` (see :data:`IMAGE_ERROR_KINDS`); anything else is INTERNAL
    with a message that names the exception type but leaks no details or traceback.
    """
    if isinstance(exc, ServingError):
        return exc
    mapped = _from_image_error(exc)
    if mapped is not None:
        return mapped
    return ServingError(ErrorKind.INTERNAL, f"internal error ({type(exc).__name__})")


#: model.preprocess ``ImageError.reason`` -> kind (ImageTooLargeError is PAYLOAD_TOO_LARGE whatever its
#: reason; a reason not listed here is INVALID_ARGUMENT).
IMAGE_ERROR_KINDS = {
    "empty": ErrorKind.INVALID_ARGUMENT,
    "undecodable": ErrorKind.INVALID_ARGUMENT,
    "truncated": ErrorKind.INVALID_ARGUMENT,
    "unsupported_format": ErrorKind.UNSUPPORTED_MEDIA,
    "unsupported_mode": ErrorKind.UNSUPPORTED_MEDIA,
    "too_many_pixels": ErrorKind.PAYLOAD_TOO_LARGE,
}


def _from_image_error(exc: BaseException) -> ServingError | None:
    # An instance of model.preprocess's classes can only exist once that module is imported, so look
    # it up instead of importing it (it needs Pillow, which a worker process may lack).
    preprocess = sys.modules.get("model.preprocess")
    image_error = getattr(preprocess, "ImageError", None)
    if image_error is None or not isinstance(exc, image_error):
        return None
    reason = str(getattr(exc, "reason", "") or "invalid_image")
    if isinstance(exc, preprocess.ImageTooLargeError):
        kind = ErrorKind.PAYLOAD_TOO_LARGE
    else:
        kind = IMAGE_ERROR_KINDS.get(reason, ErrorKind.INVALID_ARGUMENT)
    return ServingError(kind, str(exc), reason=reason)
