"""Training throughput of a config on this machine: the input pipeline alone vs the full train step,
and the model step alone on a fixed batch, so it is visible which one limits.

    python -m benchmarks.bench_training [--config training/configs/digits_demo.yaml] [--set k=v ...]
                                        [--steps 20] [--warmup 3] [--json]

Needs the config's dataset (for the demo: ``ddrnet data digits data/digits``). Prints a markdown
table of images/second (one process; on CPU the pipeline workers and the step share the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from training.device import prepare_cpu_env

prepare_cpu_env()  # before MindSpore is imported


def _timed_batches(iterator, steps: int, warmup: int, work=None) -> float:
    """Images per second over ``steps`` batches after ``warmup`` batches."""
    seen = 0
    start = None
    for i, (images, targets) in enumerate(iterator):
        if work is not None:
            work(images, targets)
        if i + 1 == warmup:
            start = time.perf_counter()
        elif i + 1 > warmup:
            seen += len(images)
        if i + 1 == warmup + steps:
            break
    return seen / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="training/configs/digits_demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import mindspore as ms

    from training.config import load_config
    from training.data import BadImageLog, scan_split, train_dataset
    from training.device import setup_context
    from training.distributed import DistInfo, grad_reducer
    from training.schedules import build_lr_schedule
    from training.trainer import build_loss_scaler, build_network, make_train_step

    cfg = load_config(args.config, args.overrides)
    setup_context(cfg.device_target, cfg.device_id)
    split = scan_split(Path(cfg.data_url) / cfg.train_split)
    bad = BadImageLog(Path(tempfile.mkdtemp()) / "bad.txt")
    needed = args.steps + args.warmup
    epochs = 0

    def batches():
        nonlocal epochs
        while True:  # as many epochs as the measurement needs
            it = train_dataset(cfg, split, epochs, bad).create_tuple_iterator(num_epochs=1, output_numpy=True)
            epochs += 1
            yield from it

    pipeline = _timed_batches(batches(), args.steps, args.warmup)

    ms.set_seed(cfg.seed)
    net, net_amp = build_network(cfg)
    net_amp.set_train(True)
    lrs = build_lr_schedule(cfg, max(needed, 2) * 4, 1)
    from training.optim import build_optimizer

    optimizer = build_optimizer(cfg, net, lrs)
    step = make_train_step(cfg, net_amp, optimizer, build_loss_scaler(cfg),
                           grad_reducer(optimizer.parameters, DistInfo()))

    def train(images, targets):
        loss, _ = step(ms.Tensor(images), ms.Tensor(targets))
        loss.asnumpy()

    full = _timed_batches(batches(), args.steps, args.warmup, train)
    images, targets = next(iter(batches()))
    fixed = ((images, targets) for _ in range(needed))
    model_only = _timed_batches(fixed, args.steps, args.warmup, train)

    result = {
        "config": args.config, "arch": cfg.arch, "image_size": cfg.image_size, "batch_size": cfg.batch_size,
        "amp_level": cfg.amp_level, "jit": cfg.jit, "num_parallel_workers": cfg.num_parallel_workers,
        "pipeline_img_s": round(pipeline, 1), "train_step_img_s": round(full, 1),
        "model_step_only_img_s": round(model_only, 1), "steps": args.steps, "cpus": os.cpu_count(),
        "load_avg": os.getloadavg()[0], "machine": platform.processor() or platform.machine(),
        "mindspore": ms.__version__,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"| {cfg.arch} {cfg.image_size}px, batch {cfg.batch_size}, amp {cfg.amp_level}, jit {cfg.jit}, "
          f"{cfg.num_parallel_workers} data workers | img/s |")
    print("|---|---:|")
    print(f"| input pipeline alone (decode + augment + batch) | {pipeline:.1f} |")
    print(f"| full train step (pipeline + forward/backward/update) | {full:.1f} |")
    print(f"| model step alone (one fixed batch, no pipeline) | {model_only:.1f} |")
    print(f"\n{args.steps} timed steps after {args.warmup} warm-up; {os.cpu_count()} CPUs, "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
