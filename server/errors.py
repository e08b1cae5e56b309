"""The one internal error list's two translations (HTTP status, gRPC status code), side by side.

Everything the server can answer besides success is a :class:`ServingError` with an :class:`ErrorKind`
(both defined by the runtime layer, ``inference.errors``, whose worker processes raise them too).
Front ends never pick status codes themselves: they call :func:`http_status` / :func:`grpc_status`
(Triton's one-list-two-tables habit; MLServer's errors that carry their status). Other exceptions
become a ServingError through :func:`from_exception` (unknown ones are INTERNAL, never a traceback).
grpc is imported lazily (the HTTP-only paths and the tests of this table do not need it).
"""

from __future__ import annotations

import math

from inference.errors import ErrorKind, ServingError
from model.preprocess import ImageError, ImageTooLargeError

__all__ = [
    "GRPC_STATUS_NAME",
    "HTTP_STATUS",
    "ErrorKind",
    "ServingError",
    "from_exception",
    "grpc_code_number",
    "grpc_status",
    "http_body",
    "http_headers",
    "http_status",
]


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
    ErrorKind.CANCELLED:         (499, "CANCELLED"),  # nginx's "client closed request"; nobody reads it
}  # fmt: skip
HTTP_STATUS: dict[ErrorKind, int] = {kind: pair[0] for kind, pair in _TABLE.items()}
GRPC_STATUS_NAME: dict[ErrorKind, str] = {kind: pair[1] for kind, pair in _TABLE.items()}


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
    "too_much_memory": ErrorKind.PAYLOAD_TOO_LARGE,
}


def _from_image_error(exc: BaseException) -> ServingError | None:
    if not isinstance(exc, ImageError):
        return None
    reason = str(exc.reason or "invalid_image")
    if isinstance(exc, ImageTooLargeError):
        kind = ErrorKind.PAYLOAD_TOO_LARGE
    else:
        kind = IMAGE_ERROR_KINDS.get(reason, ErrorKind.INVALID_ARGUMENT)
    return ServingError(kind, str(exc), reason=reason)
