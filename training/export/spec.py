"""What an export is asked to do (:class:`ExportSpec`), and the checks made before any work starts.

Every value is checked up front (architecture, variant, class count, labels, preprocessing, formats,
batch sizes, version, sample images, the reduced precisions and whether this machine can verify them,
the calibration folder, the Lite interpreter), so a bad
request fails in a second with one message naming the problem, never after minutes of exporting.
Where an export's facts come from (a training run, a config, the command line) is
``training.export.source``'s job; this module takes them as given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model import repository as repo
from model.manifest import is_valid_model_name
from model.preprocess_config import PreprocessConfig, resolve_preprocess
from training.export.verify import DEFAULT_TOLERANCE

LOG = logging.getLogger(__name__)

FORMATS = ("mindir", "onnx", "lite", "onnx_int8", "onnx_fp16")
DEFAULT_FORMATS = ("mindir", "onnx", "lite")  # the reduced-precision files only when asked for
# a reduced precision -> the file it adds (bf16 runs model.onnx on OpenVINO: no file of its own)
PRECISION_FORMATS = {"int8": "onnx_int8", "fp16": "onnx_fp16", "bf16": "onnx"}


class ExportError(RuntimeError):
    """A user-facing export failure (bad input, failed conversion or verification); nothing was published."""


@dataclass
class ExportSpec:
    """What to export and where. ``preprocess`` (a :class:`PreprocessConfig` or its dict) None takes the
    architecture's default. ``formats`` None means mindir + onnx, plus lite when a Lite interpreter is
    found (``lite_python``, else this Python or ``.venv-lite37``)."""

    checkpoint: Path
    arch: str
    repository: Path
    name: str
    num_classes: int = 1000
    labels: list[str] | None = None
    preprocess: PreprocessConfig | dict[str, Any] | None = None
    variant: str | None = None  # None: what the checkpoint holds (model.weights.checkpoint_variant)
    version: int | None = None
    formats: tuple[str, ...] | None = None
    batch_sizes: tuple[int, ...] = ()
    lite_python: str | None = None
    tolerance: float = DEFAULT_TOLERANCE
    sample_images: tuple[Path, ...] = ()
    calibration_dir: Path | None = None
    calibration_images: int = 64
    min_agreement: float = 0.98
    quant_format: str = "qdq"
    precisions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Checked:
    """The spec's derived values once checked: the eval preprocessing, the label list, the formats to
    write, the Lite interpreter (python, probe info) when ``lite`` is among them, and the reduced
    precisions to verify (fp32 is always)."""

    preprocess: PreprocessConfig
    labels: list[str]
    formats: tuple[str, ...]
    lite: tuple[str, dict[str, Any]] | None
    precisions: tuple[str, ...] = ()


def check_spec(spec: ExportSpec) -> Checked:
    """Validate ``spec`` (ExportError naming the first problem) and derive what the export needs."""
    from model.archs import ARCHS, VARIANTS
    from model.labels import resolve_labels

    spec.checkpoint = Path(spec.checkpoint)
    spec.repository = Path(spec.repository)
    if not is_valid_model_name(spec.name):
        raise ExportError(
            f"invalid model name {spec.name!r}: use letters, digits, '_', '.', '-' (not first), at most 128"
        )
    if not spec.checkpoint.is_file():
        raise ExportError(f"checkpoint {spec.checkpoint} does not exist")
    if spec.arch not in ARCHS:
        raise ExportError(f"unknown architecture {spec.arch!r}: choose from {', '.join(sorted(ARCHS))}")
    if spec.variant is None:
        from model.weights import WeightLoadError, checkpoint_variant

        try:
            spec.variant = checkpoint_variant(spec.checkpoint)
        except WeightLoadError as exc:
            raise ExportError(str(exc)) from None
        LOG.info("weight variant %s (what %s holds; --variant overrides)", spec.variant, spec.checkpoint.name)
    if spec.variant not in VARIANTS:
        raise ExportError(f"unknown weight variant {spec.variant!r}: choose from {', '.join(VARIANTS)}")
    if isinstance(spec.num_classes, bool) or not isinstance(spec.num_classes, int) or spec.num_classes < 1:
        raise ExportError(f"num_classes must be a positive integer, got {spec.num_classes!r}")
    bad = [b for b in spec.batch_sizes if isinstance(b, bool) or not isinstance(b, int) or b < 1]
    if bad:
        raise ExportError(f"batch sizes must be positive integers, got {bad}")
    if not spec.tolerance > 0:
        raise ExportError(f"tolerance must be positive, got {spec.tolerance}")
    try:
        pre = resolve_preprocess(spec.arch, spec.preprocess)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if pre.image_size < 64 or pre.image_size % 32:
        raise ExportError(f"image size {pre.image_size}: DDRNet needs a multiple of 32, at least 64")
    try:
        labels = resolve_labels(spec.num_classes, spec.labels)
    except ValueError as exc:
        raise ExportError(f"labels: {exc}") from None
    if spec.version is not None:
        if isinstance(spec.version, bool) or not isinstance(spec.version, int) or spec.version < 1:
            raise ExportError(f"version must be a positive integer, got {spec.version!r}")
        existing = repo.model_dir(spec.repository, spec.name) / str(spec.version)
        if existing.exists():
            raise ExportError(f"model {spec.name!r} version {spec.version} already exists at {existing}")
    for image in spec.sample_images:
        if not Path(image).is_file():
            raise ExportError(f"sample image {image} does not exist")
    precisions = _resolve_precisions(spec)
    formats, lite = _resolve_formats(spec, precisions)
    return Checked(pre, labels, formats, lite, precisions)


def _resolve_precisions(spec: ExportSpec) -> tuple[str, ...]:
    """The reduced precisions asked for (``--precisions``, plus int8/fp16 for their formats listed in
    ``--formats``), checked against what this machine can verify."""
    from inference.precision import PRECISIONS, PrecisionError, check_cpu_bf16
    from inference.runtimes import is_installed

    unknown = [p for p in spec.precisions if p not in PRECISIONS]
    if unknown:
        raise ExportError(f"unknown precision(s) {unknown}: choose from {', '.join(PRECISIONS)}")
    wanted = [p for p in spec.precisions if p != "fp32"]
    wanted += [p for p, fmt in PRECISION_FORMATS.items() if fmt != "onnx" and fmt in (spec.formats or ())]
    precisions = tuple(p for p in ("int8", "bf16", "fp16") if p in wanted)
    if "bf16" in precisions:
        if not is_installed("openvino"):
            raise ExportError("precision bf16 is run and verified by OpenVINO, which is not installed: "
                              "pip install 'ddrnet-serve[openvino]'")
        try:
            check_cpu_bf16()
        except PrecisionError as exc:
            raise ExportError(f"cannot verify bf16 on this machine: {exc}") from None
        if spec.formats is not None and "onnx" not in spec.formats:
            raise ExportError("precision bf16 runs the version's model.onnx: keep onnx in --formats")
    if precisions and not 0.0 <= spec.min_agreement <= 1.0:
        raise ExportError(f"minimum agreement must be within 0..1, got {spec.min_agreement}")
    return precisions


def _resolve_formats(
    spec: ExportSpec, precisions: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, dict[str, Any]] | None]:
    from inference.lite_tool import LITE_VENV, LiteToolError, find_lite

    formats = spec.formats
    explicit = formats is not None
    if formats is None:
        formats = DEFAULT_FORMATS
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown export format(s) {unknown}: choose from {', '.join(FORMATS)}")
    formats = tuple(formats) + tuple(PRECISION_FORMATS[p] for p in precisions)
    if not formats and not spec.batch_sizes:
        raise ExportError("no format to export: give --formats and/or --batch-sizes")
    if "onnx_int8" in formats and spec.calibration_dir is None:
        raise ExportError(
            "precision int8 (format onnx_int8) needs calibration images: give --calibration-dir (the "
            "training folder)"
        )
    if spec.calibration_dir is not None and precisions and not Path(spec.calibration_dir).is_dir():
        raise ExportError(f"calibration directory {spec.calibration_dir} does not exist")
    lite = None
    if "lite" in formats:
        try:
            lite = find_lite(spec.lite_python)
        except LiteToolError as exc:
            raise ExportError(f"--lite-python: {exc}") from None
        if lite is None:
            if explicit:
                raise ExportError(
                    "format 'lite' needs MindSpore Lite: mindspore_lite is not importable in this Python "
                    f"and there is no {LITE_VENV} (run scripts/setup_lite_py37.sh, or pass --lite-python)"
                )
            LOG.warning("MindSpore Lite not found (no %s, not importable here): skipping lite", LITE_VENV)
            formats = tuple(f for f in formats if f != "lite")
    return tuple(dict.fromkeys(formats)), lite
