"""The client library of ddrnet-serve: HTTP and gRPC clients (blocking and asyncio), typed results and
exceptions. A standalone library to install beside an application: it imports none of the server,
runtime or model code (only the generated ``protos``); the command-line tools built on it live in
``cli`` and ``ops``.

    from clients import HttpClient, GrpcClient

    with GrpcClient("127.0.0.1:8001", model="digits") as client:
        print(client.classify("photo.jpg", top_k=3).top.label)

Names are imported lazily, so ``import clients`` costs nothing until a client is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "HttpClient": "clients.http_client",
    "AsyncHttpClient": "clients.http_client",
    "GrpcClient": "clients.grpc_client",
    "AsyncGrpcClient": "clients.grpc_client",
    "RetryPolicy": "clients.retry",
    "NO_RETRY": "clients.retry",
    "Prediction": "clients.types",
    "ImageResult": "clients.types",
    "ClassifyResult": "clients.types",
    "Logits": "clients.types",
    "ClientError": "clients.errors",
    "InvalidInputError": "clients.errors",
    "PayloadTooLargeError": "clients.errors",
    "UnsupportedMediaError": "clients.errors",
    "UnauthenticatedError": "clients.errors",
    "NotFoundError": "clients.errors",
    "UnavailableError": "clients.errors",
    "QueueFullError": "clients.errors",
    "DeadlineExceededError": "clients.errors",
    "ServerInternalError": "clients.errors",
    "CancelledError": "clients.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clients' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
