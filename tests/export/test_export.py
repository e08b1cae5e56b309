"""ddrnet export: a verified version is published atomically, and nothing is published when a file
is corrupt, mismatching or cannot be made; CLI errors name the problem."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from cli import export as cli_export
from cli.errors import CliError
from inference.lite_tool import find_lite
from model import manifest as mf
from model import repository as repo
from model.preprocess_config import PreprocessConfig
from model.samples import sample_photos
from model.weights import WeightLoadError, checkpoint_variant
from tests.export.conftest import IMAGE_SIZE, NUM_CLASSES
from training.export import ExportError, ExportSpec, export_model
from training.export.onnx_writer import make_batch_symbolic
from training.export.verify import VERIFICATION_PHOTOS, compare, sample_batch


def _spec(checkpoint: Path, repository: Path, **kw) -> ExportSpec:
    base = {
        "checkpoint": checkpoint,
        "arch": "ddrnet23_slim",
        "repository": repository,
        "name": "slim",
        "num_classes": NUM_CLASSES,
        "preprocess": {"image_size": IMAGE_SIZE},
        "formats": ("mindir", "onnx"),
    }
    base.update(kw)
    return ExportSpec(**base)


def _nothing_published(repository: Path, name: str = "slim") -> None:
    assert repo.list_versions(repository, name) == []
    mdir = repository / name
    names = [p.name for p in mdir.iterdir()] if mdir.exists() else []
    leftovers = [n for n in names if n.startswith(repo.STAGING_PREFIX)]
    assert leftovers == [], f"staging directories left behind: {leftovers}"


# ---------------------------------------------------------------------------------------------------
# real exports


@pytest.mark.slow
def test_export_publishes_a_verified_version(checkpoint, tmp_path):
    result = export_model(_spec(checkpoint, tmp_path, batch_sizes=(2,)))
    assert result.version == 1
    assert repo.newest_complete_version(tmp_path, "slim") == 1
    m = mf.load_manifest(result.version_dir)
    assert m == result.manifest
    assert (m.arch, m.num_classes, m.weight_variant) == ("ddrnet23_slim", NUM_CLASSES, "zoo")
    assert m.labels == [f"class_{i}" for i in range(NUM_CLASSES)]
    assert m.input.shape == [-1, 3, IMAGE_SIZE, IMAGE_SIZE] and m.output.shape == [-1, NUM_CLASSES]
    assert m.preprocess.image_size == IMAGE_SIZE and m.preprocess.resize_mode == "squash"
    expected_files = {"mindir": "model.mindir", "onnx": "model.onnx", "fixed_batch": {"2": "model_b2.mindir"}}
    assert m.files == expected_files
    assert m.source_checkpoint_sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    for filename, entry in m.checksums.items():
        assert repo.sha256_file(result.version_dir / filename) == entry.sha256
    assert set(m.verification) == {"mindir", "mindir_b2", "onnx"}
    for key, rec in m.verification.items():
        assert rec["max_abs_diff"] <= 1e-3, key
        assert rec["top1_agreement"] == 1.0, key
    assert m.verification["onnx"]["runtime"] == "onnxruntime"
    assert m.exporter["mindspore"].startswith("2.")

    # The ONNX output's batch dimension is symbolic, and the published file runs at any batch size.
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(result.version_dir / "model.onnx")).graph
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(str(result.version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = sample_batch(m.preprocess)[:3]
    assert session.run(None, {m.input.name: batch})[0].shape == (3, NUM_CLASSES)


def test_export_reads_arch_classes_and_variant_from_the_checkpoint(tmp_path, capsys):
    """``ddrnet export`` with only the checkpoint, as ``ddrnet convert`` prints it: the architecture,
    the class count and the variant come from the file's tensors."""
    import mindspore as ms

    import model

    ms.set_seed(2)
    path = tmp_path / "authors.ckpt"
    ms.save_checkpoint(model.create_model("ddrnet23_slim", num_classes=7, variant="authors"), str(path))
    args = _parse(["--checkpoint", str(path), "--repository", str(tmp_path / "repo"), "--name", "m",
                   "--formats", "onnx", "--image-size", "64", "--crop-pct", "1.0"])
    assert cli_export.run(args) == 0
    manifest = json.loads((tmp_path / "repo" / "m" / "1" / "model.json").read_text())
    facts = (manifest["arch"], manifest["num_classes"], manifest["weight_variant"])
    assert facts == ("ddrnet23_slim", 7, "authors")


