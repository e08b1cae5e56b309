"""`ddrnet eval --config FILE --checkpoint CKPT [--set key=value ...] [--json]`: top-1, top-5 and loss
of a checkpoint on the config's val folder, with the eval transform of ``model/``; every image
counted once. With ``--server ADDR --data DIR`` the same figures are measured through a running
server instead (``ops.eval_server``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cli.common import add_connection_arguments, make_async_client, resolve_model, server_address
from cli.errors import CliError

CLASS_TABLE_MAX = 100  # per-class lines printed in text mode up to this many classes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="training config (YAML) naming arch, data and eval settings")
    parser.add_argument("--checkpoint", metavar="CKPT", help="MindSpore checkpoint to evaluate")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable), e.g. --set data_url=/data/imagenet")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--server", metavar="ADDR", help="evaluate through a running server at ADDR instead")
    parser.add_argument("--data", metavar="DIR", help="with --server: ImageNet-style val folder to send")
    add_server_arguments(parser)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of an evaluation through a server, besides ``--server``, ``--data`` and ``--json``."""
    parser.add_argument("--protocol", choices=("http", "grpc", "oip-http", "oip-grpc"), default="http",
                        help="with --server: classify API (http, grpc) or OIP v2 logits with the loss "
                             "(oip-http, oip-grpc); default: http")
    add_connection_arguments(parser, with_server=False)
    parser.add_argument("--confusion-matrix", metavar="PNG", type=Path,
                        help="with --server: write the confusion matrix as an image")
    parser.add_argument("--concurrency", type=int, default=4, metavar="N",
                        help="with --server: requests in flight (default: 4)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B",
                        help="with --server: images per request (default: 8)")


def _run_server(args: argparse.Namespace) -> int:
    """Evaluate through the server at ``args.server`` on ``args.data`` (``ops.eval_server``)."""
    import asyncio

    import numpy as np

    from ops.eval_server import EvalServerError, evaluate_split, write_confusion_matrix
    from training.data import DataError, scan_split

    if not args.data:
        raise CliError("--server needs --data DIR (the val folder to send)")
    if args.concurrency < 1 or args.batch_size < 1:
        raise CliError("--concurrency and --batch-size must be >= 1")
    try:
        split = scan_split(args.data)
    except DataError as exc:
        raise CliError(str(exc)) from None
    address = server_address(args, args.protocol)

    async def evaluate() -> dict[str, Any]:
        from clients.retry import RetryPolicy

        client = make_async_client(args, args.protocol, retry=RetryPolicy(max_attempts=6))
        try:
            model = await resolve_model(client, args, args.protocol, address)
            return await evaluate_split(client, model, split, args.protocol, concurrency=args.concurrency,
                                        batch_size=args.batch_size, progress=sys.stderr.isatty())
        finally:
            await client.aclose()

    try:
        summary = asyncio.run(evaluate())
    except EvalServerError as exc:
        raise CliError(str(exc)) from None
    summary["server"] = address
    model = summary["model_name"]
    if summary["images"] == 0:
        raise CliError(f"the server refused every image in {args.data}")
    if args.confusion_matrix is not None:
        title = f"{model} v{summary['model_version']} on {args.data} (top-1 {summary['top1']:.2f}%)"
        matrix = np.asarray(summary["confusion_matrix"])
        write_confusion_matrix(Path(args.confusion_matrix), matrix, summary["classes"], title)
    for item in summary["skipped"]:
        print(f"skipped {item['file']}: {item['reason']}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
        return 0
    loss = f"  loss {summary['loss']:.4f}" if summary["loss"] is not None else ""
    print(f"top-1 {summary['top1']:.2f}%  top-5 {summary['top5']:.2f}%{loss}  ({summary['images']} images, "
          f"{summary['skipped_images']} skipped) {model} v{summary['model_version']} at {address} "
          f"({summary['protocol']})")
    if len(split.classes) <= CLASS_TABLE_MAX:
        width = max(len(c) for c in split.classes)
        for name, entry in summary["per_class"].items():
            acc = "-" if entry["top1"] is None else f"{entry['top1']:6.2f}%"
            print(f"  {name:<{width}}  {acc}  ({entry['images']} images)")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.server:
        return _run_server(args)
    if not args.config or not args.checkpoint:
        raise CliError("--config and --checkpoint are required (or --server ADDR --data DIR)")
    from cli.main import require_extra

    require_extra("eval", ("mindspore",), "train")  # a checkpoint runs in MindSpore
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
        setup_context(cfg.device_target, cfg.device_id)
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
