"""`ddrnet eval --config FILE --checkpoint CKPT [--set key=value ...] [--json]`: top-1, top-5 and loss
of a checkpoint on the config's val folder, with the eval transform of ``model/``; every image
counted once. With ``--server ADDR --data DIR`` the same figures are measured through a running
server instead (``clients.evaluate``).
"""

from __future__ import annotations

import argparse
import json
import sys

from cli.errors import CliError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="training config (YAML) naming arch, data and eval settings")
    parser.add_argument("--checkpoint", metavar="CKPT", help="MindSpore checkpoint to evaluate")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable), e.g. --set data_url=/data/imagenet")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--server", metavar="ADDR", help="evaluate through a running server at ADDR instead")
    parser.add_argument("--data", metavar="DIR", help="with --server: ImageNet-style val folder to send")
    try:  # the server-side options (protocol, TLS, concurrency, ...) belong to clients.evaluate
        from clients.evaluate import add_server_arguments
    except ImportError:  # clients not installed: --server says so when used
        return
    add_server_arguments(parser)


def _run_server(args: argparse.Namespace) -> int:
    if not args.data:
        raise CliError("--server needs --data DIR (the val folder to send)")
    try:
        from clients import evaluate as client_eval
    except ImportError:
        raise CliError("evaluating through a server needs the clients package (clients/evaluate.py), "
                       "which is not installed") from None
    return int(client_eval.run(args) or 0)


def run(args: argparse.Namespace) -> int:
    if args.server:
        return _run_server(args)
    if not args.config or not args.checkpoint:
        raise CliError("--config and --checkpoint are required (or --server ADDR --data DIR)")
    from training.config import ConfigError, load_config
    from training.device import DeviceError, prepare_cpu_env

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    prepare_cpu_env()
    import tempfile
    from pathlib import Path

    from model.weights import WeightLoadError, load_checkpoint
    from training.data import BadImageLog, DataError, check_splits, scan_split
    from training.device import setup_context
    from training.distributed import DistInfo
    from training.evaluate import evaluate
    from training.trainer import build_network

    try:
        setup_context(cfg.device_target)
        val = scan_split(Path(cfg.data_url) / cfg.val_split)
        check_splits(cfg, None, val)
        net, net_amp = build_network(cfg)
        load_checkpoint(net, args.checkpoint)
        with tempfile.TemporaryDirectory() as tmp:
            bad = BadImageLog(Path(tmp) / "bad_images.txt")
            metrics = evaluate(net_amp, cfg, val, DistInfo(), bad, show_bar=sys.stderr.isatty())
            skipped = bad.entries()
        if skipped and cfg.corrupt_images == "fail":
            path, reason = skipped[0]
            raise DataError(f"corrupt image {path}: {reason} ({len(skipped)} in all; "
                            "--set corrupt_images=skip to count and skip them)")
    except (DeviceError, DataError, WeightLoadError, ValueError) as exc:
        raise CliError(str(exc)) from None
    metrics["skipped_images"] = len(skipped)
    metrics["checkpoint"] = str(args.checkpoint)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}  "
              f"({metrics['images']} images, {len(skipped)} skipped) {args.checkpoint}")
    return 0
