"""`ddrnet predict`: classify files, folders, globs or a list file offline, with no server.

  ddrnet predict --model-repository models --model digits INPUT [INPUT ...] --output predictions.jsonl
      [--version N] [--list FILE] [--top-k 5] [--batch-size 16] [--runtime auto] [--precision fp32]
      [--instances N] [--threads N] [--workers N] [--resume]
  ddrnet predict --model-dir models/digits/3 'photos/**/*.jpg' --output predictions.csv

INPUT: an image file, a folder (searched recursively) or a glob (quote it; ``**`` recurses); ``--list``
names a file of inputs, one per line. One JSON line per image (``{"path", "predictions": [{"label",
"index", "score"}]}``, or ``{"path", "error"}`` for an image that cannot be decoded), or a CSV row when
the output ends in ``.csv`` (``path,error,label_1,score_1,...``), in input order; the model's own eval
preprocessing and the server's runtimes, precision rules and placement (``ops.predict``).
``--resume`` appends to the output and skips the images it already holds. Exit 0 when every image was
classified, 1 when some failed (each named in the output), 2 on a bad request.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.errors import CliError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image files, folders (recursive) or globs")
    parser.add_argument("--list", type=Path, metavar="FILE", dest="list_file",
                        help="a file of inputs, one per line (# comments)")
    parser.add_argument("--model-repository", type=Path, metavar="DIR")
    parser.add_argument("--model", help="model name in the repository")
    parser.add_argument("--version", type=int, help="version (default: the newest)")
    parser.add_argument("--model-dir", type=Path, metavar="VERSION_DIR",
                        help="a version directory (<repo>/<model>/<version>) instead of the three above")
    parser.add_argument("--output", required=True, type=Path, help="JSON-lines file to write, or .csv")
    parser.add_argument("--top-k", type=int, default=5, help="classes per image (5)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per runtime call (16)")
    parser.add_argument("--runtime", default="auto", help="auto | lite | onnxruntime | openvino | mindspore")
    parser.add_argument("--precision", default="fp32", help="fp32 | bf16 | int8 (as `ddrnet serve`)")
    parser.add_argument("--instances", type=int,
                        help="runtimes run at once (default: as ddrnet serve derives)")
    parser.add_argument("--threads", type=int, help="threads per runtime (default: as ddrnet serve derives)")
    parser.add_argument("--workers", type=int, help="decode threads (default: the cores)")
    parser.add_argument("--resume", action="store_true", help="append, skipping images already written")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ops.predict import PredictError, predict

    bar = tqdm(unit="img", disable=not sys.stderr.isatty(), desc="predict")

    def planned(total: int) -> None:  # the inputs are listed once, by predict
        bar.total = total
        bar.refresh()

    try:
        summary = predict(
            args.model_repository, args.model, args.inputs, args.output, version=args.version,
            model_dir=args.model_dir, list_file=args.list_file, top_k=args.top_k, batch_size=args.batch_size,
            runtime=args.runtime, precision=args.precision, instances=args.instances, threads=args.threads,
            workers=args.workers, resume=args.resume, progress=bar.update, planned=planned,
        )
    except PredictError as exc:
        raise CliError(str(exc)) from None
    finally:
        bar.close()
    print(f"{summary.line()} -> {args.output}")
    return 1 if summary.failed else 0
