"""The verification step of an export: every file of a staged version, run by its runtime and compared
with the checkpoint network, one record per file for ``model.json``'s ``verification``.

Float files (MindIR dynamic and fixed-batch, ONNX, Lite) pass on ``training.export.verify.compare``'s
rule (logits within the tolerance, same top-1) at the full sample batch, at batch 1 and at the full
batch again. Each reduced precision passes on top-1 agreement with the checkpoint on the sample photos
plus held-out training images (``verify.top1_agreement_record``), run by every runtime that serves it
here (``inference.precision``): int8 (``model.int8.onnx``) on ONNX Runtime and, when installed,
OpenVINO; bf16 (``model.onnx``) on OpenVINO; fp16 (``model.fp16.onnx``) on ONNX Runtime. Each record
says its ``precision`` and ``runtime``. Any failing file fails the export: nothing is published, and
the error names every failing file with its figures.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.runtimes.base import tile_batch
from model.manifest import ModelManifest
from training.export.verify import (
    VerificationError,
    compare,
    failed_record,
    merge,
    run_in_process,
    run_in_worker,
)

LOG = logging.getLogger(__name__)

Step = Callable[[str, Callable[[], Any]], Any]


class VerificationFailed(RuntimeError):
    """At least one file failed verification; the message names each with its figures."""


@dataclass
class Evidence:
    """What the files are checked against: the sample batch and the checkpoint network's logits on it,
    and for the reduced ``precisions`` a larger batch (photos + held-out images) with its logits."""

    batch: np.ndarray
    reference: np.ndarray
    tolerance: float
    precisions: tuple[str, ...] = ()
    agreement_batch: np.ndarray | None = None
    agreement_reference: np.ndarray | None = None
    min_agreement: float = 0.98
    quantization: dict[str, Any] = field(default_factory=dict)


# (record key, precision, file role, runtime): the reduced-precision checks, in order
REDUCED_CHECKS = (
    ("onnx_int8", "int8", "onnx_int8", "onnxruntime"),
    ("onnx_int8_openvino", "int8", "onnx_int8", "openvino"),
    ("onnx_bf16", "bf16", "onnx", "openvino"),
    ("onnx_fp16", "fp16", "onnx_fp16", "onnxruntime"),
)


def _dynamic(ev: Evidence, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    full = compare(ev.reference, outputs["full"], ev.tolerance)
    again = compare(ev.reference, outputs["full_again"], ev.tolerance)
    return merge([full, compare(ev.reference[:1], outputs["single"], ev.tolerance), again])


def verify_version(
    step: Step,
    staging: Path,
    manifest: ModelManifest,
    ev: Evidence,
    lite: tuple[str, dict[str, Any]] | None,
    lite_convert_info: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """One record per file of ``manifest`` in ``staging``; VerificationFailed when any fails.
    ``step(name, fn)`` runs and times each check (the exporter's progress bar)."""
    records: dict[str, dict[str, Any]] = {}
    n = len(ev.batch)
    if manifest.has("mindir"):
        try:
            outputs = step("verify mindir", lambda: run_in_process("mindspore", staging, manifest, ev.batch))
            records["mindir"] = _dynamic(ev, outputs)
        except VerificationError as exc:
            records["mindir"] = failed_record(exc, ev.tolerance, n)
        records["mindir"]["runtime"] = "mindspore"
    if manifest.fixed_batch_files:
        records.update(_verify_fixed(step, staging, manifest, ev))
    if manifest.has("onnx"):
        try:
            outputs = step("verify onnx", lambda: run_in_process("onnxruntime", staging, manifest, ev.batch))
            records["onnx"] = _dynamic(ev, outputs)
        except VerificationError as exc:
            records["onnx"] = failed_record(exc, ev.tolerance, n)
        records["onnx"]["runtime"] = "onnxruntime"
    if manifest.has("lite") and lite is not None:
        try:
            outputs, _info = step("verify lite", lambda: run_in_worker(
                "lite", staging, manifest, ev.batch, python=lite[0], threads=1,
                options={"lite_source": "lite"}))
            records["lite"] = _dynamic(ev, outputs)
        except VerificationError as exc:
            records["lite"] = failed_record(exc, ev.tolerance, n)
        records["lite"].update(
            runtime="lite",
            threads=1,
            converted_from=str(lite_convert_info.get("fmk", "")),
            model_type=str(lite_convert_info.get("model_type", "MINDIR")),
        )
    records.update(_verify_reduced(step, staging, manifest, ev))
    _raise_on_failure(records)
    for rec in records.values():
        rec.pop("passed", None)
    return records


def _verify_fixed(
    step: Step, staging: Path, manifest: ModelManifest, ev: Evidence
) -> dict[str, dict[str, Any]]:
    error: object = "no output"
    try:
        outputs = step("verify mindir fixed batch", lambda: run_in_process(
            "mindspore", staging, manifest, ev.batch, {"fixed_batch": True}))
    except VerificationError as exc:
        outputs, error = {}, exc
    records = {}
    for size in manifest.fixed_batch_files:
        key = f"mindir_b{size}"
        if f"b{size}" in outputs:  # the inputs were tiled the same way
            records[key] = compare(tile_batch(ev.reference, size), outputs[f"b{size}"], ev.tolerance)
        else:
            records[key] = failed_record(error, ev.tolerance, size)
        records[key]["runtime"] = "mindspore"
    return records


def _verify_reduced(
    step: Step, staging: Path, manifest: ModelManifest, ev: Evidence
) -> dict[str, dict[str, Any]]:
    from inference.runtimes import is_installed

    records: dict[str, dict[str, Any]] = {}
    for key, precision, role, runtime in REDUCED_CHECKS:
        if precision not in ev.precisions or not manifest.has(role):
            continue
        if runtime == "openvino" and precision == "int8" and not is_installed("openvino"):
            continue  # int8 is verified on ONNX Runtime anyway; OpenVINO adds a second runtime
        records[key] = _verify_agreement(step, staging, manifest, ev, key, precision, runtime)
    return records


def _verify_agreement(
    step: Step, staging: Path, manifest: ModelManifest, ev: Evidence, key: str, precision: str, runtime: str
) -> dict[str, Any]:
    from training.export.verify import top1_agreement_record

    assert ev.agreement_batch is not None and ev.agreement_reference is not None
    try:
        outputs = step(f"verify {key}", lambda: _run_reduced(runtime, staging, manifest, ev.agreement_batch,
                                                             precision))
        full = top1_agreement_record(ev.agreement_reference, outputs["full"], ev.min_agreement)
        again = top1_agreement_record(ev.agreement_reference, outputs["full_again"], ev.min_agreement)
        record = full if full["top1_agreement"] <= again["top1_agreement"] else again
        record["passed"] = full["passed"] and again["passed"]
    except VerificationError as exc:
        record = failed_record(exc, ev.tolerance, len(ev.agreement_batch))
        record.update(rule="top1_agreement", min_top1_agreement=ev.min_agreement)
    record.update(runtime=runtime, precision=precision, file=manifest.files[REDUCED_FILE[key]])
    if precision == "int8":
        record["quantization"] = dict(ev.quantization)
    return record


def _run_reduced(
    runtime: str, staging: Path, manifest: ModelManifest, batch: np.ndarray, precision: str
) -> dict[str, np.ndarray]:
    """ONNX Runtime in this process; OpenVINO in a worker process, as it serves: once MindSpore has run
    CPU kernels in a process (the checkpoint network did, here), OpenVINO 2026.4's bf16 convolutions
    fail there ("Convolution node ... object is not initialized", measured), while a fresh process runs
    them."""
    if runtime == "openvino":
        return run_in_worker(runtime, staging, manifest, batch, python=sys.executable, threads=None,
                             options={"precision": precision})[0]
    return run_in_process(runtime, staging, manifest, batch, {"precision": precision})


REDUCED_FILE = {key: role for key, _precision, role, _runtime in REDUCED_CHECKS}


def describe(rec: dict[str, Any]) -> str:
    """The figures of one verification record, in words (logs, errors, ``ddrnet export``'s summary)."""
    if rec.get("rule") == "top1_agreement":
        return (
            f"top-1 agreement {rec['top1_agreement']:.3f} on {rec['samples']} images "
            f"(minimum {rec['min_top1_agreement']:.3f}), max |logit diff| {rec['max_abs_diff']:.3g}"
        )
    return (
        f"max |logit diff| {rec['max_abs_diff']:.3g} (tolerance {rec['tolerance']:g}), "
        f"top-1 agreement {rec['top1_agreement']:.3f}"
    )


def _raise_on_failure(records: dict[str, dict[str, Any]]) -> None:
    for key, rec in records.items():
        LOG.info("verify %s: %s %s", key, describe(rec), "ok" if rec["passed"] else "FAILED")
    failed = {k: v for k, v in records.items() if not v["passed"]}
    if failed:
        detail = "; ".join(
            f"{k}: {describe(v)}" + (f", {v['error']}" if v.get("error") else "") for k, v in failed.items()
        )
        raise VerificationFailed(f"verification failed, nothing published: {detail}")
