"""server.errors: the one error list, its HTTP and gRPC tables, and the exception mapping."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from server import errors
from server.errors import ErrorKind, ServingError

REPO = Path(__file__).resolve().parents[2]

# ARCHITECTURE.md, "Server interfaces": condition -> HTTP / gRPC.
EXPECTED = {
    ErrorKind.INVALID_ARGUMENT: (400, grpc.StatusCode.INVALID_ARGUMENT),
    ErrorKind.PAYLOAD_TOO_LARGE: (413, grpc.StatusCode.INVALID_ARGUMENT),
    ErrorKind.UNSUPPORTED_MEDIA: (415, grpc.StatusCode.INVALID_ARGUMENT),
    ErrorKind.UNPROCESSABLE: (422, grpc.StatusCode.INVALID_ARGUMENT),
    ErrorKind.NOT_FOUND: (404, grpc.StatusCode.NOT_FOUND),
    ErrorKind.QUEUE_FULL: (503, grpc.StatusCode.UNAVAILABLE),
    ErrorKind.DEADLINE_EXCEEDED: (504, grpc.StatusCode.DEADLINE_EXCEEDED),
    ErrorKind.UNAVAILABLE: (503, grpc.StatusCode.UNAVAILABLE),
    ErrorKind.INTERNAL: (500, grpc.StatusCode.INTERNAL),
    ErrorKind.UNAUTHENTICATED: (401, grpc.StatusCode.UNAUTHENTICATED),
    ErrorKind.CANCELLED: (499, grpc.StatusCode.CANCELLED),
}


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_both_tables_cover_every_kind(kind: ErrorKind) -> None:
    err = ServingError(kind, "x")
    assert (errors.http_status(err), errors.grpc_status(err)) == EXPECTED[kind]
    assert errors.grpc_code_number(err) == EXPECTED[kind][1].value[0]


def test_retry_after_header_is_whole_seconds_at_least_one() -> None:
    assert errors.http_headers(ServingError(ErrorKind.QUEUE_FULL, "full", retry_after_s=0.2)) == {
        "Retry-After": "1"
    }
    assert errors.http_headers(ServingError(ErrorKind.QUEUE_FULL, "full", retry_after_s=2.1)) == {
        "Retry-After": "3"
    }
    assert errors.http_headers(ServingError(ErrorKind.INTERNAL, "boom")) == {}


def test_body_and_reason() -> None:
    err = ServingError(ErrorKind.NOT_FOUND, "unknown model 'x'")
    assert errors.http_body(err) == {"error": "unknown model 'x'"}
    assert err.reason == "not_found"
    assert ServingError(ErrorKind.NOT_FOUND, "m", reason="unknown_version").reason == "unknown_version"
    assert str(err) == "unknown model 'x'"


def test_pickling_keeps_kind_reason_and_retry_after() -> None:
    err = ServingError(ErrorKind.QUEUE_FULL, "full", reason="queue_full", retry_after_s=1.5)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.kind, copy.message, copy.reason, copy.retry_after_s) == (
        ErrorKind.QUEUE_FULL, "full", "queue_full", 1.5,
    )


def test_unknown_exception_is_internal_without_details() -> None:
    mapped = errors.from_exception(KeyError("/secret/path"))
    assert mapped.kind is ErrorKind.INTERNAL
    assert "KeyError" in mapped.message and "/secret/path" not in mapped.message
    same = ServingError(ErrorKind.NOT_FOUND, "x")
    assert errors.from_exception(same) is same


@pytest.mark.parametrize(
    ("error", "reason", "kind", "status"),
    [
        ("ImageDecodeError", "empty", ErrorKind.INVALID_ARGUMENT, 400),
        ("ImageDecodeError", "undecodable", ErrorKind.INVALID_ARGUMENT, 400),
        ("ImageDecodeError", "truncated", ErrorKind.INVALID_ARGUMENT, 400),
        ("ImageDecodeError", "unsupported_format", ErrorKind.UNSUPPORTED_MEDIA, 415),
        ("ImageDecodeError", "unsupported_mode", ErrorKind.UNSUPPORTED_MEDIA, 415),
        ("ImageTooLargeError", "too_many_pixels", ErrorKind.PAYLOAD_TOO_LARGE, 413),
    ],
)
def test_preprocessing_errors_map_to_client_errors(
    error: str, reason: str, kind: ErrorKind, status: int
) -> None:
    preprocess = pytest.importorskip("model.preprocess")
    assert reason in preprocess.ERROR_REASONS
    exc = getattr(preprocess, error)(f"image 0: something about {reason}", reason)
    mapped = errors.from_exception(exc)
    assert (mapped.kind, errors.http_status(mapped)) == (kind, status)
    assert errors.grpc_status(mapped) == grpc.StatusCode.INVALID_ARGUMENT
    assert mapped.message == str(exc) and mapped.reason == reason


def test_every_preprocess_reason_has_a_kind() -> None:
    preprocess = pytest.importorskip("model.preprocess")
    assert set(preprocess.ERROR_REASONS) == set(errors.IMAGE_ERROR_KINDS)


def test_real_decode_failure_maps_to_400() -> None:
    preprocess = pytest.importorskip("model.preprocess")
    with pytest.raises(preprocess.ImageError) as info:
        preprocess.decode_image(b"this is not an image")
    mapped = errors.from_exception(info.value)
    assert errors.http_status(mapped) == 400 and "decode" in mapped.message


def test_error_kinds_importable_under_python37() -> None:
    """Worker processes may run Python 3.7 (MindSpore Lite) and import inference.errors there."""
    python37 = shutil.which("python3.7") or "/root/.pyenv/versions/3.7.16/bin/python3.7"
    if not os.access(python37, os.X_OK):
        pytest.skip("no Python 3.7 interpreter on this machine")
    code = (
        "import sys, pickle, inference.errors as e\n"
        "err = e.ServingError(e.ErrorKind.QUEUE_FULL, 'full', retry_after_s=0.5)\n"
        "back = pickle.loads(pickle.dumps(err))\n"
        "assert back.kind is e.ErrorKind.QUEUE_FULL and back.retry_after_s == 0.5\n"
        "assert 'grpc' not in sys.modules and 'numpy' not in sys.modules\n"
    )
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "PYENV_VERSION": "3.7.16"}
    done = subprocess.run([python37, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
