"""`ddrnet train --config FILE [--set key=value ...] [--resume [CKPT]]`: train a DDRNet classifier.

The config (``training/configs/*.yaml``) is validated before anything heavy starts; ``--set``
overrides single keys (YAML values: ``--set epochs=2 --set beta=[0.9,0.99]``). ``--resume`` with no
argument continues from the newest usable checkpoint in ``<output_dir>/checkpoints``; with a path,
from that file. Under ``msrun`` (``scripts/train_distributed.sh``) the same command trains
data-parallel: each worker takes its shard, gradients are averaged, rank 0 writes the run directory.
"""

from __future__ import annotations

import argparse

from cli.errors import CliError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="training config (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable)")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                        help="continue from the newest checkpoint of output_dir, or from CKPT")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="stop after N epochs of this invocation (time-sliced jobs; --resume continues)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (summary lines only)")


def run(args: argparse.Namespace) -> int:
    from training.config import ConfigError, load_config
    from training.device import DeviceError, prepare_cpu_env

    if args.stop_after is not None and args.stop_after < 1:
        raise CliError(f"--stop-after must be a positive number of epochs, got {args.stop_after}")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    prepare_cpu_env()  # before MindSpore is imported
    from training.checkpointing import CheckpointError
    from training.data import DataError
    from training.device import setup_context
    from training.distributed import DistributedError, init_distributed
    from training.trainer import Trainer, TrainingError

    try:
        choice = setup_context(cfg.device_target, cfg.device_id)
        dist = init_distributed(choice.how)  # the msrun scheduler process stays in here and exits
        trainer = Trainer(cfg, dist, resume=args.resume, show_bar=False if args.no_progress else None,
                          stop_after=args.stop_after)
        result = trainer.run()
    except (DeviceError, DistributedError, DataError, TrainingError, CheckpointError) as exc:
        raise CliError(str(exc)) from None
    if dist.is_main:
        best = result["best_top1"]
        what = "done" if result["epoch"] >= cfg.epochs else "stopped (--resume continues)"
        print(f"{what}: {result['epoch']}/{cfg.epochs} epochs, {result['step']} steps; best val top-1 "
              f"{best:.2f}% (epoch {result['best_epoch']}); run directory {cfg.output_dir}")
    return 0
