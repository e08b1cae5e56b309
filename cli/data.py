"""`ddrnet data DATASET OUT_DIR`: write a demo data set as an ImageNet-style folder
(``train/<class>/*.jpg``, ``val/<class>/*.jpg``, ``labels.txt``) that ``ddrnet train`` reads.

Data sets: ``digits`` — scikit-learn's bundled 1,797 real 8×8 handwritten digits, 10 classes,
upscaled to JPEG with a fixed stratified train/val split (``training/digits.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.errors import CliError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET")
    sub.required = True
    digits = sub.add_parser(
        "digits",
        help="scikit-learn's 1,797 real 8x8 digits, 10 classes, as upscaled JPEGs",
        description="Write scikit-learn's bundled digits (1,797 real 8x8 scans, classes 0-9) as "
        "OUT_DIR/train/<class>/*.jpg and OUT_DIR/val/<class>/*.jpg with a fixed stratified split, "
        "plus OUT_DIR/labels.txt.",
    )
    digits.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="directory to create (must be empty)")
    digits.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    digits.add_argument(
        "--val-fraction", type=float, default=0.2, help="share of each class held out for val (default: 0.2)"
    )
    digits.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    digits.add_argument("--quality", type=int, default=95, help="JPEG quality 1-100 (default: 95)")
    digits.add_argument(
        "--force", action="store_true", help="replace train/, val/ and labels.txt in a non-empty OUT_DIR"
    )
    digits.set_defaults(_dataset_run=_run_digits)


def run(args: argparse.Namespace) -> int:
    return args._dataset_run(args)


def _run_digits(args: argparse.Namespace) -> int:
    from training.digits import write_digits

    try:
        summary = write_digits(
            args.out_dir,
            size=args.size,
            val_fraction=args.val_fraction,
            seed=args.seed,
            quality=args.quality,
            force=args.force,
            progress=True,
        )
    except (FileExistsError, NotADirectoryError, ValueError) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {args.out_dir}: {exc.strerror or exc}") from None
    print(summary.format())
    return 0