@pytest.mark.slow
def test_authors_variant_checkpoint_exports(tmp_path):
    """A checkpoint in the authors' numerics (what ``ddrnet convert`` writes) exports and verifies."""
    import mindspore as ms

    import model

    ms.set_seed(1)
    path = tmp_path / "authors.ckpt"
    net = model.create_model("ddrnet23_slim", num_classes=NUM_CLASSES, variant="authors")
    ms.save_checkpoint(net, str(path))
    # No --variant: the checkpoint says which it is (the authors' stem biases), as a converted .pth does.
    assert checkpoint_variant(path) == "authors"
    result = export_model(_spec(path, tmp_path / "repo", formats=("onnx",)))
    assert result.manifest.weight_variant == "authors"
    assert result.manifest.verification["onnx"]["max_abs_diff"] <= 1e-3
    # An explicit zoo variant cannot take the authors' stem conv biases: refused with the way out.
    message = (r"weights this network does not use: conv1\.0\.bias, conv1\.3\.bias \(the authors' variant "
               r"\(ddrnet convert writes it\): drop --variant or give --variant authors\)")
    with pytest.raises(ExportError, match=message):
        export_model(_spec(path, tmp_path / "repo2", variant="zoo", formats=("onnx",)))
    _nothing_published(tmp_path / "repo2")


def test_a_zoo_checkpoint_is_detected_as_zoo(checkpoint, tmp_path):
    assert checkpoint_variant(checkpoint) == "zoo"
    with pytest.raises(WeightLoadError, match="checkpoint not found"):
        checkpoint_variant(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="cannot read checkpoint"):
        export_model(_spec(tmp_path / "junk.ckpt", tmp_path / "repo", formats=("onnx",)))


@pytest.mark.slow
def test_tampered_file_fails_verification_and_publishes_nothing(checkpoint, tmp_path):
    import onnx
    from onnx import numpy_helper

    def tamper(staging: Path) -> None:
        path = staging / "model.onnx"
        model = onnx.load(str(path))
        gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
        init = next(i for i in model.graph.initializer if i.name == gemm.input[2])  # classifier bias
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(0.01), init.name))
        onnx.save(model, str(path))

    message = r"verification failed, nothing published: onnx: max \|logit diff\| 0\.01"
    with pytest.raises(ExportError, match=message):
        export_model(_spec(checkpoint, tmp_path, formats=("onnx",)), before_verify=tamper)
    _nothing_published(tmp_path)


