"""`ddrnet predict`: classify a folder of images (or files) offline, with no server.

  ddrnet predict --model-repository models --model digits INPUT [INPUT ...] --output predictions.jsonl
      [--version N] [--top-k 5] [--batch-size 16] [--runtime auto] [--precision fp32] [--threads N]
      [--workers 2] [--resume]

One JSON line per image (``{"path", "predictions": [{"label", "index", "score"}]}``, or ``{"path",
"error"}`` for an image that cannot be decoded), in input order (folders searched recursively,
sorted); the model's own eval preprocessing and the server's runtimes and precision rules
(``ops.predict``). ``--resume`` appends to the output and skips the images it already holds. Exit 0
when every image was classified, 1 when some failed (each named in the output), 2 on a bad request.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.errors import CliError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (recursive)")
    parser.add_argument("--model-repository", required=True, type=Path, metavar="DIR")
    parser.add_argument("--model", required=True, help="model name in the repository")
    parser.add_argument("--version", type=int, help="version (default: the newest)")
    parser.add_argument("--output", required=True, type=Path, help="JSON-lines file to write")
    parser.add_argument("--top-k", type=int, default=5, help="classes per image (5)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per runtime call (16)")
    parser.add_argument("--runtime", default="auto", help="auto | lite | onnxruntime | openvino | mindspore")
    parser.add_argument("--precision", default="fp32", help="fp32 | bf16 | int8 (as `ddrnet serve`)")
    parser.add_argument("--threads", type=int, help="runtime threads (default: the runtime's)")
    parser.add_argument("--workers", type=int, default=2, help="decode threads (2)")
    parser.add_argument("--resume", action="store_true", help="append, skipping images already written")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ops.predict import PredictError, input_files, predict

    try:
        total = len(input_files(args.inputs))
    except PredictError as exc:
        raise CliError(str(exc)) from None
    bar = tqdm(total=total, unit="img", disable=not sys.stderr.isatty(), desc="predict")
    try:
        summary = predict(
            args.model_repository, args.model, args.inputs, args.output, version=args.version,
            top_k=args.top_k, batch_size=args.batch_size, runtime=args.runtime, precision=args.precision,
            threads=args.threads, workers=args.workers, resume=args.resume, progress=bar.update,
        )
    except PredictError as exc:
        raise CliError(str(exc)) from None
    finally:
        bar.close()
    print(f"{summary.line()} -> {args.output}")
    return 1 if summary.failed else 0
