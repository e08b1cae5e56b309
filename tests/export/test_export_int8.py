"""Opt-in int8 export (``onnx_int8``): produced, listed in model.json, verified by top-1 agreement,
refused below the agreement threshold; served only when the server is asked for precision int8."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest

from model import manifest as mf
from model import repository as repo
from tests.export.conftest import IMAGE_SIZE, NUM_CLASSES
from training.export import ExportError, ExportSpec, export_model
from training.export.int8 import calibration_paths
from training.export.spec import check_spec
from training.export.verify import top1_agreement_record

HERE = Path(__file__).resolve().parent


def _spec(checkpoint: Path, repository: Path, **kw) -> ExportSpec:
    base = {
        "checkpoint": checkpoint,
        "arch": "ddrnet23_slim",
        "repository": repository,
        "name": "slim",
        "num_classes": NUM_CLASSES,
        "preprocess": {"image_size": IMAGE_SIZE},
        "formats": ("onnx", "onnx_int8"),
        "calibration_images": 10,
        "min_agreement": 0.5,
    }
    base.update(kw)
    return ExportSpec(**base)


@pytest.fixture(scope="module")
def int8_version(checkpoint, train_dir, tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("repo")
    result = export_model(_spec(checkpoint, repository, calibration_dir=train_dir))
    return result.version_dir


# -- pure rules (fast) ---------------------------------------------------------------------------------


def test_agreement_record_counts_top1_matches_not_logit_distance():
    reference = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]], np.float32)
    shifted = reference + 0.9  # far outside any float tolerance, same top-1 everywhere
    record = top1_agreement_record(reference, shifted, 0.98)
    assert record["passed"] and record["top1_agreement"] == 1.0 and record["rule"] == "top1_agreement"
    one_wrong = reference.copy()
    one_wrong[3] = [0.0, 1.0, 0.0]
    record = top1_agreement_record(reference, one_wrong, 0.98)
    assert not record["passed"] and record["top1_agreement"] == 0.75
    assert top1_agreement_record(reference, one_wrong, 0.75)["passed"]
    assert not top1_agreement_record(reference, one_wrong[:2], 0.0)["passed"]  # shape mismatch


def test_calibration_images_spread_over_classes_and_held_out_images_differ(train_dir):
    calib, held = calibration_paths(train_dir, 10)
    assert len(calib) == 10 and {p.parent.name for p in calib} == {str(i) for i in range(10)}
    assert held and not set(calib) & set(held)


def test_int8_is_never_a_default_format(checkpoint, tmp_path):
    formats = check_spec(_spec(checkpoint, tmp_path, formats=None)).formats
    assert "onnx_int8" not in formats


@pytest.mark.parametrize(
    "change, message",
    [
        ({}, "needs calibration images: give --calibration-dir"),
        ({"calibration_dir": Path("/nonexistent/train")}, "directory /nonexistent/train does not exist"),
        ({"calibration_dir": HERE, "min_agreement": 1.5}, "minimum agreement must be within 0..1"),
    ],
)
def test_bad_int8_requests_are_named(checkpoint, tmp_path, change, message):
    with pytest.raises(ExportError, match=message):
        export_model(_spec(checkpoint, tmp_path, **change))
    assert repo.list_versions(tmp_path, "slim") == []


# -- export and serving (slow: one MindSpore + ONNX export each) -------------------------------------


@pytest.mark.slow
def test_int8_file_produced_listed_and_verified_by_agreement(int8_version):
    manifest = repo.check_version(int8_version)  # checksums of every listed file, int8 included
    assert manifest.files["onnx_int8"] == "model.int8.onnx" and "model.int8.onnx" in manifest.file_names()
    record = manifest.verification["onnx_int8"]
    assert record["rule"] == "top1_agreement" and record["precision"] == "int8"
    assert record["min_top1_agreement"] == 0.5 <= record["top1_agreement"] <= 1.0
    assert record["samples"] > 6  # the sample photos plus held-out training images
    assert record["quantization"]["per_channel"] and record["quantization"]["calibration_images"] == 10
    import onnx

    ops = {node.op_type for node in onnx.load(str(int8_version / "model.int8.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


@pytest.mark.slow
def test_int8_below_the_agreement_threshold_is_refused(checkpoint, train_dir, tmp_path):
    import onnx
    from onnx import helper

    def negate_logits(staging: Path) -> None:
        """An int8 file whose logits are negated: its top-1 is the reference's bottom class."""
        path = staging / "model.int8.onnx"
        model = onnx.load(str(path))
        out = model.graph.output[0].name
        for node in model.graph.node:
            node.output[:] = [f"{out}_raw" if o == out else o for o in node.output]
        model.graph.node.append(helper.make_node("Neg", [f"{out}_raw"], [out]))
        onnx.save(model, str(path))

    refused = r"onnx_int8: top-1 agreement 0\.000 on \d+ images \(minimum 0\.500\)"
    with pytest.raises(ExportError, match=refused):
        export_model(_spec(checkpoint, tmp_path, calibration_dir=train_dir), before_verify=negate_logits)
    assert repo.list_versions(tmp_path, "slim") == []


