"""Export a checkpoint into a new, verified version of a model repository.

``export_model(spec)`` builds the network from the checkpoint (``model.create_model`` +
``model.load_checkpoint``), writes the requested formats into a hidden staging directory inside
``<repository>/<name>/`` (``model.repository``):

- ``model.mindir``: MindIR with a dynamic batch dimension (``Tensor(shape=[None, 3, S, S])``), the
  network in eval mode and graph mode; ``model_b<N>.mindir`` fixed-batch files for ``batch_sizes``;
- ``model.onnx``: dynamic batch on input and output, exported in a child process
  (``training.onnx_export``);
- ``model.int8.onnx`` (opt-in format ``onnx_int8``, never by default): the ONNX model statically
  quantised to int8 by ONNX Runtime, calibrated on ``calibration_images`` real images of
  ``calibration_dir`` (the training folder) through the model's eval transform
  (``training.onnx_quantize``); verified by top-1 AGREEMENT with the checkpoint network on the sample
  photos plus held-out images of that folder (at least ``int8_min_agreement``), not by a logit
  tolerance;
- ``model.ms``: MindSpore Lite model made by ``mindspore_lite.Converter`` in the Lite interpreter
  (``training/lite_tool.py``) — from ONNX for Lite 2.0.x (which cannot read MindSpore 2.10's MindIR),
  from MindIR for newer releases;

then writes ``model.json``, loads every file with the runtime that will serve it and compares its
logits on real photos with the checkpoint network's (``training.export_verify``). Only when every
file passes is the staging directory renamed into place as the version; on any failure it is removed
and nothing is published.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model import repository as repo
from training.export_verify import DEFAULT_TOLERANCE, LITE_TOOL, VerificationError, failed_record

LOG = logging.getLogger(__name__)

FORMATS = ("mindir", "onnx", "lite", "onnx_int8")
DEFAULT_FORMATS = ("mindir", "onnx", "lite")  # onnx_int8 only when asked for
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
LITE_VENV = ".venv-lite37"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ExportError(RuntimeError):
    """A user-facing export failure (bad input, failed conversion or verification); nothing was published."""


@dataclass
class ExportSpec:
    """What to export and where. ``preprocess`` is a ``PreprocessConfig.to_dict()``; None takes the
    architecture's default eval config. ``formats`` None means mindir + onnx, plus lite when a Lite
    interpreter is found (``lite_python``, else this Python or ``.venv-lite37``)."""

    checkpoint: Path
    arch: str
    repository: Path
    name: str
    num_classes: int = 1000
    labels: list[str] | None = None
    preprocess: dict[str, Any] | None = None
    variant: str = "zoo"
    version: int | None = None
    formats: tuple[str, ...] | None = None
    batch_sizes: tuple[int, ...] = ()
    lite_python: str | None = None
    tolerance: float = DEFAULT_TOLERANCE
    sample_images: tuple[Path, ...] = ()
    calibration_dir: Path | None = None
    calibration_images: int = 64
    int8_min_agreement: float = 0.98
    quant_format: str = "qdq"


@dataclass
class ExportResult:
    version: int
    version_dir: Path
    manifest: repo.ModelManifest
    seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# MindSpore Lite interpreter discovery


def probe_lite(python: str) -> dict[str, Any] | None:
    """``{"mindspore_lite": version, "python": version}`` when ``python`` can import mindspore_lite."""
    try:
        proc = subprocess.run(
            [python, str(LITE_TOOL), "probe"], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return None
    return json.loads(lines[-1])


def lite_python_candidates() -> list[str]:
    import importlib.util

    out = []
    if importlib.util.find_spec("mindspore_lite") is not None:
        out.append(sys.executable)  # importable here, but it must still run in its own process
    for root in (PROJECT_ROOT, Path.cwd()):
        candidate = root / LITE_VENV / "bin" / "python"
        if candidate.is_file() and str(candidate) not in out:
            out.append(str(candidate))
    return out


def find_lite(explicit: str | None) -> tuple[str, dict[str, Any]] | None:
    """(python, probe info) of the first interpreter with MindSpore Lite; ``explicit`` must work."""
    if explicit:
        if not Path(explicit).is_file():
            raise ExportError(f"--lite-python {explicit} does not exist")
        info = probe_lite(explicit)
        if info is None:
            raise ExportError(f"--lite-python {explicit} cannot import mindspore_lite")
        return explicit, info
    for python in lite_python_candidates():
        info = probe_lite(python)
        if info is not None:
            return python, info
    return None


def _lite_reads_mindspore_mindir(version: str) -> bool:
    parts = [int("".join(c for c in p if c.isdigit()) or 0) for p in version.split(".")[:2]]
    return tuple(parts) > (2, 0)


# --------------------------------------------------------------------------------------------------
# checks


def _resolve_formats(spec: ExportSpec) -> tuple[tuple[str, ...], tuple[str, dict[str, Any]] | None]:
    formats = spec.formats
    explicit = formats is not None
    if formats is None:
        formats = DEFAULT_FORMATS
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown export format(s) {unknown}: choose from {', '.join(FORMATS)}")
    if not formats and not spec.batch_sizes:
        raise ExportError("no format to export: give --formats and/or --batch-sizes")
    if "onnx_int8" in formats:
        if spec.calibration_dir is None:
            raise ExportError(
                "format onnx_int8 needs calibration images: give --calibration-dir (the training folder)"
            )
        if not Path(spec.calibration_dir).is_dir():
            raise ExportError(f"calibration directory {spec.calibration_dir} does not exist")
        if not 0.0 <= spec.int8_min_agreement <= 1.0:
            raise ExportError(f"int8 minimum agreement must be within 0..1, got {spec.int8_min_agreement}")
    lite = None
    if "lite" in formats:
        lite = find_lite(spec.lite_python)
        if lite is None:
            if explicit:
                raise ExportError(
                    "format 'lite' needs MindSpore Lite: mindspore_lite is not importable in this Python "
                    f"and there is no {LITE_VENV} (run scripts/setup_lite_py37.sh, or pass --lite-python)"
                )
            LOG.warning("MindSpore Lite not found (no %s, not importable here): skipping lite", LITE_VENV)
            formats = tuple(f for f in formats if f != "lite")
    return tuple(dict.fromkeys(formats)), lite


def _check_spec(spec: ExportSpec) -> tuple[Any, list[str]]:
    from model.labels import resolve_labels
    from model.preprocess import PreprocessConfig

    if not repo.is_valid_model_name(spec.name):
        raise ExportError(
            f"invalid model name {spec.name!r}: use letters, digits, '_', '.', '-' (not first), at most 128"
        )
    if not spec.checkpoint.is_file():
        raise ExportError(f"checkpoint {spec.checkpoint} does not exist")
    from model.archs import ARCHS, DEFAULT_EVAL_CONFIGS, VARIANTS

    if spec.arch not in ARCHS:
        raise ExportError(f"unknown architecture {spec.arch!r}: choose from {', '.join(sorted(ARCHS))}")
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
        default = DEFAULT_EVAL_CONFIGS[spec.arch].to_dict()
        pre_dict = spec.preprocess if spec.preprocess is not None else default
        pre = PreprocessConfig.from_dict(dict(pre_dict))
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
    return pre, labels


# --------------------------------------------------------------------------------------------------
# the export


class _Steps:
    """tqdm progress over the named steps (quiet unless ``progress``), with per-step timings."""

    def __init__(self, total: int, progress: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, disable=not progress, unit="step", desc="export", leave=True)
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        self.bar.set_postfix_str(name)
        LOG.info("export: %s", name)
        start = time.monotonic()
        try:
            return fn()
        finally:
            self.seconds[name] = round(time.monotonic() - start, 3)
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _build_network(spec: ExportSpec) -> Any:
    import mindspore as ms

    import model as models
    from model.ms_device import use_device
    from model.onednn import configure_onednn

    configure_onednn()  # before the first CPU convolution (50x slower without it, BENCHMARKS.md)
    ms.set_context(mode=ms.GRAPH_MODE)
    use_device("CPU", 0)
    net = models.create_model(spec.arch, num_classes=spec.num_classes, variant=spec.variant)
    try:
        ignored = models.load_checkpoint(net, str(spec.checkpoint))
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError/OSError for bad files
        raise ExportError(f"cannot load checkpoint {spec.checkpoint} into {spec.arch}: {exc}") from None
    # Optimizer state (moments.*, global_step, ...) is ignored by the loader; an ignored entry under one
    # of the network's own modules is a weight this network would silently drop, e.g. the authors'
    # stem conv biases loaded into a zoo-variant network.
    modules = {p.name.split(".")[0] for p in net.get_parameters()}
    stray = [n for n in ignored if n.split(".")[0] in modules]
    if stray:
        shown = ", ".join(stray[:6]) + (" ..." if len(stray) > 6 else "")
        raise ExportError(
            f"cannot load checkpoint {spec.checkpoint} into {spec.arch} ({spec.variant} variant): it holds "
            f"weights this network does not use: {shown} (another variant or architecture?)"
        )
    net.set_train(False)
    return net


def _export_mindir(net: Any, staging: Path, image_size: int, batch: int | None) -> str:
    import mindspore as ms
    from mindspore import Tensor
    from mindspore import dtype as mstype

    stem = "model" if batch is None else f"model_b{batch}"
    if batch is None:
        sample = Tensor(shape=[None, 3, image_size, image_size], dtype=mstype.float32)
    else:
        sample = Tensor(np.zeros((batch, 3, image_size, image_size), np.float32))
    ms.export(net, sample, file_name=str(staging / stem), file_format="MINDIR")
    path = staging / f"{stem}.mindir"
    if not path.is_file():
        raise ExportError(f"mindspore.export wrote no {path.name}")
    return path.name


def _convert_lite(python: str, info: dict[str, Any], source: Path, fmk: str, output: Path) -> dict[str, Any]:
    cmd = [python, str(LITE_TOOL), "convert", "--model", str(source), "--fmk", fmk, "--output", str(output)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines or not output.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
        version = info.get("mindspore_lite")
        raise ExportError(f"MindSpore Lite {version} could not convert {source.name}:\n{tail}")
    return json.loads(lines[-1])


def _versions(lite_info: dict[str, Any] | None) -> dict[str, str]:
    import mindspore as ms
    import onnx
    import onnxruntime

    out = {
        "python": platform.python_version(),
        "mindspore": ms.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    if lite_info:
        out["mindspore_lite"] = str(lite_info.get("mindspore_lite"))
        out["lite_python"] = str(lite_info.get("python"))
    return out


def export_model(
    spec: ExportSpec,
    progress: bool = False,
    before_verify: Callable[[Path], None] | None = None,
) -> ExportResult:
    """Export, verify and publish one version; returns where it went. ``before_verify(staging_dir)``
    is a test hook called after the files are written and before they are verified (tests use it to
    tamper with a file). Raises :class:`ExportError`; on any error nothing is published."""
    spec.checkpoint = Path(spec.checkpoint)
    spec.repository = Path(spec.repository)
    pre, labels = _check_spec(spec)
    formats, lite = _resolve_formats(spec)
    size = pre.image_size
    steps_total = 4 + len(formats) + 2 * len(spec.batch_sizes) + len(formats)
    steps = _Steps(steps_total, progress)
    staging: Path | None = None
    scratch = tempfile.TemporaryDirectory(prefix="ddrnet-export-")
    try:
        ckpt_sha = steps.run("checkpoint sha256", lambda: repo.sha256_file(spec.checkpoint))
        net = steps.run("load checkpoint", lambda: _build_network(spec))
        from training.export_verify import sample_batch

        batch = sample_batch(pre.to_dict(), spec.sample_images)

        def reference_logits() -> np.ndarray:
            from mindspore import Tensor

            return np.asarray(net(Tensor(batch)).asnumpy(), dtype=np.float32)

        reference = steps.run("reference logits", reference_logits)
        int8_check: tuple[np.ndarray, np.ndarray] | None = None
        calibration: np.ndarray | None = None
        if "onnx_int8" in formats:
            from training.onnx_quantize import QuantizationError, calibration_paths, transform_images

            try:
                calib_paths, held_out = calibration_paths(Path(spec.calibration_dir), spec.calibration_images)
                calibration = transform_images(calib_paths, pre.to_dict())
                check_batch = np.concatenate([batch, transform_images(held_out, pre.to_dict())] if held_out
                                             else [batch])
            except QuantizationError as exc:
                raise ExportError(str(exc)) from None

            def int8_reference() -> np.ndarray:
                from mindspore import Tensor

                return np.asarray(net(Tensor(check_batch)).asnumpy(), dtype=np.float32)

            int8_check = (check_batch, steps.run("int8 reference logits", int8_reference))
        repo.remove_stale_staging(spec.repository, spec.name)
        staging = repo.create_staging_dir(spec.repository, spec.name)
        files: dict[str, Any] = {"fixed_batch": {}}
        lite_convert_info: dict[str, Any] = {}

        lite_from_mindir = lite is not None and _lite_reads_mindspore_mindir(lite[1]["mindspore_lite"])
        if "mindir" in formats or (lite_from_mindir and "lite" in formats):
            name = steps.run("export mindir", lambda: _export_mindir(net, staging, size, None))
            if "mindir" in formats:
                files["mindir"] = name
        for b in spec.batch_sizes:
            files["fixed_batch"][str(b)] = steps.run(
                f"export mindir b{b}", lambda b=b: _export_mindir(net, staging, size, b)
            )
        onnx_path: Path | None = None
        if "onnx" in formats or "lite" in formats or "onnx_int8" in formats:
            from training.onnx_export import OnnxExportError, export_onnx

            onnx_path = staging / "model.onnx" if "onnx" in formats else Path(scratch.name) / "model.onnx"
            try:
                args = (spec.checkpoint, spec.arch, spec.num_classes, spec.variant, size, onnx_path)
                steps.run("export onnx", lambda: export_onnx(*args, INPUT_NAME, OUTPUT_NAME))
            except OnnxExportError as exc:
                raise ExportError(str(exc)) from None
            if "onnx" in formats:
                files["onnx"] = onnx_path.name
        quantization: dict[str, Any] = {}
        if "onnx_int8" in formats and onnx_path is not None and calibration is not None:
            from training.onnx_quantize import QuantizationError, quantize_onnx

            int8_path = staging / repo.DEFAULT_FILENAMES["onnx_int8"]
            try:
                quantization = steps.run(
                    "quantize int8",
                    lambda: quantize_onnx(onnx_path, int8_path, calibration, INPUT_NAME, spec.quant_format),
                )
            except QuantizationError as exc:
                raise ExportError(str(exc)) from None
            files["onnx_int8"] = int8_path.name
        if "lite" in formats and lite is not None:
            python, info = lite
            if lite_from_mindir:
                source, fmk = staging / "model.mindir", "mindir"
            else:
                source, fmk = onnx_path, "onnx"
            lite_convert_info = steps.run(
                "convert lite", lambda: _convert_lite(python, info, source, fmk, staging / "model.ms")
            )
            files["lite"] = "model.ms"
        if "mindir" not in formats and (staging / "model.mindir").exists():
            (staging / "model.mindir").unlink()  # only written as the Lite converter's source

        if before_verify is not None:
            before_verify(staging)

        listed = [files[r] for r in repo.FILE_ROLES if files.get(r)] + list(files["fixed_batch"].values())
        manifest = repo.ModelManifest(
            name=spec.name,
            version=spec.version or 1,
            arch=spec.arch,
            num_classes=spec.num_classes,
            labels=labels,
            weight_variant=spec.variant,
            preprocess=pre.to_dict(),
            input=repo.TensorSpec(INPUT_NAME, "float32", [-1, 3, size, size]),
            output=repo.TensorSpec(OUTPUT_NAME, "float32", [-1, spec.num_classes]),
            files=files,
            checksums={n: repo.checksum_entry(staging / n) for n in listed},
            source_checkpoint_sha256=ckpt_sha,
            created_at=repo.utc_now_iso(),
            exporter=_versions(lite[1] if lite else None),
        )
        repo.write_manifest(staging, manifest)
        manifest.verification = _verify_all(
            steps, staging, manifest, batch, reference, spec.tolerance, lite, lite_convert_info,
            int8_check, spec.int8_min_agreement, quantization,
        )
        repo.write_manifest(staging, manifest)
        version = steps.run(
            "publish", lambda: repo.publish_version(staging, spec.repository, spec.name, spec.version)
        )
        staging = None  # renamed into place
    except repo.VersionExistsError as exc:
        raise ExportError(str(exc)) from None
    finally:
        steps.close()
        scratch.cleanup()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    version_dir = repo.version_dir(spec.repository, spec.name, version)
    return ExportResult(version, version_dir, repo.load_manifest(version_dir), steps.seconds)


def _verify_all(
    steps: _Steps,
    staging: Path,
    manifest: repo.ModelManifest,
    batch: np.ndarray,
    reference: np.ndarray,
    tolerance: float,
    lite: tuple[str, dict[str, Any]] | None,
    lite_convert_info: dict[str, Any],
    int8_check: tuple[np.ndarray, np.ndarray] | None = None,
    int8_min_agreement: float = 0.98,
    quantization: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    from training.export_verify import compare, merge, run_in_process, run_lite

    data = manifest.to_dict()
    records: dict[str, dict[str, Any]] = {}

    def dynamic(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
        full = compare(reference, outputs["full"], tolerance)
        again = compare(reference, outputs["full_again"], tolerance)
        return merge([full, compare(reference[:1], outputs["single"], tolerance), again])

    if manifest.has("mindir"):
        try:
            outputs = steps.run("verify mindir", lambda: run_in_process("mindspore", staging, data, batch))
            records["mindir"] = dynamic(outputs)
        except VerificationError as exc:
            records["mindir"] = failed_record(exc, tolerance, len(batch))
        records["mindir"]["runtime"] = "mindspore"
    if manifest.fixed_batch_files:
        try:
            outputs = steps.run(
                "verify mindir fixed batch",
                lambda: run_in_process("mindspore", staging, data, batch, {"fixed_batch": True}),
            )
        except VerificationError as exc:
            outputs = {}
            error = exc
        for n in manifest.fixed_batch_files:
            if f"b{n}" in outputs:
                ref = reference[np.arange(n) % len(reference)]  # the inputs were tiled the same way
                records[f"mindir_b{n}"] = compare(ref, outputs[f"b{n}"], tolerance)
            else:
                records[f"mindir_b{n}"] = failed_record(error if not outputs else "no output", tolerance, n)
            records[f"mindir_b{n}"]["runtime"] = "mindspore"
    if manifest.has("onnx"):
        try:
            outputs = steps.run("verify onnx", lambda: run_in_process("onnxruntime", staging, data, batch))
            records["onnx"] = dynamic(outputs)
        except VerificationError as exc:
            records["onnx"] = failed_record(exc, tolerance, len(batch))
        records["onnx"]["runtime"] = "onnxruntime"
    if manifest.has("lite") and lite is not None:
        try:
            outputs, _info = steps.run("verify lite", lambda: run_lite(lite[0], staging, batch))
            records["lite"] = dynamic(outputs)
        except VerificationError as exc:
            records["lite"] = failed_record(exc, tolerance, len(batch))
        records["lite"].update(
            runtime="lite",
            threads=1,
            converted_from=str(lite_convert_info.get("fmk", "")),
            model_type=str(lite_convert_info.get("model_type", "MINDIR")),
        )
    if manifest.has("onnx_int8") and int8_check is not None:
        from training.onnx_quantize import top1_agreement_record

        check_batch, check_reference = int8_check
        try:
            outputs = steps.run(
                "verify onnx_int8",
                lambda: run_in_process("onnxruntime", staging, data, check_batch, {"precision": "int8"}),
            )
            full = top1_agreement_record(check_reference, outputs["full"], int8_min_agreement)
            again = top1_agreement_record(check_reference, outputs["full_again"], int8_min_agreement)
            records["onnx_int8"] = full if full["top1_agreement"] <= again["top1_agreement"] else again
            records["onnx_int8"]["passed"] = full["passed"] and again["passed"]
        except VerificationError as exc:
            records["onnx_int8"] = failed_record(exc, tolerance, len(check_batch))
            records["onnx_int8"].update(rule="top1_agreement", min_top1_agreement=int8_min_agreement)
        records["onnx_int8"].update(
            runtime="onnxruntime", precision="int8", quantization=dict(quantization or {})
        )

    def describe(key: str, rec: dict[str, Any]) -> str:
        if rec.get("rule") == "top1_agreement":
            return (
                f"{key}: top-1 agreement {rec['top1_agreement']:.3f} on {rec['samples']} images "
                f"(minimum {rec['min_top1_agreement']:.3f}), max |logit diff| {rec['max_abs_diff']:.3g}"
            )
        return (
            f"{key}: max |logit diff| {rec['max_abs_diff']:.3g} (tolerance {tolerance:g}), "
            f"top-1 agreement {rec['top1_agreement']:.3f}"
        )

    failed = {k: v for k, v in records.items() if not v["passed"]}
    for key, rec in records.items():
        LOG.info("verify %s %s", describe(key, rec), "ok" if rec["passed"] else "FAILED")
    if failed:
        detail = "; ".join(
            describe(k, v) + (f", {v['error']}" if v.get("error") else "") for k, v in failed.items()
        )
        raise ExportError(f"verification failed, nothing published: {detail}")
    for rec in records.values():
        rec.pop("passed", None)
    return records
