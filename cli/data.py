"""`ddrnet data ...`: demo data sets as ImageNet-style folders (``train/<class>/*.jpg``,
``val/<class>/*.jpg``, ``labels.txt``) that ``ddrnet train`` reads, and the input pipeline's bench.

- ``digits OUT_DIR``: scikit-learn's bundled 1,797 real 8×8 handwritten digits, 10 classes, upscaled
  to JPEG with a fixed stratified train/val split (``training/digits.py``);
- ``photos OUT_DIR``: random 500 × 375 views of the sample photos installed packages ship, one class
  per photo: ImageNet-sized decode work for benchmarks (``training/photos.py``);
- ``bench --config CFG``: the config's train pipeline alone, in images per second in total and per
  core, and its per-batch stage alone (``training/data_bench.py``).
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

    photos = sub.add_parser(
        "photos",
        help="random 500x375 views of the installed sample photos (benchmark data)",
        description="Write OUT_DIR/train/<photo>/*.jpg and OUT_DIR/val/<photo>/*.jpg: random crops of "
        "the sample photos that scikit-learn (and scikit-image) ship, resized to 500x375 or 375x500 "
        "(ImageNet's median size), quality-90 JPEG. For measuring the input pipeline, not for training.",
    )
    photos.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="directory to create (must be empty)")
    photos.add_argument("--per-class", type=int, default=64, help="train images per photo (default: 64)")
    photos.add_argument("--val-per-class", type=int, default=8, help="val images per photo (default: 8)")
    photos.add_argument("--seed", type=int, default=0, help="seed of the random views (default: 0)")
    photos.add_argument("--force", action="store_true", help="replace train/, val/ in a non-empty OUT_DIR")
    photos.set_defaults(_dataset_run=_run_photos)

    bench = sub.add_parser(
        "bench",
        help="the config's train input pipeline alone: img/s total and per core",
        description="Run the train input pipeline of a config (decode, augment, normalise, erasing, "
        "mixup/cutmix, batch) without a model and print images per second in total and per core for "
        "its num_parallel_workers, and the per-batch stage alone. Its last line: 'pipeline: N img/s "
        "total, M img/s per core, W workers'.",
    )
    bench.add_argument("--config", required=True, metavar="FILE", help="training config (YAML)")
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config key (repeatable), e.g. num_parallel_workers=4")
    bench.add_argument("--batches", type=int, default=20, help="batches timed after warm-up (default: 20)")
    bench.add_argument("--warmup", type=int, default=3, help="batches before timing starts (default: 3)")
    bench.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    bench.set_defaults(_dataset_run=_run_bench)


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


def _run_photos(args: argparse.Namespace) -> int:
    from training.photos import write_photo_folder

    try:
        counts = write_photo_folder(args.out_dir, per_class=args.per_class,
                                    val_per_class=args.val_per_class, seed=args.seed, force=args.force)
    except (FileExistsError, ValueError) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {args.out_dir}: {exc.strerror or exc}") from None
    print(f"wrote {counts['train']} train and {counts['val']} val images to {args.out_dir}")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from training.config import ConfigError, load_config
    from training.data import DataError
    from training.device import prepare_cpu_env

    if args.batches < 1 or args.warmup < 0:
        raise CliError(f"--batches must be >= 1 and --warmup >= 0, got {args.batches} and {args.warmup}")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    prepare_cpu_env()
    from tqdm import tqdm

    from training.data_bench import bench_pipeline

    bar = tqdm(total=args.batches, desc="bench", unit="batch", leave=False, disable=args.json)
    try:
        figures = bench_pipeline(cfg, batches=args.batches, warmup=args.warmup, progress=bar.update)
    except (DataError, ValueError) as exc:
        raise CliError(str(exc)) from None
    finally:
        bar.close()
    if args.json:
        print(json.dumps({**asdict(figures), "per_core": figures.per_core}))
    else:
        print("\n".join(figures.lines()))
    return 0
