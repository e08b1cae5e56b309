"""Issue 7's target tables (markdown) from the JSON files of ``benchmarks/perf_targets.sh``.

    python -m benchmarks.perf_tables DIR        (DIR: the script's OUT_DIR, holding perf_*.json)

Throughput: served img/s and ÷ L at concurrency 8 and 16 per protocol. Latency: concurrency 1 p50
against the bound "batch-1 model time + preprocessing + 5 ms", the batch-1 time being the fastest
placement's that --raw measured; concurrency 8 p99 against 1.5 × p50. Each verdict is computed here
from the figures, never typed in.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

GROUPS = [
    ("slim224_ort_fp32", "DDRNet-23-slim", "ONNX Runtime fp32"),
    ("slim224_ort_int8", "DDRNet-23-slim", "ONNX Runtime int8"),
    ("slim224_ms_fp32", "DDRNet-23-slim", "MindSpore fp32"),
    ("slim224_lite_fp32", "DDRNet-23-slim", "Lite 2.0.0 fp32"),
    ("d23_224_ort_fp32", "DDRNet-23", "ONNX Runtime fp32"),
    ("d23_224_ort_int8", "DDRNet-23", "ONNX Runtime int8"),
    ("d23_224_ms_fp32", "DDRNet-23", "MindSpore fp32"),
    ("d23_224_lite_fp32", "DDRNet-23", "Lite 2.0.0 fp32"),
]


def _level(report: dict, protocol: str, concurrency: int) -> dict | None:
    for level in report["levels"]:
        if level["protocol"] == protocol and level["concurrency"] == concurrency:
            return level
    return None


def _batch1_ms(report: dict) -> float:
    return min(b["ms_per_batch"] for r in report["raw_placements"] for b in r["batches"]
               if b["batch_size"] == 1)


def _served_placement(report: dict) -> str:
    return report["raw_placements"][0]["placement"].replace(" ", "")


def _groups(reports: dict[str, dict]) -> Iterator[tuple[str, str, dict]]:
    """(model, runtime, report) of every group that has a JSON file, in table order."""
    for tag, model, runtime in GROUPS:
        if tag in reports:
            yield model, runtime, reports[tag]


def main(folder: Path) -> int:
    paths = {tag: folder / f"perf_{tag}.json" for tag, *_ in GROUPS}
    reports = {tag: json.loads(p.read_text()) for tag, p in paths.items() if p.is_file()}
    print("| model | runtime | served as | L img/s (model ms/img, placement @batch + pre ms) | protocol "
          "| c=8 img/s | ÷L | c=16 img/s | ÷L | ≥ 0.95 L |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model, runtime, r in _groups(reports):
        raw = r["raw"]
        placement = raw["placement"].replace(" ", "")
        limit = (f"{raw['limit_img_s']:.1f} ({raw['model_ms_per_image']:.2f}, {placement} "
                 f"@{raw['best_batch_size']} + {raw['preprocess_ms_per_image']:.2f})")
        for i, protocol in enumerate(("grpc", "http")):
            c8, c16 = _level(r, protocol, 8), _level(r, protocol, 16)
            met = all(lv["served_over_L"] >= 0.95 for lv in (c8, c16))
            head = (model, runtime, _served_placement(r), limit) if i == 0 else ("", "", "", "")
            print(f"| {' | '.join(head)} | {protocol} | {c8['throughput_img_s']:.1f} | "
                  f"{c8['served_over_L']:.2f} | {c16['throughput_img_s']:.1f} | {c16['served_over_L']:.2f} | "
                  f"{'met' if met else '**missed**'} |")
    print()
    print("| model | runtime | bound ms (batch 1 + pre + 5) | protocol | c=1 p50 | c=1 verdict "
          "| c=8 p50 | c=8 p99 | p99/p50 | ≤ 1.5 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model, runtime, r in _groups(reports):
        b1, pre = _batch1_ms(r), r["raw"]["preprocess_ms_per_image"]
        bound = b1 + pre + 5.0
        for i, protocol in enumerate(("grpc", "http")):
            c1, c8 = _level(r, protocol, 1), _level(r, protocol, 8)
            p50 = c1["latency_ms"]["p50"]
            ratio = c8["latency_ms"]["p99"] / c8["latency_ms"]["p50"]
            head = (model, runtime, f"{b1:.1f} + {pre:.2f} + 5 = {bound:.1f}") if i == 0 else ("", "", "")
            verdict = "met" if p50 <= bound else "**missed**"
            print(f"| {' | '.join(head)} | {protocol} | {p50:.1f} | {verdict} | "
                  f"{c8['latency_ms']['p50']:.0f} | {c8['latency_ms']['p99']:.0f} | {ratio:.2f} | "
                  f"{'met' if ratio <= 1.5 else '**missed**'} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python -m benchmarks.perf_tables DIR  (perf_targets.sh's OUT_DIR)")
    sys.exit(main(Path(sys.argv[1])))
