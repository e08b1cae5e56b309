"""OpenVINO adapter (the ``openvino`` extra): runs a version's ONNX file on the CPU in fp32, bf16 or int8.

OpenVINO reads ONNX directly (``Core.read_model``); an OpenVINO IR written at export would load in
0.008 s instead of 0.16 s for DDRNet-23 (measured, BENCHMARKS.md), which a worker start does not
notice, so versions carry no extra file. The batch axis stays dynamic: compiled once, every batch size
runs (measured as fast as a static shape at batch 8).

Precision (the option ``precision``, see ``inference.precision``): ``fp32`` compiles with
``INFERENCE_PRECISION_HINT=f32`` (OpenVINO's default on a bf16 CPU is bf16: never left implicit);
``bf16`` with ``bf16`` after checking the CPU plugin reports ``BF16`` among its optimisation
capabilities, a RuntimeUnavailableError otherwise (OpenVINO would quietly run float32); ``int8`` runs
the version's ``model.int8.onnx`` (QDQ) with the float parts in f32. Placement: ``threads`` sets
``INFERENCE_NUM_THREADS``, ``streams`` (default 1: the server scales with instances, each a process)
``NUM_STREAMS``; the latency hint keeps one request on all of the instance's threads; threads are not
pinned to cores (OpenVINO's default pins every process from core 0, which stacks instances).

Devices: ``cpu`` only. OpenVINO's own ``GPU`` is an Intel GPU, which this project's ``gpu`` (CUDA) does
not mean: asking for another device is a RuntimeUnavailableError naming the runtimes that serve it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from inference.precision import PrecisionError, check_precision
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

_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
_FILES = {"fp32": "onnx", "bf16": "onnx", "int8": "onnx_int8"}


class OpenVinoRuntime(Runtime):
    name = "openvino"

    def __init__(self) -> None:
        super().__init__()
        self._ov: Any = None
        self._compiled: Any = None
        self._request: Any = None
        self.precision = "fp32"
        self.streams = 1

    def capabilities(self, core: Any) -> list[str]:
        """The CPU plugin's optimisation capabilities (``BF16``, ``INT8``, ``FP32``, ...)."""
        return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]

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
        if self.device != "cpu":
            raise RuntimeUnavailableError(
                f"the openvino runtime serves device cpu only, not {self.device} (OpenVINO's GPU plugin "
                "is for Intel GPUs): use --runtime onnxruntime or lite there"
            )
        self.threads = options_threads(options)
        self.streams = options_threads(options, "streams") or 1
        try:
            self.precision = check_precision(options.get("precision") or "fp32")
        except PrecisionError as exc:
            raise ValueError(str(exc)) from None
        if self.precision not in _HINTS:
            raise RuntimeUnavailableError(
                f"the openvino runtime serves fp32, bf16 and int8 on the CPU, not {self.precision}"
            )
        try:
            import openvino as ov
        except ImportError as exc:
            raise RuntimeUnavailableError(
                f"openvino is not installed in this Python ({exc}): pip install 'ddrnet-serve[openvino]'"
            ) from None
        self._ov = ov
        core = ov.Core()
        if self.precision == "bf16" and "BF16" not in self.capabilities(core):
            raise RuntimeUnavailableError(
                "precision bf16: OpenVINO reports no BF16 on this CPU (capabilities "
                f"{', '.join(self.capabilities(core))}); it would run float32, so bf16 is refused here"
            )
        isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
        if self.precision == "bf16" and isa and not any(k in isa.upper() for k in ("BF16", "AMX", "ALL")):
            raise RuntimeUnavailableError(
                f"precision bf16: ONEDNN_MAX_CPU_ISA={isa} in this process's environment keeps oneDNN "
                "below the bf16 instructions; unset it (or set ALL) for bf16"
            )
        role = _FILES[self.precision]
        path = manifest.existing_path(version_dir, role)
        if path is None:
            hint = ("export it with `ddrnet export ... --precisions int8`" if role == "onnx_int8"
                    else "export it with --formats onnx")
            raise ModelFileError(f"{version_dir} has no {DEFAULT_FILENAMES[role]} for the openvino runtime "
                                 f"at precision {self.precision}: {hint}")
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _HINTS[self.precision],
            "NUM_STREAMS": self.streams,
            "PERFORMANCE_HINT": "LATENCY",
            # OpenVINO pins its threads to cores by default, each process from core 0: two 1-thread
            # instances then share one core (measured, DDRNet-23 bf16 batch 8: 57 + 58 img/s pinned,
            # 125 + 120 unpinned; one 2-thread instance 186 pinned, 211 unpinned).
            "ENABLE_CPU_PINNING": False,
        }
        if self.threads is not None:
            config["INFERENCE_NUM_THREADS"] = self.threads
        try:
            model = core.read_model(path)
            self._compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise ModelFileError(f"openvino cannot load {path}: {exc}") from None
        self._request = self._compiled.create_infer_request()
        self.model_file = path

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self._request.infer({0: as_batch(batch)})
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def library_version(self) -> str:
        return str(getattr(self._ov, "__version__", "")).split("-")[0]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["precision"] = self.precision
        info["streams"] = self.streams
        if self._compiled is not None:
            info["inference_precision"] = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        return info

    def close(self) -> None:
        self._request = None
        self._compiled = None