def test_corrupt_checkpoint_publishes_nothing(checkpoint, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint" * 100)
    for bad in (truncated, garbage):
        with pytest.raises(ExportError, match=f"cannot read checkpoint {re.escape(str(bad))}"):  # up front
            export_model(_spec(bad, tmp_path / "repo"))
        _nothing_published(tmp_path / "repo")


def test_checkpoint_of_another_shape_is_refused(checkpoint, tmp_path):
    with pytest.raises(ExportError, match=r"wrong shape: linear\.weight"):
        export_model(_spec(checkpoint, tmp_path, num_classes=1000))
    _nothing_published(tmp_path)


def test_existing_version_is_refused_before_any_work(checkpoint, tmp_path):
    (tmp_path / "slim" / "3").mkdir(parents=True)
    with pytest.raises(ExportError, match="model 'slim' version 3 already exists"):
        export_model(_spec(checkpoint, tmp_path, version=3))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arch": "resnet50"}, "unknown architecture 'resnet50'"),
        ({"variant": "timm"}, "unknown weight variant 'timm'"),
        ({"formats": ("mindir", "tflite")}, r"unknown export format\(s\) \['tflite'\]"),
        ({"formats": (), "batch_sizes": ()}, "no format to export"),
        ({"batch_sizes": (0,)}, r"batch sizes must be positive integers, got \[0\]"),
        ({"preprocess": {"image_size": 100}}, "image size 100: DDRNet needs a multiple of 32"),
        ({"preprocess": {"crop_pct": 2.0}}, "crop_pct must be a number in"),
        ({"labels": ["a", "b"]}, "labels: got 2 labels for a model with num_classes=10"),
        ({"name": "../x"}, "invalid model name '../x'"),
        ({"version": 0}, "version must be a positive integer"),
        ({"tolerance": 0.0}, "tolerance must be positive"),
        ({"lite_python": "/no/python", "formats": ("lite",)}, "--lite-python: .*/no/python does not exist"),
    ],
)
def test_bad_export_requests_are_named(checkpoint, tmp_path, change, message):
    with pytest.raises(ExportError, match=message):
        export_model(_spec(checkpoint, tmp_path, **change))
    _nothing_published(tmp_path)


