"""Inference runtime adapters and the choice between them.

``lite`` (MindSpore Lite), ``onnxruntime``, ``openvino`` and ``mindspore`` implement
:class:`base.Runtime`. ``auto`` takes, for the requested precision and device, the runtimes
``inference.precision`` lists in its measured order (fp32 on the CPU: Lite, ONNX Runtime, OpenVINO,
MindSpore; bf16: OpenVINO; int8: OpenVINO, ONNX Runtime), keeps those installed here whose file the
version has and, for a reduced precision, those the version's export verified it on, and tries them in
that order. Choosing looks libraries up with ``importlib.util.find_spec`` and imports nothing heavy:
only the chosen adapter's library is imported, by :func:`create_runtime`. (MindSpore Lite and
MindSpore 2.10 cannot share a process.)

Besides the registry names, ``module.path:ClassName`` names a custom :class:`base.Runtime` subclass (an
extension point for vendor runtimes and for tests' fake models); only the server's operator sets
it, never a request. Python 3.7 compatible: worker processes import this package.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import TYPE_CHECKING

from inference.precision import runtimes_for, verified_runtimes
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
    "openvino": ("inference.runtimes.openvino_rt", "OpenVinoRuntime", "openvino"),
    "mindspore": ("inference.runtimes.mindspore_rt", "MindSporeRuntime", "mindspore"),
}
NAMES = ("auto", *RUNTIMES)
# runtimes a pip extra of the project installs (lite comes from MindSpore's site or the 3.7 venv)
EXTRAS = ("openvino", "mindspore")

__all__ = [
    "NAMES",
    "RUNTIMES",
    "ModelFileError",
    "Runtime",
    "RuntimeUnavailableError",
    "auto_candidates",
    "check_installed",
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


# the file each runtime needs to serve a precision (None: the runtime finds its own among several)
_NEEDS = {"onnxruntime": {"fp32": "onnx", "int8": "onnx_int8", "fp16": "onnx_fp16"},
          "openvino": {"fp32": "onnx", "bf16": "onnx", "int8": "onnx_int8"}}


def auto_candidates(
    version_dir: str, manifest: ModelManifest, precision: str = "fp32", device: str = "cpu"
) -> list[str]:
    """Runtimes ``auto`` would use for this version at ``precision`` on ``device``, best first (empty
    when none is installed, has its file, or, for a reduced precision, was verified by the export)."""
    verified = verified_runtimes(manifest.verification, precision) if precision != "fp32" else None
    out = []
    for name in runtimes_for(precision, device):
        if not is_installed(name):
            continue
        role = _NEEDS.get(name, {}).get(precision)
        if role is not None and not manifest.existing_path(version_dir, role):
            continue
        if verified is not None and name not in verified:
            continue
        out.append(name)
    return out


def select_runtime(
    requested: str, version_dir: str, manifest: ModelManifest, precision: str = "fp32", device: str = "cpu"
) -> str:
    """Resolve ``auto`` (else check the name) and log the choice; RuntimeUnavailableError when the
    runtime's library is missing from this Python or ``auto`` finds none for the precision."""
    if requested == "auto":
        candidates = auto_candidates(version_dir, manifest, precision, device)
        if not candidates:
            served = ", ".join(runtimes_for(precision, device)) or "none"
            raise RuntimeUnavailableError(
                f"runtime auto found no runtime for precision {precision} on {device}: it is served by "
                f"{served}; none is installed here with its file (and, below fp32, verified by the export)"
            )
        LOG.info("runtime auto chose %s (candidates %s)", candidates[0], candidates)
        return candidates[0]
    if ":" in requested:
        return requested
    if requested not in RUNTIMES:
        raise ValueError(f"unknown runtime {requested!r}: expected one of {', '.join(NAMES)} or module:Class")
    check_installed(requested)
    return requested


def check_installed(name: str) -> None:
    """RuntimeUnavailableError naming the package (and the project's extra that installs it) when
    runtime ``name``'s library is not installed in this Python; nothing for other names."""
    if name in RUNTIMES and not is_installed(name):
        extra = f" (pip install 'ddrnet-serve[{name}]')" if name in EXTRAS else ""
        raise RuntimeUnavailableError(
            f"runtime {name!r} needs the {RUNTIMES[name][2]!r} package, which is not installed in this "
            f"Python{extra}"
        )


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
