"""Export a checkpoint into a new, verified version of a model repository: the steps, in order.

``export_model(spec)`` checks the request (``training.export.spec``), builds the eval network from the
checkpoint (``training.export.network``) and its logits on real photos, then writes the requested
formats into a hidden staging directory inside ``<repository>/<name>/`` (``model.repository``):

- ``model.mindir`` (dynamic batch) and ``model_b<N>.mindir`` fixed-batch files (``mindir``);
- ``model.onnx``: dynamic batch on input and output, exported in a child process (``onnx_writer``);
- ``model.int8.onnx`` (``--precisions int8``, format ``onnx_int8``): ONNX Runtime's static int8
  quantisation, calibrated on ``calibration_images`` real images of ``calibration_dir`` (``int8``);
- ``model.fp16.onnx`` (``--precisions fp16``, format ``onnx_fp16``): float16 weights (``fp16``);
  ``--precisions bf16`` adds no file (OpenVINO runs ``model.onnx`` in bf16) but its own check;
- ``model.ms``: MindSpore Lite's converter, run in the Lite interpreter (``inference.lite_tool``) —
  from ONNX for Lite 2.0.x (which cannot read MindSpore 2.10's MindIR), from MindIR for newer releases;

then writes ``model.json`` (``model.manifest``), runs every file with the runtime that will serve it
and compares its logits with the checkpoint network's (``checks``). Only when every file passes is
the staging directory renamed into place as the version; on any failure it is removed and nothing
is published.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model import repository as repo
from model.manifest import (
    DEFAULT_FILENAMES,
    FILE_ROLES,
    ModelManifest,
    TensorSpec,
    utc_now_iso,
    write_manifest,
)
from training.export.spec import ExportError, ExportSpec, check_spec

LOG = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass
class ExportResult:
    version: int
    version_dir: Path
    manifest: ModelManifest
    seconds: dict[str, float] = field(default_factory=dict)


class _Steps:
    """tqdm progress over the named steps (quiet unless ``progress``), with per-step timings."""

    def __init__(self, total: int, progress: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, disable=not progress, unit="step", desc="export", leave=True)
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
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


def _versions(lite_info: dict[str, Any] | None, precisions: tuple[str, ...]) -> dict[str, str]:
    import importlib.metadata

    import mindspore as ms
    import onnx
    import onnxruntime

    out = {
        "python": platform.python_version(),
        "mindspore": ms.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    if "bf16" in precisions or "int8" in precisions:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out["openvino"] = importlib.metadata.version("openvino")
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
    from training.export.checks import Evidence, VerificationFailed, verify_version
    from training.export.network import build_network, logits
    from training.export.verify import VerificationError, sample_batch

    checked = check_spec(spec)
    formats, lite, pre = checked.formats, checked.lite, checked.preprocess
    steps = _Steps(4 + 2 * len(formats) + 2 * len(spec.batch_sizes), progress)
    staging: Path | None = None
    scratch = tempfile.TemporaryDirectory(prefix="ddrnet-export-")
    try:
        ckpt_sha = steps("checkpoint sha256", lambda: repo.sha256_file(spec.checkpoint))
        net = steps("load checkpoint", lambda: build_network(spec))
        try:
            batch = sample_batch(pre, spec.sample_images)
        except VerificationError as exc:
            raise ExportError(str(exc)) from None
        evidence = Evidence(batch, steps("reference logits", lambda: logits(net, batch)), spec.tolerance,
                            checked.precisions, min_agreement=spec.min_agreement)
        calibration = _agreement_inputs(spec, pre, net, evidence, steps) if checked.precisions else None
        repo.remove_stale_staging(spec.repository, spec.name)
        staging = repo.create_staging_dir(spec.repository, spec.name)
        files, lite_convert_info = _write_files(spec, formats, lite, pre.image_size, net, staging,
                                                Path(scratch.name), calibration, evidence, steps)
        if before_verify is not None:
            before_verify(staging)
        listed = [files[r] for r in FILE_ROLES if files.get(r)] + list(files["fixed_batch"].values())
        manifest = ModelManifest(
            name=spec.name,
            version=spec.version or 1,
            arch=spec.arch,
            num_classes=spec.num_classes,
            labels=checked.labels,
            weight_variant=spec.variant,
            preprocess=pre,
            input=TensorSpec(INPUT_NAME, "float32", [-1, 3, pre.image_size, pre.image_size]),
            output=TensorSpec(OUTPUT_NAME, "float32", [-1, spec.num_classes]),
            files=files,
            checksums={n: repo.checksum_entry(staging / n) for n in listed},
            source_checkpoint_sha256=ckpt_sha,
            created_at=utc_now_iso(),
            exporter=_versions(lite[1] if lite else None, checked.precisions),
        )
        write_manifest(staging, manifest)
        try:
            records = verify_version(steps, staging, manifest, evidence, lite, lite_convert_info)
        except VerificationFailed as exc:
            raise ExportError(str(exc)) from None
        manifest.verification = records
        write_manifest(staging, manifest)
        target = (spec.repository, spec.name, spec.version)
        version = steps("publish", lambda: repo.publish_version(staging, *target))
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


def _agreement_inputs(
    spec: ExportSpec, pre: Any, net: Any, evidence: Any, steps: _Steps
) -> np.ndarray | None:
    """The int8 calibration batch (None without a calibration folder); also puts the reduced
    precisions' check batch (the sample photos + held-out images of the calibration folder, the photos
    alone without one) and the checkpoint's logits on it into ``evidence``."""
    from training.export.int8 import QuantizationError, calibration_paths, transform_images
    from training.export.network import logits

    parts, calibration = [evidence.batch], None
    if spec.calibration_dir is not None:
        try:
            calib_paths, held_out = calibration_paths(Path(spec.calibration_dir), spec.calibration_images)
            calibration = transform_images(calib_paths, pre)
            if held_out:
                parts.append(transform_images(held_out, pre))
        except QuantizationError as exc:
            raise ExportError(str(exc)) from None
    else:
        LOG.warning("reduced precisions are verified on the %d sample photos alone: give --calibration-dir "
                    "(the training folder) for held-out images too", len(evidence.batch))
    evidence.agreement_batch = np.concatenate(parts)
    evidence.agreement_reference = steps("agreement reference logits",
                                         lambda: logits(net, evidence.agreement_batch))
    return calibration


