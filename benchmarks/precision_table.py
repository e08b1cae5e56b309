"""Issue 16's precision table (markdown) from the JSON files of ``benchmarks/precision_targets.sh``.

    python -m benchmarks.precision_table DIR        (DIR: the script's OUT_DIR)

Per model and precision/runtime: served img/s, p50/p99 at gRPC concurrency 8 and 16, served ÷ L (L of
the same precision, measured by the same bench), the ratio to served float32 on ONNX Runtime at the
same concurrency, and the precision's verification record from the version's ``model.json`` (top-1
agreement with the float32 checkpoint network, max logit difference, images). Targets are checked
here from the figures, never typed in: bf16 ≥ 1.8 × fp32, int8 ≥ 3 × fp32, served ÷ L ≥ 0.95.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS = [("ddrnet23_slim", "DDRNet-23-slim"), ("ddrnet23", "DDRNet-23")]
GROUPS = [
    ("ort_fp32", "fp32", "ONNX Runtime"),
    ("ov_fp32", "fp32", "OpenVINO"),
    ("ov_bf16", "bf16", "OpenVINO"),
    ("ort_int8", "int8", "ONNX Runtime"),
    ("ov_int8", "int8", "OpenVINO"),
]
RECORDS = {("fp32", "ONNX Runtime"): "onnx", ("bf16", "OpenVINO"): "onnx_bf16",
           ("int8", "ONNX Runtime"): "onnx_int8", ("int8", "OpenVINO"): "onnx_int8_openvino"}
TARGETS = {"bf16": 1.8, "int8": 3.0}
LEVELS = (8, 16)


def _level(report: dict, concurrency: int) -> dict | None:
    for level in report.get("levels", []):
        if level["protocol"] == "grpc" and level["concurrency"] == concurrency:
            return level
    return None


def _record(directory: Path, model: str, precision: str, runtime: str) -> str:
    path = directory / "repo224" / model / "1" / "model.json"
    key = RECORDS.get((precision, runtime))
    if not path.is_file() or key is None:
        return "-"
    rec = json.loads(path.read_text()).get("verification", {}).get(key)
    if rec is None:
        return "-"
    return f"{rec['top1_agreement']:.3f} / {rec['max_abs_diff']:.3g} / {rec['samples']}"


def table(directory: Path) -> str:
    head = ("model", "precision", "runtime", "c", "img/s", "p50 ms", "p99 ms", "÷L", "× fp32 ORT", "target",
            "agreement / max logit diff / images")
    rows = [head, tuple("---" for _ in head)]
    for model, label in MODELS:
        reports = {}
        for tag, _precision, _runtime in GROUPS:
            path = directory / f"{model}_{tag}.json"
            reports[tag] = json.loads(path.read_text()) if path.is_file() else {}
        for tag, precision, runtime in GROUPS:
            for c in LEVELS:
                level, base = _level(reports[tag], c), _level(reports["ort_fp32"], c)
                if level is None:
                    continue
                ratio = level["throughput_img_s"] / base["throughput_img_s"] if base else None
                over_l = level.get("served_over_L")
                verdict = []
                if precision in TARGETS and ratio is not None:
                    met = "met" if ratio >= TARGETS[precision] else "MISSED"
                    verdict.append(f"≥{TARGETS[precision]:g}× {met}")
                if over_l is not None:
                    verdict.append(f"÷L≥0.95 {'met' if over_l >= 0.95 else 'MISSED'}")
                lat = level["latency_ms"]
                rows.append((label, precision, runtime, str(c), f"{level['throughput_img_s']:.1f}",
                             f"{lat['p50']:.0f}", f"{lat['p99']:.0f}", f"{over_l:.2f}" if over_l else "-",
                             f"{ratio:.2f}" if ratio else "-", ", ".join(verdict) or "-",
                             _record(directory, model, precision, runtime)))
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    print(table(Path(argv[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
