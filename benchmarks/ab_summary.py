"""The A/B table of two alternated serving runs (benchmarks/compare_trees.sh, tracing_overhead.sh):
OUT/A1.json ... OUT/B<ROUNDS>.json, each a `ddrnet bench --json` report, medians and the B/A ratio per
figure; also written to OUT/summary.json.

    python benchmarks/ab_summary.py OUT_DIR ROUNDS
"""

import json
import statistics
import sys
from pathlib import Path

out, rounds = Path(sys.argv[1]), int(sys.argv[2])
rows = {}
for side in "AB":
    runs = [json.loads((out / f"{side}{r}.json").read_text()) for r in range(1, rounds + 1)]
    levels = {lv["concurrency"] for run in runs for lv in run["levels"]}
    row = {}
    if all(run.get("raw") for run in runs):  # bench --raw: the machine's limit L
        row = {"L_img_s": [run["raw"]["limit_img_s"] for run in runs],
               "model_img_s": [run["raw"]["model_img_s"] for run in runs]}
    for c in sorted(levels):
        label = f"c={c}"
        picks = [lv for run in runs for lv in run["levels"] if lv["concurrency"] == c]
        row[f"{label} img/s"] = [lv["throughput_img_s"] for lv in picks]
        row[f"{label} p50 ms"] = [lv["latency_ms"]["p50"] for lv in picks]
        row[f"{label} p99 ms"] = [lv["latency_ms"]["p99"] for lv in picks]
    rows[side] = row
print(f"{'figure':<18} {'A median':>9} {'B median':>9} {'B/A':>6}   A runs | B runs")
for key in rows["A"]:
    a, b = rows["A"][key], rows["B"][key]
    ma, mb = statistics.median(a), statistics.median(b)
    runs_a, runs_b = (" ".join(f"{x:.1f}" for x in xs) for xs in (a, b))
    print(f"{key:<18} {ma:9.1f} {mb:9.1f} {mb / ma:6.3f}   {runs_a} | {runs_b}")
(out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
