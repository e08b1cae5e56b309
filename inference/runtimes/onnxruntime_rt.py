"""ONNX Runtime adapter: runs a version's ``model.onnx`` (dynamic batch axis).

Devices: ``cpu`` (CPUExecutionProvider), ``gpu`` (CUDAExecutionProvider, when the installed
onnxruntime build has it), ``ascend`` (CANNExecutionProvider, likewise). A requested provider that
is absent is a RuntimeUnavailableError naming it; onnxruntime would otherwise fall back to the CPU
silently. Precision: ``fp32`` (default) runs ``model.onnx``; the option ``precision: int8`` runs the
version's ``onnx_int8`` file (``model.int8.onnx``, the opt-in quantised export) and is a
ModelFileError when the version has none, never a silent fall back to float32. Threads:
``threads`` sets intra-op threads, ``inter_op_threads`` inter-op threads (1 by default: the DDRNet
graph is a chain, parallel operators gain nothing).
"""

from __future__ import annotations

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

if TYPE_CHECKING:
    from model.manifest import ModelManifest

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
        if precision not in ("fp32", "int8"):
            raise ValueError(f"unknown precision {precision!r}: expected fp32 or int8")
        self.precision = precision
        if precision == "int8":
            path = manifest.existing_path(version_dir, "onnx_int8")
            if path is None:
                raise ModelFileError(
                    f"{version_dir} has no int8 ONNX model (model.int8.onnx) for precision int8: export "
                    "it with `ddrnet export --formats ...,onnx_int8 --calibration-dir DIR`"
                )
        else:
            path = manifest.existing_path(version_dir, "onnx")
            if path is None:
                raise ModelFileError(
                    f"{version_dir} has no ONNX model (model.onnx) for the onnxruntime runtime"
                )
        provider = _PROVIDERS[self.device]
        available = ort.get_available_providers()
        if provider not in available:
            raise RuntimeUnavailableError(
                f"device {self.device!r} needs onnxruntime's {provider}, which this onnxruntime "
                f"{ort.__version__} build lacks (available: {', '.join(available)})"
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
        return info

    def close(self) -> None:
        self._session = None