def test_lite_requested_without_lite_is_a_clear_error(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr("inference.lite_tool.candidates", lambda: [])
    with pytest.raises(ExportError, match=r"format 'lite' needs MindSpore Lite.*setup_lite_py37\.sh"):
        export_model(_spec(checkpoint, tmp_path, formats=("mindir", "lite")))
    _nothing_published(tmp_path)


@pytest.mark.slow
def test_lite_export_is_verified_under_the_lite_interpreter(checkpoint, tmp_path):
    lite = find_lite(None)
    if lite is None:
        pytest.skip("MindSpore Lite is not importable here and there is no .venv-lite37 "
                    "(scripts/setup_lite_py37.sh): the Lite export is not exercised")
    result = export_model(_spec(checkpoint, tmp_path, formats=("lite",)))
    m = result.manifest
    assert m.files == {"lite": "model.ms", "fixed_batch": {}}
    assert sorted(p.name for p in result.version_dir.iterdir()) == ["model.json", "model.ms"]
    rec = m.verification["lite"]
    assert rec["runtime"] == "lite" and rec["converted_from"] in ("onnx", "mindir")
    assert rec["max_abs_diff"] <= 1e-3 and rec["top1_agreement"] == 1.0
    assert m.exporter["mindspore_lite"] == lite[1]["mindspore_lite"]


# ---------------------------------------------------------------------------------------------------
# verification rule and ONNX post-processing (no export)


def test_compare_rule():
    ref = np.array([[3.0, 1.0, 0.0], [1.0, 1.0005, 0.0]], np.float32)  # second row: a genuine tie
    assert compare(ref, ref, 1e-3)["passed"]
    near = ref + np.float32(5e-4)
    assert compare(ref, near, 1e-3)["passed"]
    far = ref.copy()
    far[0, 0] += 0.01
    rec = compare(ref, far, 1e-3)
    assert not rec["passed"] and rec["max_abs_diff"] == pytest.approx(0.01, rel=1e-3)
    flipped = ref.copy()
    flipped[1] = [1.0005, 1.0, 0.0]  # top-1 flips within tolerance on the tie: counted, not failed
    rec = compare(ref, flipped, 1e-3)
    assert rec["passed"] and rec["top1_ties"] == 1 and rec["top1_agreement"] == 0.5
    assert not compare(ref, ref[:1], 1e-3)["passed"]
    nan = ref.copy()
    nan[0, 0] = np.nan
    assert not compare(ref, nan, 1e-3)["passed"]


def test_sample_batch_uses_real_photos_through_the_eval_transform():
    assert len(sample_photos(VERIFICATION_PHOTOS)) >= 2
    batch = sample_batch(PreprocessConfig(image_size=64))
    assert batch.dtype == np.float32 and batch.shape[1:] == (3, 64, 64) and len(batch) >= 4
    assert len({float(b.mean()) for b in batch}) == len(batch)  # distinct images


def test_make_batch_symbolic(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
        [w],
        value_info=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    info = make_batch_symbolic(path)
    assert info["outputs"] == [["logits", [-1, 2]]] and info["opset"] == 11
    saved = onnx.load(str(path)).graph
    assert saved.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert len(saved.value_info) == 0


# ---------------------------------------------------------------------------------------------------
# CLI


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ddrnet export")
    cli_export.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_errors_are_clear(checkpoint, tmp_path, capsys):
    common = ["--repository", str(tmp_path), "--name", "slim"]
    with pytest.raises(CliError, match=r"checkpoint .*nope\.ckpt does not exist"):
        cli_export.run(_parse(["--checkpoint", str(tmp_path / "nope.ckpt"), "--arch", "ddrnet23", *common]))
    with pytest.raises(CliError, match="unknown architecture 'resnet50'"):
        cli_export.run(_parse(["--checkpoint", str(checkpoint), "--arch", "resnet50", *common]))
    # the checkpoint says what it holds: a flag that contradicts it is named with the file's answer
    holds = r"holds ddrnet23_slim \(zoo variant, 10 classes; stem width 32, 2 blocks in layer1, 1024"
    message = rf"--arch ddrnet23 contradicts .*slim10\.ckpt, which {holds}.*give --arch ddrnet23_slim"
    with pytest.raises(CliError, match=message):
        cli_export.run(_parse(["--checkpoint", str(checkpoint), "--arch", "ddrnet23", *common]))
    message = r"--num-classes 1000 contradicts .*10 classes: drop --num-classes or give 10"
    with pytest.raises(CliError, match=message):
        cli_export.run(_parse(["--checkpoint", str(checkpoint), "--num-classes", "1000", *common]))
    with pytest.raises(CliError, match=r"label file .*missing\.txt does not exist"):
        argv = ["--checkpoint", str(checkpoint), "--labels", "missing.txt", *common]
        cli_export.run(_parse(argv))
    for bad in (["--formats", "mindir,tflite"], ["--batch-sizes", "1,x"], ["--batch-sizes", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            _parse(["--checkpoint", str(checkpoint), "--arch", "ddrnet23", *common, *bad])
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown format(s) tflite: choose from mindir,onnx,lite" in err
    assert "expected comma-separated integers, got '1,x'" in err
    _nothing_published(tmp_path)


def test_cli_spec_from_training_config(tmp_path):
    data = tmp_path / "data"
    for name in ("cat", "dog", "eel"):
        (data / "train" / name).mkdir(parents=True)
    config = tmp_path / "train.yaml"
    config.write_text(
        f"arch: ddrnet23_slim\nnum_classes: 3\ndata_url: {data}\nimage_size: 96\ncrop_pct: 0.75\n"
        f"model_variant: authors\noutput_dir: {tmp_path / 'run'}\n"
    )
    common = ["--checkpoint", "x.ckpt", "--repository", str(tmp_path), "--name", "pets"]
    common += ["--config", str(config)]
    spec = cli_export.spec_from_args(_parse(common))
    assert (spec.arch, spec.num_classes, spec.variant) == ("ddrnet23_slim", 3, "authors")
    assert spec.labels == ["cat", "dog", "eel"]
    assert spec.preprocess.image_size == 96 and spec.preprocess.crop_pct == 0.75
    # Options override the config; a run directory's labels.txt wins over the class folders.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "labels.txt").write_text("Cat\nDog\nEel\n")
    spec = cli_export.spec_from_args(_parse([*common, "--image-size", "128", "--variant", "zoo"]))
    assert spec.preprocess.image_size == 128 and spec.variant == "zoo"
    assert spec.labels == ["Cat", "Dog", "Eel"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: ddrnet23_slim\nnum_clases: 3\ndata_url: x\n")
    with pytest.raises(CliError, match="num_clases: unknown key"):
        cli_export.spec_from_args(_parse([*common[:-1], str(bad)]))


def _write_run(run_dir: Path, **changes) -> Path:
    """A run directory as ``ddrnet train`` leaves it (run.json + a best checkpoint file)."""
    from model.preprocess_config import PreprocessConfig
    from training.run_info import RunInfo, write_run_info

    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.ckpt").write_bytes(b"weights")
    info = RunInfo(arch="ddrnet23_slim", num_classes=3, labels=["cat", "dog", "eel"], model_variant="authors",
                   preprocess=PreprocessConfig(image_size=96, crop_pct=0.75),
                   checkpoint_best="checkpoints/best.ckpt", train_dir=str(run_dir / "data" / "train"),
                   stats={"status": "finished", "epochs_done": 3})
    for key, value in changes.items():
        setattr(info, key, value)
    write_run_info(run_dir, info)
    return run_dir


def test_cli_spec_from_a_training_run(tmp_path):
    from training.run_info import read_run_info

    run = _write_run(tmp_path / "run")
    assert read_run_info(run).stats == {"status": "finished", "epochs_done": 3}
    common = ["--repository", str(tmp_path / "models"), "--name", "pets"]
    spec = cli_export.spec_from_args(_parse(["--run-dir", str(run), *common]))
    assert (spec.arch, spec.num_classes, spec.variant) == ("ddrnet23_slim", 3, "authors")
    assert spec.labels == ["cat", "dog", "eel"] and spec.checkpoint == run / "checkpoints" / "best.ckpt"
    assert (spec.preprocess.image_size, spec.preprocess.crop_pct) == (96, 0.75)
    assert spec.calibration_dir == run / "data" / "train"
    # Options win over the run; a checkpoint of the run other than its best can be named.
    other = run / "checkpoints" / "e0002.ckpt"
    spec = cli_export.spec_from_args(_parse(["--run-dir", str(run), "--checkpoint", str(other),
                                             "--image-size", "128", "--variant", "zoo", *common]))
    assert spec.checkpoint == other and spec.preprocess.image_size == 128 and spec.variant == "zoo"
    assert spec.preprocess.crop_pct == 0.75  # the rest of the run's preprocessing stays


def test_cli_run_dir_errors_name_the_problem(tmp_path):
    common = ["--repository", str(tmp_path / "models"), "--name", "pets"]
    with pytest.raises(CliError, match=r"run\.json does not exist: .* is not a training run directory"):
        cli_export.spec_from_args(_parse(["--run-dir", str(tmp_path), *common]))
    unfinished = _write_run(tmp_path / "early", checkpoint_best=None)
    with pytest.raises(CliError, match="has no best checkpoint yet: name one with --checkpoint"):
        cli_export.spec_from_args(_parse(["--run-dir", str(unfinished), *common]))
    (unfinished / "run.json").write_text('{"arch": "ddrnet23_slim"}')
    with pytest.raises(CliError, match="'num_classes' is missing"):
        cli_export.spec_from_args(_parse(["--run-dir", str(unfinished), *common]))
    with pytest.raises(CliError, match="give --run-dir or --config, not both"):
        cli_export.spec_from_args(_parse(["--run-dir", str(unfinished), "--config", "x.yaml", *common]))


def test_a_run_recorded_before_train_dir_calibrates_on_its_data_sets_train_split(tmp_path):
    run = _write_run(tmp_path / "old", train_dir=None)
    data = json.loads((run / "run.json").read_text())
    data.pop("train_dir")
    data["data_url"] = str(tmp_path / "imagenet")
    (run / "run.json").write_text(json.dumps(data))
    argv = ["--run-dir", str(run), "--repository", str(tmp_path), "--name", "x"]
    spec = cli_export.spec_from_args(_parse(argv))
    assert spec.calibration_dir == tmp_path / "imagenet" / "train"