@pytest.mark.slow
def test_onnxruntime_serves_int8_only_when_asked(int8_version):
    from inference.runtimes import ModelFileError
    from inference.runtimes.onnxruntime_rt import OnnxRuntime

    manifest = mf.load_manifest(int8_version)
    fp32, int8 = OnnxRuntime(), OnnxRuntime()
    fp32.load(str(int8_version), manifest, options={"threads": 1})
    int8.load(str(int8_version), manifest, options={"threads": 1, "precision": "int8"})
    assert (fp32.describe()["file"], fp32.describe()["precision"]) == ("model.onnx", "fp32")
    assert (int8.describe()["file"], int8.describe()["precision"]) == ("model.int8.onnx", "int8")
    x = np.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    assert int8.infer(x).shape == (2, NUM_CLASSES)
    without = dataclasses.replace(manifest, files={"onnx": "model.onnx", "fixed_batch": {}},
                                  checksums={"model.onnx": manifest.checksums["model.onnx"]})
    with pytest.raises(ModelFileError, match=r"has no model\.int8\.onnx for the onnxruntime runtime"):
        OnnxRuntime().load(str(int8_version), without, options={"precision": "int8"})


def test_settings_refuse_int8_on_other_runtimes(tmp_path):
    from pydantic import ValidationError

    from server.settings import ServerSettings

    with pytest.raises(ValidationError, match=r"int8 on cpu is served by openvino, onnxruntime, not"):
        ServerSettings(model_repository=tmp_path, runtime="mindspore", precision="int8")
    assert ServerSettings(model_repository=tmp_path).precision == "fp32"


@pytest.mark.slow
def test_server_serves_int8_when_asked_and_fp32_by_default(int8_version):
    from PIL import Image

    from tests.support import server_fixtures as sf

    buf = io.BytesIO()
    Image.new("RGB", (80, 60), (200, 30, 30)).save(buf, format="PNG")
    repository = int8_version.parent.parent

    async def served_file(precision: str) -> str:
        settings = sf.settings_for(repository, precision=precision, runtime="onnxruntime")
        async with sf.started_core(settings, runtime=None) as core:
            result = await core.classify([buf.getvalue()], model="slim", protocol="http")
            assert result.version == "1"
            return core.manager.describe()[0]["instances"][0]["file"]

    assert asyncio.run(served_file("int8")) == "model.int8.onnx"
    assert asyncio.run(served_file("fp32")) == "model.onnx"


def test_cli_int8_options(checkpoint, tmp_path):
    import argparse

    from cli import export as cli_export
    from cli.errors import CliError

    def parse(argv: list[str]) -> argparse.Namespace:
        parser = argparse.ArgumentParser(prog="ddrnet export")
        cli_export.add_arguments(parser)
        return parser.parse_args(argv)

    common = ["--checkpoint", str(checkpoint), "--repository", str(tmp_path / "r"), "--name", "slim",
              "--formats", "onnx,onnx_int8"]
    with pytest.raises(CliError, match="needs calibration images: give --calibration-dir"):
        cli_export.run(parse([*common, "--arch", "ddrnet23_slim"]))
    # With --config the calibration images default to the training split's folder.
    data = tmp_path / "data"
    (data / "train" / "a").mkdir(parents=True)
    config = tmp_path / "train.yaml"
    config.write_text(f"arch: ddrnet23_slim\nnum_classes: 2\ndata_url: {data}\noutput_dir: {tmp_path}\n")
    spec = cli_export.spec_from_args(parse([*common, "--config", str(config), "--calibration-images", "5",
                                        "--int8-min-agreement", "0.9"]))
    assert spec.calibration_dir == data / "train"
    assert (spec.calibration_images, spec.min_agreement) == (5, 0.9)
    argv = [*common, "--config", str(config), "--calibration-dir", str(tmp_path)]
    explicit = cli_export.spec_from_args(parse(argv))
    assert explicit.calibration_dir == tmp_path
