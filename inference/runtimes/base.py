"""The one interface every inference runtime adapter implements, and the helpers they share.

A runtime adapter wraps one inference library (MindSpore Lite, MindSpore, ONNX Runtime) around one
exported model version: ``load`` it from a version directory (given its typed manifest,
``model.manifest.ModelManifest``) for a device, ``infer`` float32 NCHW batches into logits, say which
batch sizes it accepts and ``describe`` itself for logs and metadata. Adapters run inside worker
processes (``inference.worker_main``), possibly under another interpreter (Python 3.7 for PyPI's
mindspore-lite), and in the exporter's process when it verifies a file, so this module and everything
an adapter imports at module level use only the standard library, numpy and ``model.manifest``, in
Python 3.7 syntax.
"""

from __future__ import annotations

import abc
import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from model.manifest import ModelManifest

DEVICES = ("cpu", "gpu", "ascend")


class RuntimeUnavailableError(RuntimeError):
    """The runtime library, the requested device or a model file it needs is not there.

    The message names what is missing (e.g. ``onnxruntime has no CUDAExecutionProvider``)."""


class ModelFileError(RuntimeError):
    """The version directory lacks a file the runtime needs, or the runtime cannot read it."""


def check_device(device: str, device_id: int) -> str:
    """Normalise ``device`` to ``cpu``/``gpu``/``ascend`` or raise ValueError naming the problem."""
    name = str(device).strip().lower()
    if name not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise ValueError(f"device id must be a non-negative integer, got {device_id!r}")
    return name


class Runtime(abc.ABC):
    """One loaded model on one device. Not thread-safe: a worker process calls it from one thread.

    Life cycle: ``rt = SomeRuntime(); rt.load(...); rt.infer(batch) ...; rt.close()``.
    """

    #: registry name (``lite``, ``mindspore``, ``onnxruntime``); custom runtimes set their own
    name = "runtime"

    def __init__(self) -> None:
        self.device = "cpu"
        self.device_id = 0
        self.threads: int | None = None
        self.model_file: str | None = None

    @abc.abstractmethod
    def load(
        self,
        version_dir: str,
        manifest: ModelManifest,
        device: str = "cpu",
        device_id: int = 0,
        options: dict[str, Any] | None = None,
    ) -> None:
        """Load the model of ``version_dir`` for ``device``; ``options`` holds ``threads`` (intra-op
        threads), ``inter_op_threads`` and runtime-specific keys. Raises RuntimeUnavailableError when
        the library or device is missing, ModelFileError when no usable model file exists,
        ValueError for a bad device name or option."""

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits ``[N, num_classes]`` float32 for a float32 ``[N, 3, H, W]`` batch."""

    @property
    def supported_batch_sizes(self) -> list[int] | None:
        """None when any batch size (up to the server's maximum) works; else the fixed sizes."""
        return None

    def library_version(self) -> str:
        return ""

    def describe(self) -> dict[str, Any]:
        """What is loaded where, for logs and the model metadata endpoint."""
        return {
            "runtime": self.name,
            "library_version": self.library_version(),
            "device": self.device,
            "device_id": self.device_id,
            "threads": self.threads,
            "file": os.path.basename(self.model_file) if self.model_file else None,
            "batch_sizes": self.supported_batch_sizes,
        }

    def close(self) -> None:  # noqa: B027 - optional hook, most runtimes free everything on GC
        """Release the model (called once at worker shutdown)."""


def options_threads(options: dict[str, Any], key: str = "threads") -> int | None:
    """A positive thread count from ``options[key]``, None when unset; ValueError otherwise."""
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"option {key!r} must be a positive integer, got {value!r}")
    return value


def as_batch(batch: np.ndarray) -> np.ndarray:
    """Check a batch is float32 [N, C, H, W] and return it C-contiguous (a no-op for shm views)."""
    if not isinstance(batch, np.ndarray) or batch.ndim != 4:
        raise ValueError(f"a batch must be a 4-D [N, 3, H, W] array, got {getattr(batch, 'shape', batch)!r}")
    if batch.dtype != np.float32:
        raise ValueError(f"a batch must be float32, got {batch.dtype}")
    return np.ascontiguousarray(batch)


def tile_batch(batch: np.ndarray, n: int) -> np.ndarray:
    """A batch of exactly ``n`` images: the rows of ``batch`` repeated cyclically (a batch of ``n`` from
    a few sample images, for verification and benchmarks)."""
    index = np.arange(n) % len(batch)
    return np.ascontiguousarray(batch[index])


def input_hw(manifest: ModelManifest) -> tuple | None:
    """(height, width) of the model input, from ``input.shape`` ([-1, 3, H, W])."""
    shape = manifest.input.shape
    return (int(shape[2]), int(shape[3])) if len(shape) == 4 else None
