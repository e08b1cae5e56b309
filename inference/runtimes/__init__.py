"""Inference runtime adapters and the choice between them.

``lite`` (MindSpore Lite), ``onnxruntime`` and ``mindspore`` implement :class:`base.Runtime`.
``auto`` picks Lite when ``mindspore_lite`` is importable in this Python, else ONNX Runtime when the
version has ``model.onnx`` and onnxruntime is installed, else MindSpore. Choosing looks libraries up
with ``importlib.util.find_spec`` and imports nothing heavy: only the chosen adapter's library is
imported, by :func:`create_runtime`. (MindSpore Lite and MindSpore 2.10 cannot share a process.)

Besides the four names, ``module.path:ClassName`` names a custom :class:`base.Runtime` subclass (an
extension point for vendor runtimes and for tests' fake models); only the server's operator sets
it, never a request. Python 3.7 compatible: worker processes import this package.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import TYPE_CHECKING

from inference.runtimes.base import (
    ModelFileError,
    Runtime,
    RuntimeUnavailableError,
)

if TYPE_CHECKING:
    from model.manifest import ModelManifest

LOG = logging.getLogger(__name__)

RUNTIMES = {
    "lite": ("inference.runtimes.lite_rt", "LiteRuntime", "mindspore_lite"),
    "onnxruntime": ("inference.runtimes.onnxruntime_rt", "OnnxRuntime", "onnxruntime"),
    "mindspore": ("inference.runtimes.mindspore_rt", "MindSporeRuntime", "mindspore"),
}
NAMES = ("auto", *RUNTIMES)

__all__ = [
    "NAMES",
    "RUNTIMES",
    "ModelFileError",
    "Runtime",
    "RuntimeUnavailableError",
    "auto_candidates",
    "create_runtime",
    "is_installed",
    "select_runtime",
]


def is_installed(name: str) -> bool:
    """Whether the library behind runtime ``name`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(RUNTIMES[name][2]) is not None
    except (ImportError, ValueError):
        return False


def auto_candidates(version_dir: str, manifest: ModelManifest) -> list[str]:
    """Runtimes ``auto`` would use for this version, best first (empty when none is installed)."""
    out = []
    if is_installed("lite"):
        out.append("lite")
    if is_installed("onnxruntime") and manifest.existing_path(version_dir, "onnx"):
        out.append("onnxruntime")
    if is_installed("mindspore"):
        out.append("mindspore")
    return out


def select_runtime(requested: str, version_dir: str, manifest: ModelManifest) -> str:
    """Resolve ``auto`` (else check the name) and log the choice; RuntimeUnavailableError when the
    runtime's library is missing from this Python."""
    if requested == "auto":
        candidates = auto_candidates(version_dir, manifest)
        if not candidates:
            raise RuntimeUnavailableError(
                "runtime auto found none of mindspore_lite, onnxruntime (with model.onnx) or mindspore"
            )
        LOG.info("runtime auto chose %s (candidates %s)", candidates[0], candidates)
        return candidates[0]
    if ":" in requested:
        return requested
    if requested not in RUNTIMES:
        raise ValueError(f"unknown runtime {requested!r}: expected one of {', '.join(NAMES)} or module:Class")
    if not is_installed(requested):
        raise RuntimeUnavailableError(
            f"runtime {requested!r} needs the {RUNTIMES[requested][2]!r} package, "
            "which is not installed in this Python"
        )
    return requested


def create_runtime(name: str) -> Runtime:
    """An unloaded adapter for a concrete runtime name (not ``auto``) or ``module.path:ClassName``."""
    if ":" in name:
        module_name, _, class_name = name.partition(":")
    elif name in RUNTIMES:
        module_name, class_name, _ = RUNTIMES[name]
    else:
        raise ValueError(f"unknown runtime {name!r}: expected one of {', '.join(RUNTIMES)} or module:Class")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        raise ValueError(f"runtime {name!r} does not name a Runtime subclass (inference.runtimes.base)")
    return cls()
