"""Model repository: manifest schema validation, listing, completeness checks and atomic publishing."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model import manifest as manifest_mod
from model import repository as repo_mod
from model.manifest import FileChecksum, ManifestError, ModelManifest, TensorSpec
from model.repository import IncompleteVersionError, VersionExistsError

PREPROCESS = {
    "image_size": 32,
    "crop_pct": 0.875,
    "interpolation": "bicubic",
    "resize_mode": "squash",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


def _manifest(name: str = "demo", version: int = 1, files: dict[str, bytes] | None = None) -> ModelManifest:
    files = files if files is not None else {"model.mindir": b"mindir-bytes", "model.onnx": b"onnx-bytes"}
    roles = {"model.mindir": "mindir", "model.onnx": "onnx", "model.ms": "lite"}
    file_map: dict = {"fixed_batch": {}}
    for filename in files:
        if filename in roles:
            file_map[roles[filename]] = filename
        else:
            file_map["fixed_batch"][filename.split("_b")[1].split(".")[0]] = filename
    return ModelManifest(
        name=name,
        version=version,
        arch="ddrnet23_slim",
        num_classes=3,
        labels=["a", "b", "c"],
        weight_variant="zoo",
        preprocess=dict(PREPROCESS),
        input=TensorSpec("input", "float32", [-1, 3, 32, 32]),
        output=TensorSpec("logits", "float32", [-1, 3]),
        files=file_map,
        checksums={
            k: FileChecksum(hashlib.sha256(v).hexdigest(), len(v)) for k, v in files.items()
        },
        source_checkpoint_sha256="0" * 64,
        created_at=manifest_mod.utc_now_iso(),
        verification={"onnx": {"max_abs_diff": 1e-6, "top1_agreement": 1.0, "tolerance": 1e-3}},
        exporter={"mindspore": "2.10.0"},
    )


def _write_version(directory: Path, manifest: ModelManifest, files: dict[str, bytes] | None = None) -> Path:
    files = files if files is not None else {"model.mindir": b"mindir-bytes", "model.onnx": b"onnx-bytes"}
    directory.mkdir(parents=True, exist_ok=True)
    for filename, data in files.items():
        (directory / filename).write_bytes(data)
    manifest_mod.write_manifest(directory, manifest)
    return directory


def _stage(repo: Path, name: str = "demo", version: int = 1) -> Path:
    staging = repo_mod.create_staging_dir(repo, name)
    return _write_version(staging, _manifest(name, version))


# ---------------------------------------------------------------------------------------------------
# manifest schema


def test_manifest_round_trip_and_views():
    files = {"model.mindir": b"x", "model.onnx": b"yy", "model_b4.mindir": b"z", "model_b1.mindir": b"w"}
    m = _manifest(files=files)
    again = ModelManifest.from_json(m.to_json())
    assert again == m
    assert again.fixed_batch_files == {1: "model_b1.mindir", 4: "model_b4.mindir"}
    assert again.image_size == 32
    assert again.has("onnx") and not again.has("lite")
    assert sorted(again.file_names()) == sorted(files)
    assert again.path("/v", "onnx") == Path("/v/model.onnx")
    with pytest.raises(KeyError, match="no 'lite' file"):
        again.path("/v", "lite")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("arch"), "'arch' is missing"),
        (lambda d: d.update(format_version=99), "'format_version' 99 is not supported"),
        (lambda d: d.update(num_classes=0), "'num_classes' must be a positive integer"),
        (lambda d: d.update(num_classes=True), "'num_classes' must be a positive integer"),
        (lambda d: d.update(labels=["a", "b"]), "'labels' has 2 entries but num_classes is 3"),
        (lambda d: d.update(weight_variant="timm"), "'weight_variant' must be one of"),
        (lambda d: d["preprocess"].pop("crop_pct"), "preprocess lacks \\['crop_pct'\\]"),
        (lambda d: d["preprocess"].update(std=[0.2, 0.0, 0.2]), "preprocess.std must be positive"),
        (lambda d: d["preprocess"].update(mean=[0.5]), "preprocess.mean must be 3 finite numbers"),
        (lambda d: d["preprocess"].update(resize_mode="square"), "preprocess.resize_mode must be one of"),
        (lambda d: d["preprocess"].update(gamma=2.2), "preprocess has unknown keys \\['gamma'\\]"),
        (lambda d: d["input"].update(shape=[1, 3, 32, 32]), "'input.shape' must be \\[-1, ...positive"),
        (lambda d: d["input"].update(shape=[-1, 3, 64, 64]), "'input.shape' must be \\[-1, 3, 32, 32\\]"),
        (lambda d: d["output"].update(shape=[-1, 10]), "'output.shape' must be \\[-1, 3\\]"),
        (lambda d: d["files"].update(onnx="../../etc/passwd"), "'files.onnx' must be a plain file name"),
        (lambda d: d["files"].update(tflite="x.tflite"), "'files' has unknown roles \\['tflite'\\]"),
        (lambda d: d.update(files={"fixed_batch": {}}), "'files' lists no model file"),
        (lambda d: d["files"].update(fixed_batch={"0": "m.mindir"}), "key '0' is not a positive batch"),
        (lambda d: d["checksums"].pop("model.onnx"), "'checksums.model.onnx' is missing"),
        (lambda d: d["checksums"]["model.onnx"].update(sha256="abc"), "sha256' must be 64"),
        (lambda d: d["checksums"].update({"x.bin": {"sha256": "0" * 64, "size": 1}}), "does not list"),
        (lambda d: d.update(source_checkpoint_sha256="nothex"), "'source_checkpoint_sha256' must be"),
        (lambda d: d.update(created_at="yesterday"), "'created_at' must be ISO UTC"),
        (lambda d: d["verification"]["onnx"].pop("tolerance"), "'verification.onnx.tolerance' must be"),
        (lambda d: d.update(name="../evil"), "'name' '../evil' is not a valid model name"),
    ],
)
def test_manifest_validation_names_the_field(mutate, message):
    data = _manifest().to_dict()
    mutate(data)
    with pytest.raises(ManifestError, match=message):
        ModelManifest.from_dict(data)


def test_manifest_not_json_or_not_object():
    with pytest.raises(ManifestError, match="not valid JSON"):
        ModelManifest.from_json("{nope")
    with pytest.raises(ManifestError, match="must hold a JSON object"):
        ModelManifest.from_json("[1, 2]")


def test_load_manifest_checks_directory_version(tmp_path):
    vdir = _write_version(tmp_path / "demo" / "2", _manifest(version=1))
    with pytest.raises(ManifestError, match="'version' is 1 but the directory is version 2"):
        repo_mod.load_manifest(vdir)
    with pytest.raises(ManifestError, match=r"no model\.json"):
        repo_mod.load_manifest(tmp_path / "demo")


# ---------------------------------------------------------------------------------------------------
# listing and completeness


def test_listing_ignores_hidden_partial_and_non_integer_dirs(tmp_path):
    _write_version(tmp_path / "demo" / "1", _manifest(version=1))
    _write_version(tmp_path / "demo" / "3", _manifest(version=3))
    (tmp_path / "demo" / "4").mkdir()  # partial: no manifest yet
    for junk in (".staging-abc", "tmp", "07", "0", "-2", "5.bak"):
        (tmp_path / "demo" / junk).mkdir()
    (tmp_path / "demo" / "9").write_text("a file, not a directory")
    (tmp_path / ".hidden-model").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "README.txt").write_text("x")

    assert repo_mod.list_models(tmp_path) == ["demo", "other"]
    assert repo_mod.list_versions(tmp_path, "demo") == [1, 3, 4]
    assert repo_mod.list_versions(tmp_path, "other") == []
    assert repo_mod.newest_complete_version(tmp_path, "demo") == 3
    assert repo_mod.newest_complete_version(tmp_path, "other") is None
    assert repo_mod.next_version(tmp_path, "demo") == 5
    assert repo_mod.next_version(tmp_path, "brand-new") == 1
    assert repo_mod.list_models(tmp_path / "missing") == []
    assert repo_mod.list_versions(tmp_path / "missing", "demo") == []


@pytest.mark.parametrize("damage", ["missing_file", "truncated", "same_size_corrupt", "bad_json", "no_json"])
def test_damaged_newest_version_is_skipped(tmp_path, damage):
    _write_version(tmp_path / "demo" / "1", _manifest(version=1))
    newest = _write_version(tmp_path / "demo" / "2", _manifest(version=2))
    assert repo_mod.newest_complete_version(tmp_path, "demo") == 2  # also fills the hash cache
    onnx = newest / "model.onnx"
    if damage == "missing_file":
        onnx.unlink()
    elif damage == "truncated":
        onnx.write_bytes(b"onnx")
    elif damage == "same_size_corrupt":
        data = bytearray(onnx.read_bytes())
        data[0] ^= 0xFF
        onnx.write_bytes(bytes(data))
        os.utime(onnx, ns=(1, 1))  # a different mtime: the hash cache must not hide the change
    elif damage == "bad_json":
        (newest / "model.json").write_text('{"format_version": 1,')
    else:
        (newest / "model.json").unlink()
    assert repo_mod.newest_complete_version(tmp_path, "demo") == 1
    with pytest.raises(IncompleteVersionError):
        repo_mod.check_version(newest)


def test_manifest_of_another_model_is_not_served(tmp_path):
    _write_version(tmp_path / "demo" / "1", _manifest(name="other", version=1))
    assert repo_mod.newest_complete_version(tmp_path, "demo") is None


# ---------------------------------------------------------------------------------------------------
# publishing


def test_publish_is_atomic_and_refuses_existing_version(tmp_path):
    staging = _stage(tmp_path, version=1)
    assert staging.parent == tmp_path / "demo" and staging.name.startswith(".staging-")
    assert repo_mod.list_versions(tmp_path, "demo") == []  # staged, not visible
    (staging / "model.onnx").chmod(0o400)  # as ms.export and the Lite converter write them
    assert repo_mod.publish_version(staging, tmp_path, "demo", 1) == 1
    assert not staging.exists()
    published = tmp_path / "demo" / "1"
    assert published.stat().st_mode & 0o777 == 0o755  # mkdtemp made it 0700
    assert (published / "model.onnx").stat().st_mode & 0o777 == 0o644
    assert repo_mod.newest_complete_version(tmp_path, "demo") == 1

    again = _stage(tmp_path, version=1)
    with pytest.raises(VersionExistsError, match="version 1 already exists"):
        repo_mod.publish_version(again, tmp_path, "demo", 1)
    assert again.exists()  # left for the caller to clean up
    # An empty directory squatting on the version number is not silently replaced either.
    (tmp_path / "demo" / "7").mkdir()
    with pytest.raises(VersionExistsError):
        repo_mod.publish_version(again, tmp_path, "demo", 7)
    assert not any((tmp_path / "demo" / "7").iterdir())


def test_publish_without_version_takes_next_and_rewrites_manifest(tmp_path):
    (tmp_path / "demo" / "4").mkdir(parents=True)  # an incomplete directory still reserves its number
    staging = _stage(tmp_path, version=1)
    assert repo_mod.publish_version(staging, tmp_path, "demo") == 5
    assert repo_mod.load_manifest(tmp_path / "demo" / "5").version == 5
    assert repo_mod.newest_complete_version(tmp_path, "demo") == 5


def test_publish_refuses_incomplete_staging_and_foreign_dirs(tmp_path):
    staging = _stage(tmp_path)
    (staging / "model.onnx").unlink()
    with pytest.raises(IncompleteVersionError, match=r"model\.onnx: listed in model\.json but missing"):
        repo_mod.publish_version(staging, tmp_path, "demo", 1)
    assert repo_mod.list_versions(tmp_path, "demo") == []
    elsewhere = _write_version(tmp_path / "elsewhere", _manifest())
    with pytest.raises(ValueError, match="not a staging directory"):
        repo_mod.publish_version(elsewhere, tmp_path, "demo", 1)
    with pytest.raises(ValueError, match="invalid model name"):
        repo_mod.create_staging_dir(tmp_path, "../x")


def _publish_worker(repo: str, barrier, results) -> None:
    staging = _stage(Path(repo))
    barrier.wait()
    try:
        results.put(repo_mod.publish_version(staging, repo, "demo", 1))
    except VersionExistsError:
        shutil.rmtree(staging)
        results.put("exists")


def test_concurrent_exporters_cannot_both_publish_the_same_version(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_publish_worker, args=(str(tmp_path), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    outcomes = sorted(str(results.get(timeout=5)) for _ in procs)
    assert outcomes == ["1", "exists", "exists", "exists"]
    assert repo_mod.list_versions(tmp_path, "demo") == [1]
    assert repo_mod.newest_complete_version(tmp_path, "demo") == 1
    assert [p.name for p in (tmp_path / "demo").iterdir() if p.name.startswith(".staging")] == []


def test_remove_stale_staging(tmp_path):
    old, fresh = _stage(tmp_path), _stage(tmp_path)
    os.utime(old, (0, 0))
    assert repo_mod.remove_stale_staging(tmp_path, "demo", max_age_s=3600) == [old]
    assert fresh.exists() and not old.exists()


PY37 = Path(os.path.expanduser("~/.pyenv/versions/3.7.16/bin/python"))


def test_repository_module_reads_under_python37(tmp_path):
    """The Lite worker runs under Python 3.7: model.manifest and model.repository import there."""
    if not PY37.exists():
        pytest.skip(f"no Python 3.7 interpreter at {PY37}")
    _write_version(tmp_path / "demo" / "1", _manifest(version=1))
    root = Path(repo_mod.__file__).resolve().parents[1]
    code = (
        "import sys; from model import repository as r; "
        "v = r.newest_complete_version(sys.argv[1], 'demo'); "
        "m = r.load_manifest(r.version_dir(sys.argv[1], 'demo', v)); print(v, m.arch, m.input.shape)"
    )
    out = subprocess.run(
        [str(PY37), "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "ddrnet23_slim", "[-1,", "3,", "32,", "32]"]


def test_written_manifest_is_plain_json(tmp_path):
    vdir = _write_version(tmp_path / "demo" / "1", _manifest())
    data = json.loads((vdir / "model.json").read_text())
    assert data["files"] == {"mindir": "model.mindir", "onnx": "model.onnx", "fixed_batch": {}}
    assert data["checksums"]["model.onnx"]["size"] == len(b"onnx-bytes")
    assert sys.version_info >= (3, 7)
