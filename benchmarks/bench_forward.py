"""Forward-pass throughput of each DDRNet classifier (model.create_model) in MindSpore GRAPH mode on
the CPU, at 224x224 and batch 1 and 8 by default.

    python -m benchmarks.bench_forward [--archs ddrnet23_slim,ddrnet23,ddrnet39] [--batch-sizes 1,8]
        [--image-size 224] [--variant zoo] [--seconds 10] [--json FILE]

Per (architecture, batch size): the first call (graph compile + one batch) is timed separately, one
more warm-up batch runs, then batches are timed one by one for at least ``--seconds`` (and at least 3
batches). Reports img/s from the median batch time and from the fastest batch (the least disturbed
one on a shared machine). Weights are freshly initialised: they do not change the speed. Prints a
Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def measure(arch: str, batch_sizes: list[int], size: int, variant: str, seconds: float) -> list[dict]:
    import mindspore as ms

    from model import create_model

    net = create_model(arch, variant=variant)
    net.set_train(False)
    params = sum(int(np.prod(p.shape)) for p in net.trainable_params())
    rows = []
    for batch in batch_sizes:
        x = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32))
        start = time.perf_counter()
        net(x).asnumpy()
        first = time.perf_counter() - start
        net(x).asnumpy()  # warm-up after compile
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while len(times) < 3 or time.perf_counter() < deadline:
            start = time.perf_counter()
            net(x).asnumpy()
            times.append(time.perf_counter() - start)
        rows.append(
            {
                "arch": arch,
                "params": params,
                "batch": batch,
                "first_call_s": first,
                "batches_timed": len(times),
                "img_s_median": batch / statistics.median(times),
                "img_s_best": batch / min(times),
            }
        )
        print(f"# {arch} batch {batch}: {rows[-1]['img_s_median']:.1f} img/s (median)", file=sys.stderr)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archs", default="ddrnet23_slim,ddrnet23,ddrnet39")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--variant", default="zoo", choices=["zoo", "authors"])
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per (arch, batch size)")
    parser.add_argument("--json", metavar="FILE", help="also save the rows as JSON")
    args = parser.parse_args()

    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = []
    for arch in args.archs.split(","):
        rows += measure(arch, batch_sizes, args.image_size, args.variant, args.seconds)

    load = os.getloadavg()
    print(
        f"MindSpore {ms.__version__}, GRAPH mode, CPU ({os.cpu_count()} cores, {platform.machine()}), "
        f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}, "
        f"{args.image_size}x{args.image_size}, variant {args.variant}, "
        f"load average at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}\n"
    )
    print("| model | params | batch | img/s (median) | img/s (best) | first call (compile) s | batches |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['params'] / 1e6:.2f} M | {r['batch']} | {r['img_s_median']:.1f} | "
            f"{r['img_s_best']:.1f} | {r['first_call_s']:.1f} | {r['batches_timed']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "loadavg": load}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
