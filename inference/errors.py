"""What can go wrong while serving a model, independent of any protocol: :class:`ErrorKind` and
:class:`ServingError`.

The runtime layer raises these (a worker that died is UNAVAILABLE, a runtime failure in one batch is
INTERNAL) and the worker protocol carries the kinds' values between processes; the server raises the
same type for everything it answers besides success, and translates a kind into an HTTP status and a
gRPC code in one table (``server.errors``).

Standard library only, Python 3.7 syntax: worker processes import it.
"""

from __future__ import annotations

import enum


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
    CANCELLED = "cancelled"  # the client went away (e.g. an upload cut off): counted, never answered


class ServingError(Exception):
    """An error the server answers with: a kind, a message naming the problem, a metrics reason.

    ``reason`` is a short snake_case label for metrics and logs (defaults to the kind's value);
    ``retry_after_s`` is set for QUEUE_FULL (how long the queue needs to drain, an estimate).
    ``counted`` is set once the request it failed has been recorded in the request metrics, so a front
    end that refuses a request before the service core saw it knows to record it itself.
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
        self.counted = False

    def __repr__(self) -> str:
        return f"ServingError({self.kind.name}, {self.message!r}, reason={self.reason!r})"

    def __reduce__(self):  # keeps kind and reason across pickling
        return (_rebuild, (self.kind.value, self.message, self.reason, self.retry_after_s))


def _rebuild(kind: str, message: str, reason: str | None, retry_after_s: float | None) -> ServingError:
    return ServingError(ErrorKind(kind), message, reason=reason, retry_after_s=retry_after_s)
