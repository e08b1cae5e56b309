"""The float16 export (``--precisions fp16``): ``model.fp16.onnx`` from the version's float32 ONNX.

Weights and arithmetic in float16, inputs and outputs kept float32 (``keep_io_types``), so clients,
the server's shared memory and the verification see the same tensors as for float32. Written with
onnxconverter-common's ``float16.convert_float_to_float16`` (the converter ONNX Runtime's own
documentation points to for CUDA fp16 models). Served on GPUs by ONNX Runtime's CUDA EP
(``inference.runtimes.onnxruntime_rt``); verified at export by ONNX Runtime on the CPU, which runs
float16 graphs (measured: DDRNet-23-slim logits within 6e-3 of float32, top-1 equal).
"""

from __future__ import annotations

import warnings
from pathlib import Path


class Fp16ExportError(RuntimeError):
    """onnxconverter-common is missing or could not convert the model; the message says which."""


def convert_fp16(source: Path, target: Path) -> None:
    """Write ``target``, the float16 version of the float32 ONNX model ``source``."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError as exc:
        raise Fp16ExportError(f"the fp16 export needs onnxconverter-common ({exc}): pip install "
                              "onnxconverter-common") from None
    model = onnx.load(str(source))
    try:
        with warnings.catch_warnings():  # one warning per weight below float16's range: noise
            warnings.simplefilter("ignore", UserWarning)
            converted = float16.convert_float_to_float16(model, keep_io_types=True)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter and checker raise assorted types
        raise Fp16ExportError(f"cannot convert {source.name} to float16: {exc}") from None
    onnx.save(converted, str(target))
