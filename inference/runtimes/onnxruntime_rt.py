"""ONNX Runtime adapter: runs a version's ONNX files (dynamic batch axis).

Devices: ``cpu`` (CPUExecutionProvider), ``gpu`` (CUDAExecutionProvider, when the installed
onnxruntime build has it; TensorrtExecutionProvider first when the build has it too and the option
``tensorrt`` is not false), ``ascend`` (CANNExecutionProvider). A requested provider that is absent is a
RuntimeUnavailableError naming it; onnxruntime would otherwise fall back to the CPU silently.

Precision (option ``precision``, meanings in ``inference.precision``): ``fp32`` (default) runs
``model.onnx``; ``int8`` runs ``model.int8.onnx`` (the calibrated QDQ export); ``fp16`` runs
``model.fp16.onnx`` (the float16 export, float32 inputs and outputs) on CUDA, or ``model.onnx`` with
TensorRT building float16 engines (``trt_fp16_enable``) when the TensorRT EP is used. A missing file is
a ModelFileError naming the export option, never a silent float32. The adapter runs the fp16 file on
whatever device it is given (the exporter verifies it on the CPU); which precisions the *server*
offers where is ``inference.precision``'s table. Threads: ``threads`` sets intra-op threads,
``inter_op_threads`` inter-op threads (1 by default: the DDRNet graph is a chain, parallel operators
gain nothing). TensorRT: dynamic batch profiles 1..``max_batch_size`` (option, default 8), engines
cached under ``cache_dir`` (option, default ``~/.cache/ddrnet-serve/tensorrt``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from inference.runtimes.base import (
    ModelFileError,
    Runtime,
    RuntimeUnavailableError,
    as_batch,
    check_device,
    options_threads,
)
from model.manifest import DEFAULT_FILENAMES

if TYPE_CHECKING:
    from model.manifest import ModelManifest

_TENSORRT = "TensorrtExecutionProvider"
_FILES = {"fp32": "onnx", "fp16": "onnx_fp16", "int8": "onnx_int8"}
_EXPORT_HINT = {
    "onnx": "export it with --formats onnx",
    "onnx_fp16": "export it with `ddrnet export ... --precisions fp16`",
    "onnx_int8": "export it with `ddrnet export ... --precisions int8 --calibration-dir DIR`",
}
_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "ascend": "CANNExecutionProvider",
}


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self) -> None:
        super().__init__()
        self._session: Any = None
        self._input_name = ""
        self._output_name = ""
        self._ort: Any = None
        self.precision = "fp32"
        self.tensorrt = False

    def _tensorrt_options(self, manifest: ModelManifest, options: dict[str, Any]) -> dict[str, Any]:
        """TensorRT EP options (onnxruntime's documented keys): fp16 engines for precision fp16, a
        dynamic batch profile up to ``max_batch_size``, engines cached across worker restarts."""
        size = manifest.image_size
        biggest = int(options.get("max_batch_size") or 8)
        name = manifest.input.name
        cache = options.get("cache_dir") or os.path.join(
            os.path.expanduser("~"), ".cache", "ddrnet-serve", "tensorrt")
        return {
            "device_id": self.device_id,
            "trt_fp16_enable": self.precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_profile_min_shapes": f"{name}:1x3x{size}x{size}",
            "trt_profile_opt_shapes": f"{name}:{biggest}x3x{size}x{size}",
            "trt_profile_max_shapes": f"{name}:{biggest}x3x{size}x{size}",
        }

    def load(
        self,
        version_dir: str,
        manifest: ModelManifest,
        device: str = "cpu",
        device_id: int = 0,
        options: dict[str, Any] | None = None,
    ) -> None:
        options = dict(options or {})
        self.device = check_device(device, device_id)
        self.device_id = device_id
        self.threads = options_threads(options)
        inter = options_threads(options, "inter_op_threads") or 1
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeUnavailableError(f"onnxruntime is not installed in this Python ({exc})") from None
        self._ort = ort
        precision = str(options.get("precision") or "fp32")
        if precision not in _FILES:
            raise ValueError(f"unknown precision {precision!r}: expected fp32, fp16 or int8")
        self.precision = precision
        provider = _PROVIDERS[self.device]
        available = ort.get_available_providers()
        if provider not in available:
            raise RuntimeUnavailableError(
                f"device {self.device!r} needs onnxruntime's {provider}, which this onnxruntime "
                f"{ort.__version__} build lacks (available: {', '.join(available)})"
            )
        self.tensorrt = (self.device == "gpu" and _TENSORRT in available
                         and options.get("tensorrt", True) is not False and precision != "int8")
        role = "onnx" if self.tensorrt else _FILES[precision]
        path = manifest.existing_path(version_dir, role)
        if path is None:
            raise ModelFileError(
                f"{version_dir} has no {DEFAULT_FILENAMES[role]} for the onnxruntime runtime at precision "
                f"{precision}: {_EXPORT_HINT[role]}"
            )
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = inter
        if self.threads is not None:
            so.intra_op_num_threads = self.threads
        so.log_severity_level = 3  # errors only: the symbolic-shape warnings are noise here
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.device != "cpu":
            providers = [(provider, {"device_id": device_id}), "CPUExecutionProvider"]
        if self.tensorrt:
            providers.insert(0, (_TENSORRT, self._tensorrt_options(manifest, options)))
        try:
            session = ort.InferenceSession(path, sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise ModelFileError(f"onnxruntime cannot load {path}: {exc}") from None
        if self.device != "cpu" and provider not in session.get_providers():
            raise RuntimeUnavailableError(
                f"onnxruntime could not create {provider} for device {self.device}:{device_id} "
                f"(session providers: {session.get_providers()})"
            )
        self._session = session
        self._input_name = session.get_inputs()[0].name
        self._output_name = session.get_outputs()[0].name
        self.model_file = path

    def infer(self, batch: np.ndarray) -> np.ndarray:
        out = self._session.run([self._output_name], {self._input_name: as_batch(batch)})[0]
        return np.asarray(out, dtype=np.float32)

    def library_version(self) -> str:
        return str(getattr(self._ort, "__version__", ""))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["providers"] = list(self._session.get_providers()) if self._session is not None else []
        info["precision"] = self.precision
        info["tensorrt"] = self.tensorrt
        return info

    def close(self) -> None:
        self._session = None
