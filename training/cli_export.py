"""Export a checkpoint into a new, verified version of a model repository.

  ddrnet export --checkpoint CKPT --arch ddrnet23_slim --repository models --name slim \\
      [--version N] [--formats mindir,onnx,lite] [--batch-sizes 1,4,8] [--num-classes N] \\
      [--labels FILE] [--variant zoo|authors] [--image-size 224 --crop-pct 0.875 ...]
  ddrnet export --config TRAIN.yaml --checkpoint CKPT --repository models --name demo
  ddrnet export ... --formats mindir,onnx,onnx_int8 --calibration-dir data/train [--calibration-images 64]

With --config, the architecture, class count, weight variant, eval preprocessing and (when the
data set folder or the run directory holds them) the labels come from the training config; options
given on the command line override it. Every exported file is loaded by its runtime and checked
against the checkpoint network on real photos before the version is published (atomically); a
mismatch publishes nothing. --formats omitted: mindir and onnx, plus lite when MindSpore Lite is
found (importable here or in .venv-lite37). ``onnx_int8`` (int8 post-training quantised ONNX,
``model.int8.onnx``) is opt-in: calibrated on images of --calibration-dir (default with --config: the
training split's folder) and verified by top-1 agreement (--int8-min-agreement) with the checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from cli.errors import CliError

LOG = logging.getLogger(__name__)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return tuple(sorted(set(values)))


def _formats(text: str) -> tuple[str, ...]:
    from training.export import FORMATS

    values = tuple(v.strip().lower() for v in text.split(",") if v.strip())
    unknown = [v for v in values if v not in FORMATS]
    if unknown:
        known = ",".join(FORMATS)
        raise argparse.ArgumentTypeError(f"unknown format(s) {', '.join(unknown)}: choose from {known}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--checkpoint", required=True, type=Path, help="MindSpore checkpoint (.ckpt)")
    parser.add_argument("--config", type=Path, help="training config YAML: arch, classes, preprocessing")
    parser.add_argument("--arch", help="ddrnet23, ddrnet23_slim or ddrnet39; required without --config")
    parser.add_argument("--repository", required=True, type=Path, help="model repository directory")
    parser.add_argument("--name", required=True, help="model name (directory in the repository)")
    parser.add_argument("--version", type=int, help="version number (default: next integer)")
    parser.add_argument(
        "--formats",
        type=_formats,
        help="comma-separated mindir,onnx,lite,onnx_int8 (default mindir,onnx + lite if found; "
        "onnx_int8 only when listed)",
    )
    parser.add_argument(
        "--batch-sizes", type=_int_list, default=(), help="also write fixed-batch MindIR files, e.g. 1,4,8"
    )
    parser.add_argument("--num-classes", type=int, help="classifier outputs (default 1000, or the config's)")
    parser.add_argument("--labels", type=Path, help="label file: one class name per line, in class order")
    parser.add_argument("--variant", choices=("zoo", "authors"), help="weight variant (default zoo)")
    group = parser.add_argument_group("eval preprocessing recorded in model.json (default: the arch's)")
    group.add_argument("--image-size", type=int, help="input side, a multiple of 32 (default 224)")
    group.add_argument("--crop-pct", type=float, help="resize to int(image_size / crop_pct) (default 0.875)")
    group.add_argument("--interpolation", help="bicubic, bilinear, ... (default bicubic)")
    group.add_argument("--resize-mode", choices=("squash", "shorter_side"), help="default squash (zoo)")
    parser.add_argument("--lite-python", help="Python interpreter with mindspore_lite (default: auto-detect)")
    parser.add_argument(
        "--tolerance", type=float, default=None, help="max |logit difference| allowed in verification (1e-3)"
    )
    int8 = parser.add_argument_group("int8 quantisation (--formats ...,onnx_int8)")
    int8.add_argument(
        "--calibration-dir", type=Path, help="images to calibrate on (default with --config: its train split)"
    )
    int8.add_argument("--calibration-images", type=int, default=64, help="images used to calibrate (64)")
    int8.add_argument(
        "--int8-min-agreement",
        type=float,
        default=0.98,
        help="least top-1 agreement with the checkpoint on photos + held-out images, else refused (0.98)",
    )
    parser.add_argument(
        "--sample-images", type=Path, nargs="+", default=(), help="photos for verification (default: bundled)"
    )


def _config_values(path: Path) -> dict[str, Any]:
    """arch, num_classes, variant, preprocess and labels (or None) from a training config."""
    from training.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    return {
        "arch": cfg.arch,
        "num_classes": cfg.num_classes,
        "variant": cfg.model_variant,
        "preprocess": cfg.eval_preprocess(),
        "labels": _config_labels(cfg),
        "calibration_dir": Path(cfg.data_url) / cfg.train_split,
    }


def _config_labels(cfg: Any) -> list[str] | None:
    """Labels of a trained model: ``<output_dir>/labels.txt`` if the run wrote one, else the class
    folders of ``<data_url>/<train_split>`` (as training named them); None when neither is here."""
    from model.labels import read_labels_file

    run_labels = Path(cfg.output_dir) / "labels.txt"
    if run_labels.is_file():
        return read_labels_file(run_labels)
    split = Path(cfg.data_url) / cfg.train_split
    if split.is_dir():
        from training.data import resolve_class_labels

        classes = tuple(sorted(e.name for e in split.iterdir() if e.is_dir() and not e.name.startswith(".")))
        if len(classes) == cfg.num_classes:
            return resolve_class_labels(cfg.data_url, classes)
    LOG.warning("no labels.txt in %s and no class folders in %s: default labels", cfg.output_dir, split)
    return None


def build_spec(args: argparse.Namespace) -> Any:
    """The :class:`training.export.ExportSpec` the options describe (config first, options override)."""
    from model.labels import read_labels_file
    from model.registry import default_eval_config
    from training.export import ExportSpec

    base: dict[str, Any] = _config_values(args.config) if args.config else {}
    arch = args.arch or base.get("arch")
    if not arch:
        raise CliError("--arch is required (or --config with an arch)")
    from model.archs import ARCHS

    if arch not in ARCHS:
        raise CliError(f"unknown architecture {arch!r}: choose from {', '.join(sorted(ARCHS))}")
    preprocess = dict(base.get("preprocess") or default_eval_config(arch))
    for key in ("image_size", "crop_pct", "interpolation", "resize_mode"):
        value = getattr(args, key)
        if value is not None:
            preprocess[key] = value
    labels = base.get("labels")
    if args.labels is not None:
        if not args.labels.is_file():
            raise CliError(f"label file {args.labels} does not exist")
        try:
            labels = read_labels_file(args.labels)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    num_classes = args.num_classes or base.get("num_classes") or (len(labels) if labels else 1000)
    if args.num_classes and labels is not None and args.labels is None and len(labels) != args.num_classes:
        labels = None  # the config's labels belong to its class count, not to the one given here
    spec = ExportSpec(
        checkpoint=args.checkpoint,
        arch=arch,
        repository=args.repository,
        name=args.name,
        num_classes=num_classes,
        labels=labels,
        preprocess=preprocess,
        variant=args.variant or base.get("variant") or "zoo",
        version=args.version,
        formats=args.formats,
        batch_sizes=tuple(args.batch_sizes),
        lite_python=args.lite_python,
        sample_images=tuple(args.sample_images),
        calibration_dir=args.calibration_dir or base.get("calibration_dir"),
        calibration_images=args.calibration_images,
        int8_min_agreement=args.int8_min_agreement,
    )
    if args.tolerance is not None:
        spec.tolerance = args.tolerance
    return spec


def run(args: argparse.Namespace) -> int:
    from training.export import ExportError, export_model

    spec = build_spec(args)
    try:
        result = export_model(spec, progress=sys.stderr.isatty())
    except ExportError as exc:
        raise CliError(str(exc)) from None
    manifest = result.manifest
    files = ", ".join(manifest.file_names())
    print(f"published {manifest.name} version {result.version} at {result.version_dir} ({files})")
    for key, rec in manifest.verification.items():
        if rec.get("rule") == "top1_agreement":
            print(
                f"  verified {key:<10} on {rec['runtime']:<12} top-1 agreement {rec['top1_agreement']:.3f} "
                f"on {rec['samples']} images (minimum {rec['min_top1_agreement']:.3f}), "
                f"max |logit diff| {rec['max_abs_diff']:.3g}"
            )
            continue
        print(
            f"  verified {key:<10} on {rec['runtime']:<12} max |logit diff| {rec['max_abs_diff']:.3g} "
            f"(tolerance {rec['tolerance']:g}), top-1 agreement {rec['top1_agreement']:.3f}"
        )
    total = sum(result.seconds.values())
    print(f"  {total:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    return 0
