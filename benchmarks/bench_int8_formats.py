"""Int8 quantisation formats of an exported ONNX model: speed and logit agreement with float32.

    python -m benchmarks.bench_int8_formats --version-dir models224/ddrnet23_slim/1 [--seconds 4]
        [--rounds 2] [--threads 2]

Quantises the version's ``model.onnx`` with ``training.export.int8.quantize_onnx`` (ONNX Runtime's
pre-processing, opset 13, ``quantize_static`` per-channel, MinMax) as QDQ and as QOperator, calibrated
on the sample photos (``training.export.verify.sample_batch``) and their mirror images, then prints
for float32 and each int8 file: max |logit diff| and top-1 agreement with float32 on those photos,
and img/s at batch 1 and 8 (mean over ``--seconds``, and the fastest single call) with ``--threads``
intra-op threads, ``--rounds`` times round-robin. This is the measurement behind the default
``quant_format`` (QDQ) of ``ddrnet export --formats ...,onnx_int8``.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _img_s(path: Path, x: np.ndarray, batch: int, seconds: float, threads: int) -> tuple[float, float]:
    session = _session(path, threads)
    feed = {"input": np.ascontiguousarray(np.repeat(x[:1], batch, axis=0))}
    session.run(None, feed)
    calls, best, start = 0, float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - t)
        calls += 1
    return calls * batch / (time.perf_counter() - start), batch / best


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version-dir", type=Path, required=True, help="a version with model.onnx")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the quantiser's advice lines
    from model.manifest import load_manifest
    from training.export.int8 import quantize_onnx
    from training.export.verify import sample_batch

    src = args.version_dir / "model.onnx"
    pre = load_manifest(args.version_dir).preprocess
    photos = sample_batch(pre)
    calibration = np.ascontiguousarray(np.concatenate([photos, photos[:, :, :, ::-1]]))
    with tempfile.TemporaryDirectory(prefix="int8-formats-") as tmp:
        files = {"fp32": src}
        for fmt in ("qdq", "qoperator"):
            files[fmt] = Path(tmp) / f"model.{fmt}.onnx"
            quantize_onnx(src, files[fmt], calibration, "input", fmt)
        reference = _session(src, args.threads).run(None, {"input": calibration})[0]
        print("| file | max \\|logit diff\\| | top-1 agreement | round | batch 1 img/s (mean / best call) | "
              "batch 8 img/s (mean / best call) | load average |")
        print("|---|---|---|---|---|---|---|")
        for rnd in range(args.rounds):
            for name, path in files.items():
                out = _session(path, args.threads).run(None, {"input": calibration})[0]
                diff = float(np.abs(out - reference).max())
                agree = float((out.argmax(1) == reference.argmax(1)).mean())
                b1 = _img_s(path, photos, 1, args.seconds, args.threads)
                b8 = _img_s(path, photos, 8, args.seconds, args.threads)
                print(f"| {name} | {diff:.3g} | {agree:.3f} ({len(out)} images) | {rnd} "
                      f"| {b1[0]:.1f} / {b1[1]:.1f} | {b8[0]:.1f} / {b8[1]:.1f} | {os.getloadavg()[0]:.1f} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
