"""Export a checkpoint into a new, verified version of a model repository.

  ddrnet export --run-dir RUN --repository models --name demo [--checkpoint CKPT]
  ddrnet export --checkpoint CKPT --repository models --name slim [--arch ddrnet23_slim] \\
      [--version N] [--formats mindir,onnx,lite] [--batch-sizes 1,4,8] [--num-classes N] \\
      [--labels FILE] [--variant zoo|authors] [--image-size 224 --crop-pct 0.875 ...]
  ddrnet export --config TRAIN.yaml --checkpoint CKPT --repository models --name demo
  ddrnet export ... --precisions int8,bf16,fp16 [--calibration-dir data/train] [--min-agreement 0.98]

With --run-dir, everything the run recorded in its run.json (architecture, class count, labels, weight
variant, eval preprocessing, training folder) is used and the checkpoint is the run's best unless
--checkpoint names another; with --config, the same come from a training config and its data set folder.
Options given on the command line override either. Without them, the checkpoint itself says its
architecture, class count and weight variant where its tensors tell them apart; an option that
contradicts the checkpoint is an error naming both. Every exported file is loaded by its runtime and
checked against the checkpoint network on real photos before the version is published (atomically); a
mismatch publishes nothing. --formats omitted: mindir and onnx, plus lite when MindSpore Lite is found
(importable here or in .venv-lite37). Float32 is always exported; --precisions adds reduced ones, each
verified by top-1 agreement (--min-agreement) with the checkpoint on the sample photos plus held-out
images of --calibration-dir (default with --run-dir / --config: the training folder): int8
(``model.int8.onnx``, calibrated on that folder), bf16 (``model.onnx`` on OpenVINO; needs the openvino
extra and a CPU with bf16), fp16 (``model.fp16.onnx``, for GPUs). The server serves a reduced precision
only for a version verified for it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.errors import CliError


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return tuple(sorted(set(values)))


def _formats(text: str) -> tuple[str, ...]:
    from training.export.spec import FORMATS

    values = tuple(v.strip().lower() for v in text.split(",") if v.strip())
    unknown = [v for v in values if v not in FORMATS]
    if unknown:
        known = ",".join(FORMATS)
        raise argparse.ArgumentTypeError(f"unknown format(s) {', '.join(unknown)}: choose from {known}")
    return values


def _precisions(text: str) -> tuple[str, ...]:
    from inference.precision import PRECISIONS

    values = tuple(v.strip().lower() for v in text.split(",") if v.strip())
    unknown = [v for v in values if v not in PRECISIONS]
    if unknown or not values:
        raise argparse.ArgumentTypeError(
            f"unknown precision(s) {', '.join(unknown) or text!r}: choose from {','.join(PRECISIONS)}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--run-dir", type=Path, metavar="RUN",
                        help="training run directory: arch, classes, labels, preprocessing from its run.json")
    parser.add_argument("--checkpoint", type=Path,
                        help="MindSpore checkpoint (.ckpt); default with --run-dir: the run's best")
    parser.add_argument("--config", type=Path, help="training config YAML: arch, classes, preprocessing")
    parser.add_argument("--arch",
                        help="ddrnet23, ddrnet23_slim or ddrnet39 (default: the run's, the config's, or "
                        "what the checkpoint holds)")
    parser.add_argument("--repository", required=True, type=Path, help="model repository directory")
    parser.add_argument("--name", required=True, help="model name (directory in the repository)")
    parser.add_argument("--version", type=int, help="version number (default: next integer)")
    parser.add_argument(
        "--formats",
        type=_formats,
        help="comma-separated mindir,onnx,lite (default: all three, lite if found; the reduced-precision "
        "files come with --precisions)",
    )
    parser.add_argument(
        "--batch-sizes", type=_int_list, default=(), help="also write fixed-batch MindIR files, e.g. 1,4,8"
    )
    parser.add_argument("--num-classes", type=int,
                        help="classifier outputs (default: the run's, the config's, the checkpoint's, or "
                        "1000)")
    parser.add_argument("--labels", type=Path, help="label file: one class name per line, in class order")
    parser.add_argument("--variant", choices=("zoo", "authors"),
                        help="weight variant (default: what the checkpoint holds: authors for "
                        "`ddrnet convert` output, else zoo)")
    group = parser.add_argument_group("eval preprocessing recorded in model.json (default: the arch's)")
    group.add_argument("--image-size", type=int, help="input side, a multiple of 32 (default 224)")
    group.add_argument("--crop-pct", type=float, help="resize to int(image_size / crop_pct) (default 0.875)")
    group.add_argument("--interpolation", help="bicubic, bilinear, ... (default bicubic)")
    group.add_argument("--resize-mode", choices=("squash", "shorter_side"), help="default squash (zoo)")
    parser.add_argument("--lite-python", help="Python interpreter with mindspore_lite (default: auto-detect)")
    parser.add_argument(
        "--tolerance", type=float, default=None, help="max |logit difference| allowed in verification (1e-3)"
    )
    reduced = parser.add_argument_group("reduced precisions (float32 is always exported and verified)")
    reduced.add_argument(
        "--precisions", type=_precisions, default=(),
        help="comma-separated int8,bf16,fp16: int8 = calibrated model.int8.onnx (ONNX Runtime, OpenVINO), "
        "bf16 = model.onnx on OpenVINO (a CPU with AVX512_BF16/AMX), fp16 = model.fp16.onnx (GPUs); each "
        "verified by top-1 agreement, and the server serves only verified ones",
    )
    reduced.add_argument(
        "--calibration-dir", type=Path,
        help="training images: int8 calibrates on them, every reduced precision is checked on held-out "
        "ones (default with --run-dir / --config: the training folder)"
    )
    reduced.add_argument("--calibration-images", type=int, default=64, help="images used to calibrate (64)")
    reduced.add_argument(
        "--min-agreement", "--int8-min-agreement", dest="min_agreement",
        type=float,
        default=0.98,
        help="least top-1 agreement of a reduced precision with the checkpoint on the sample photos + "
        "held-out images, else nothing is published (0.98)",
    )
    parser.add_argument(
        "--sample-images", type=Path, nargs="+", default=(), help="photos for verification (default: bundled)"
    )


def spec_from_args(args: argparse.Namespace) -> Any:
    """The :class:`training.export.ExportSpec` the options describe (run or config first, options
    override); CliError naming the problem."""
    from training.export import ExportError
    from training.export.source import ModelFacts, build_spec, facts_from_config, facts_from_run

    if args.run_dir is not None and args.config is not None:
        raise CliError("give --run-dir or --config, not both")
    keys = ("image_size", "crop_pct", "interpolation", "resize_mode")
    preprocess = {key: getattr(args, key) for key in keys}
    extra = {"tolerance": args.tolerance} if args.tolerance is not None else {}
    try:
        if args.run_dir is not None:
            facts = facts_from_run(args.run_dir)
        elif args.config is not None:
            facts = facts_from_config(args.config)
        else:
            facts = ModelFacts()
        spec = build_spec(
            facts, repository=args.repository, name=args.name, checkpoint=args.checkpoint, arch=args.arch,
            num_classes=args.num_classes, labels_file=args.labels, variant=args.variant,
            preprocess=preprocess,
            calibration_dir=args.calibration_dir, version=args.version, formats=args.formats,
            batch_sizes=tuple(args.batch_sizes), lite_python=args.lite_python,
            sample_images=tuple(args.sample_images), calibration_images=args.calibration_images,
            min_agreement=args.min_agreement, precisions=args.precisions, **extra,
        )
    except ExportError as exc:
        raise CliError(str(exc)) from None
    return spec


def run(args: argparse.Namespace) -> int:
    from training.export import ExportError, export_model
    from training.export.checks import describe

    spec = spec_from_args(args)
    try:
        result = export_model(spec, progress=sys.stderr.isatty())
    except ExportError as exc:
        raise CliError(str(exc)) from None
    manifest = result.manifest
    files = ", ".join(manifest.file_names())
    print(f"published {manifest.name} version {result.version} at {result.version_dir} ({files})")
    for key, rec in manifest.verification.items():
        precision = rec.get("precision", "fp32")
        print(f"  verified {key:<18} {precision:<5} on {rec['runtime']:<12} {describe(rec)}")
    total = sum(result.seconds.values())
    print(f"  {total:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    return 0