def _write_files(
    spec: ExportSpec, formats: tuple[str, ...], lite: tuple[str, dict[str, Any]] | None, size: int, net: Any,
    staging: Path, scratch: Path, calibration: np.ndarray | None, evidence: Any, steps: _Steps,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write every requested file into ``staging``; returns (``files`` for the manifest, the Lite
    converter's record)."""
    from inference.lite_tool import LiteToolError, convert_with
    from inference.runtimes.lite_rt import reads_mindspore_mindir
    from training.export.network import export_mindir

    files: dict[str, Any] = {"fixed_batch": {}}
    lite_from_mindir = lite is not None and reads_mindspore_mindir(lite[1]["mindspore_lite"])
    if "mindir" in formats or (lite_from_mindir and "lite" in formats):
        name = steps("export mindir", lambda: export_mindir(net, staging, size, None))
        if "mindir" in formats:
            files["mindir"] = name
    for b in spec.batch_sizes:
        files["fixed_batch"][str(b)] = steps(f"export mindir b{b}",
                                             lambda b=b: export_mindir(net, staging, size, b))
    onnx_path: Path | None = None
    if {"onnx", "lite", "onnx_int8", "onnx_fp16"} & set(formats):
        from training.export.onnx_writer import OnnxExportError, export_onnx

        onnx_path = staging / "model.onnx" if "onnx" in formats else scratch / "model.onnx"
        try:
            args = (spec.checkpoint, spec.arch, spec.num_classes, spec.variant, size, onnx_path)
            steps("export onnx", lambda: export_onnx(*args, INPUT_NAME, OUTPUT_NAME))
        except OnnxExportError as exc:
            raise ExportError(str(exc)) from None
        if "onnx" in formats:
            files["onnx"] = onnx_path.name
    if "onnx_int8" in formats and onnx_path is not None and calibration is not None:
        from training.export.int8 import QuantizationError, quantize_onnx

        int8_path = staging / DEFAULT_FILENAMES["onnx_int8"]
        try:
            evidence.quantization = steps("quantize int8", lambda: quantize_onnx(
                onnx_path, int8_path, calibration, INPUT_NAME, spec.quant_format))
        except QuantizationError as exc:
            raise ExportError(str(exc)) from None
        files["onnx_int8"] = int8_path.name
    if "onnx_fp16" in formats and onnx_path is not None:
        from training.export.fp16 import Fp16ExportError, convert_fp16

        fp16_path = staging / DEFAULT_FILENAMES["onnx_fp16"]
        try:
            steps("convert fp16", lambda: convert_fp16(onnx_path, fp16_path))
        except Fp16ExportError as exc:
            raise ExportError(str(exc)) from None
        files["onnx_fp16"] = fp16_path.name
    lite_convert_info: dict[str, Any] = {}
    if "lite" in formats and lite is not None:
        source, fmk = (staging / "model.mindir", "mindir") if lite_from_mindir else (onnx_path, "onnx")
        assert source is not None
        try:
            lite_convert_info = steps("convert lite", lambda: convert_with(lite[0], source, fmk,
                                                                            staging / "model.ms"))
        except LiteToolError as exc:
            raise ExportError(str(exc)) from None
        files["lite"] = "model.ms"
    if "mindir" not in formats and (staging / "model.mindir").exists():
        (staging / "model.mindir").unlink()  # only written as the Lite converter's source
    return files, lite_convert_info
