"""Int8 post-training quantisation of an exported ONNX model (opt-in ``onnx_int8`` export format).

``quantize_onnx`` calibrates ONNX Runtime's static quantiser (``onnxruntime.quantization.quantize_static``,
MinMax calibration, per-channel int8 weights, uint8 activations) on real images from the training
folder passed through the model's own eval transform, and writes ``model.int8.onnx``.
``calibration_paths`` picks those images and the held-out ones the int8 file is verified on (by
``training.export.verify.top1_agreement_record``, the rule of every reduced precision).

Format: QDQ (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into int8 kernels) after
ONNX Runtime's pre-processing, by default. Measured here on DDRNet-23-slim at 224 with ONNX Runtime
1.32 (BENCHMARKS.md, "Performance targets"): QDQ and QOperator ran at the same speed (about 2.5x the
float32 model at batch 1 and 8), but QOperator's logits were off by up to 1.7 on 12 photos where QDQ's
were within 0.11 of float32 with identical top-1; QOperator stays available for comparison.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.preprocess import IMAGE_SUFFIXES, image_files
from model.preprocess_config import PreprocessConfig

LOG = logging.getLogger(__name__)

DEFAULT_CALIBRATION_IMAGES = 64
DEFAULT_MIN_AGREEMENT = 0.98
QUANT_FORMATS = ("qoperator", "qdq")


class QuantizationError(RuntimeError):
    """Calibration images missing/unreadable, or the quantiser failed."""


def calibration_paths(directory: Path, count: int) -> tuple[list[Path], list[Path]]:
    """(calibration images, held-out images): ``count`` images spread evenly over the sorted listing
    of ``directory`` (so every class folder contributes), and up to ``count`` others from between them
    for the agreement check. QuantizationError when the folder has no image."""
    if not Path(directory).is_dir():
        raise QuantizationError(f"calibration directory {directory} does not exist")
    if count < 1:
        raise QuantizationError(f"calibration image count must be positive, got {count}")
    files = image_files(directory)
    if not files:
        suffixes = ", ".join(IMAGE_SUFFIXES)
        raise QuantizationError(f"calibration directory {directory} holds no image ({suffixes})")
    chosen = sorted({int(i) for i in np.linspace(0, len(files) - 1, min(count, len(files)))})
    rest = [i for i in range(len(files)) if i not in set(chosen)]
    held = [rest[int(i)] for i in np.linspace(0, len(rest) - 1, min(count, len(rest)))] if rest else []
    return [files[i] for i in chosen], [files[i] for i in sorted(set(held))]


def transform_images(paths: Sequence[Path], config: PreprocessConfig) -> np.ndarray:
    """``[N, 3, S, S]`` float32: the images through the model's eval transform (what the server feeds)."""
    from model.preprocess import EvalTransform

    transform = EvalTransform(config)
    try:
        return np.ascontiguousarray(transform.batch([Path(p).read_bytes() for p in paths]), dtype=np.float32)
    except Exception as exc:  # Pillow raises several types for a bad file
        raise QuantizationError(f"cannot read a calibration image: {exc}") from None


def prepare_for_quantization(fp32_path: Path, out_path: Path) -> None:
    """ONNX Runtime's recommended pre-processing (graph optimisation, which folds BatchNorm into the
    convolutions, and shape inference), then the opset raised to 13 when lower: per-channel QDQ needs
    ``DequantizeLinear``'s ``axis`` attribute, which opset 11 (what the MindSpore export writes) lacks
    — without the upgrade the QDQ file does not load."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    model = onnx.load(str(out_path))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        onnx.save(version_converter.convert_version(model, 13), str(out_path))


def quantize_onnx(
    fp32_path: Path,
    int8_path: Path,
    calibration: np.ndarray,
    input_name: str,
    quant_format: str = "qdq",
) -> dict[str, Any]:
    """Write the static int8 model of ``fp32_path`` to ``int8_path`` calibrated on ``calibration``
    (``[N, 3, S, S]``, fed one image at a time); returns what was done, for ``model.json``."""
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if quant_format not in QUANT_FORMATS:
        raise QuantizationError(f"unknown quantisation format {quant_format!r}: choose from {QUANT_FORMATS}")

    class _Reader(CalibrationDataReader):  # the library's interface: a get_next() iterator of feeds
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(
                {input_name: calibration[i : i + 1]} for i in range(len(calibration))
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    fmt = QuantFormat.QOperator if quant_format == "qoperator" else QuantFormat.QDQ
    try:
        with tempfile.TemporaryDirectory(prefix="ddrnet-quant-") as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            prepare_for_quantization(Path(fp32_path), prepared)
            quantize_static(
                str(prepared),
                str(int8_path),
                _Reader(),
                quant_format=fmt,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
    except Exception as exc:  # the quantiser raises assorted types; any is a failed export step
        raise QuantizationError(f"onnxruntime could not quantise {Path(fp32_path).name}: {exc}") from None
    if not Path(int8_path).is_file():
        raise QuantizationError(f"quantize_static wrote no {Path(int8_path).name}")
    return {
        "method": "onnxruntime.quantization.quantize_static",
        "format": quant_format,
        "per_channel": True,
        "activations": "uint8",
        "weights": "int8",
        "calibration": "minmax",
        "calibration_images": len(calibration),
    }
