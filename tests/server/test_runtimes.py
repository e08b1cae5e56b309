"""Runtime adapters: each returns the exported network's logits (and top-1) on real photos, at
dynamic batch sizes 1/3/8; ``auto`` chooses without importing runtime libraries; a missing device or
library is a clear error; MindSpore Lite runs for real under Python 3.7 + PyPI mindspore-lite 2.0.0."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from inference.runtimes import auto_candidates, create_runtime, select_runtime
from inference.runtimes.base import ModelFileError, RuntimeUnavailableError, check_device
from model.manifest import ModelManifest, load_manifest
from tests.support import runtime_fixtures as rf

ATOL = 1e-3  # logits of about 10: relative 1e-4


@pytest.fixture(scope="module")
def version(tiny_version: str) -> str:
    return tiny_version


@pytest.fixture(scope="module")
def reference(version: str) -> np.ndarray:
    return np.load(os.path.join(version, "reference.npy"))


@pytest.fixture(scope="module")
def images(version: str) -> np.ndarray:
    return np.load(os.path.join(version, "images.npy"))


def _manifest(version_dir: str) -> ModelManifest:
    return load_manifest(version_dir)


def assert_matches(logits: dict[int, np.ndarray], reference: np.ndarray) -> None:
    assert sorted(logits) == list(rf.BATCH_SIZES)
    for n, out in logits.items():
        assert out.shape == (n, rf.NUM_CLASSES) and out.dtype == np.float32
        np.testing.assert_allclose(out, reference[:n], atol=ATOL, rtol=0)
        assert (out.argmax(1) == reference[:n].argmax(1)).all()


def _copy_version(src: str, dst: Path, files: dict) -> str:
    shutil.copytree(src, dst)
    rf.write_version_manifest(str(dst), files)
    return str(dst)


# -- choosing a runtime --------------------------------------------------------------------------------


def test_auto_choice_imports_no_runtime_library(version: str) -> None:
    code = (
        "import json, sys\n"
        "from inference.runtimes import select_runtime\n"
        "from model.manifest import load_manifest\n"
        f"man = load_manifest({version!r})\n"
        f"name = select_runtime('auto', {version!r}, man)\n"
        "heavy = [m for m in ('onnxruntime', 'mindspore', 'mindspore_lite') if m in sys.modules]\n"
        "print(json.dumps([name, heavy]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=rf.REPO), check=True)
    name, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = "lite" if importlib.util.find_spec("mindspore_lite") else "onnxruntime"
    assert name == expected
    assert heavy == []


def test_auto_without_onnx_falls_back_to_mindspore(version: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("mindspore_lite"):
        pytest.skip("mindspore_lite is installed in this Python, so auto prefers it")
    vdir = _copy_version(version, tmp_path / "v", {"mindir": "model.mindir", "fixed_batch": {}})
    os.unlink(os.path.join(vdir, "model.onnx"))
    assert auto_candidates(vdir, _manifest(vdir)) == ["mindspore"]
    assert select_runtime("auto", vdir, _manifest(vdir)) == "mindspore"


def test_unknown_runtime_or_device_is_a_clear_error(version: str) -> None:
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        select_runtime("tensorrt", version, _manifest(version))
    with pytest.raises(ValueError, match=r"does not name a Runtime subclass"):
        create_runtime("json:JSONDecoder")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        check_device("tpu", 0)
    with pytest.raises(ValueError, match="device id"):
        check_device("gpu", -1)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        create_runtime("onnxruntime").load(version, _manifest(version), "tpu", 0, {})


# -- ONNX Runtime (in this process: it keeps no process-wide state) -------------------------------------


def test_onnxruntime_matches_network(version: str, images: np.ndarray, reference: np.ndarray) -> None:
    rt = create_runtime("onnxruntime")
    rt.load(version, _manifest(version), "cpu", 0, {"threads": 1})
    assert_matches({n: rt.infer(images[:n]) for n in rf.BATCH_SIZES}, reference)
    info = rt.describe()
    assert info["runtime"] == "onnxruntime" and info["file"] == "model.onnx" and info["threads"] == 1
    assert info["providers"] == ["CPUExecutionProvider"] and rt.supported_batch_sizes is None
    with pytest.raises(ValueError, match="float32"):
        rt.infer(images[:2].astype(np.float64))


def test_onnxruntime_gpu_without_cuda_provider_is_unavailable(version: str) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(RuntimeUnavailableError, match="CUDAExecutionProvider"):
        create_runtime("onnxruntime").load(version, _manifest(version), "gpu", 0, {})


def test_onnxruntime_without_onnx_file_names_it(version: str, tmp_path: Path) -> None:
    vdir = _copy_version(version, tmp_path / "v", {"mindir": "model.mindir", "fixed_batch": {}})
    with pytest.raises(ModelFileError, match=r"has no model.onnx for the onnxruntime runtime"):
        create_runtime("onnxruntime").load(vdir, _manifest(vdir), "cpu", 0, {})


# -- MindSpore (in a fresh process: device and thread pool are process-wide settings) -------------------


def test_mindspore_matches_network(version: str, reference: np.ndarray, tmp_path: Path) -> None:
    res = rf.run_runtime(sys.executable, "mindspore", version, str(tmp_path / "o.npz"), {"threads": 1})
    assert_matches(res["logits"], reference)
    assert res["describe"]["runtime"] == "mindspore" and res["describe"]["file"] == "model.mindir"
    assert res["describe"]["batch_sizes"] is None


def test_mindspore_fixed_batch_file(version: str, reference: np.ndarray, tmp_path: Path) -> None:
    vdir = _copy_version(version, tmp_path / "v", {"fixed_batch": {"4": "model_b4.mindir"}})
    res = rf.run_runtime(sys.executable, "mindspore", vdir, str(tmp_path / "o.npz"), sizes=(4,))
    assert res["describe"]["batch_sizes"] == [4]
    np.testing.assert_allclose(res["logits"][4], reference[:4], atol=ATOL, rtol=0)


def test_mindspore_missing_device_is_unavailable(version: str, tmp_path: Path) -> None:
    try:
        rf.run_runtime(sys.executable, "mindspore", version, str(tmp_path / "o.npz"), device="gpu")
    except RuntimeError as exc:
        text = str(exc)
    else:
        pytest.skip("this MindSpore and machine have a GPU")
    assert "RuntimeUnavailableError: MindSpore 2" in text and "cannot use device GPU" in text


# -- MindSpore Lite under Python 3.7 + mindspore-lite 2.0.0 ---------------------------------------------


@pytest.fixture(scope="module")
def lite_python() -> str:
    python, why = rf.lite_python()
    if python is None:
        pytest.skip(f"MindSpore Lite tests skipped: {why}")
    return python


def test_lite_py37_matches_network(
    lite_python: str, version: str, reference: np.ndarray, tmp_path: Path
) -> None:
    cache = tmp_path / "lite-cache"
    res = rf.run_runtime(lite_python, "lite", version, str(tmp_path / "o.npz"), {"cache_dir": str(cache)})
    assert_matches(res["logits"], reference)
    info = res["describe"]
    assert info["runtime"] == "lite" and info["library_version"] == "2.0.0"
    assert info["source"] == "onnx"  # 2.0.0 cannot read MindSpore 2.10 MindIR: converted from ONNX
    converted = list(cache.iterdir())
    assert len(converted) == 1 and info["file"] == converted[0].name
    assert sorted(os.listdir(version)) == sorted(["images.npy", "model.json", "model.mindir", "model.onnx",
                                                 "model_b4.mindir", "reference.npy"])  # nothing written there
    mtime = converted[0].stat().st_mtime_ns
    again = rf.run_runtime(lite_python, "auto", version, str(tmp_path / "o2.npz"), {"cache_dir": str(cache)})
    assert again["describe"]["runtime"] == "lite" and again["describe"]["file"] == info["file"]
    assert converted[0].stat().st_mtime_ns == mtime  # the cached conversion was reused
    assert_matches(again["logits"], reference)


def test_lite_2_0_runs_one_thread_because_more_give_wrong_logits(
    lite_python: str, version: str, reference: np.ndarray, tmp_path: Path
) -> None:
    """Lite 2.0.0 with 2 threads gets batch sizes 2/4/6/8 wrong after a resize (DDRNet-23-slim at 64):
    the adapter runs it with one thread, so any sequence of batch sizes stays exact."""
    options = {"threads": 2, "cache_dir": str(tmp_path / "lite-cache")}
    sizes = (1, 3, 2, 8, 6, 4)
    res = rf.run_runtime(lite_python, "lite", version, str(tmp_path / "o.npz"), options, sizes=sizes)
    assert res["describe"]["threads"] == 1 and "Lite 2.0.0 runs 1" in res["describe"]["note"]
    for n in sizes:
        np.testing.assert_allclose(res["logits"][n], reference[:n], atol=ATOL, rtol=0)


def test_lite_py37_runs_a_lite_file_from_the_version(
    lite_python: str, version: str, reference: np.ndarray, tmp_path: Path
) -> None:
    cache = tmp_path / "lite-cache"
    options = {"cache_dir": str(cache)}
    rf.run_runtime(lite_python, "lite", version, str(tmp_path / "o.npz"), options, sizes=(1,))
    vdir = str(tmp_path / "v")
    shutil.copytree(version, vdir)
    shutil.copy(next(cache.iterdir()), os.path.join(vdir, "model.ms"))
    os.unlink(os.path.join(vdir, "model.onnx"))
    rf.write_version_manifest(vdir, {"lite": "model.ms"})
    options = {"cache_dir": str(tmp_path / "c2")}
    res = rf.run_runtime(lite_python, "lite", vdir, str(tmp_path / "o2.npz"), options)
    assert res["describe"]["source"] == "lite" and res["describe"]["file"] == "model.ms"
    assert_matches(res["logits"], reference)
    assert not (tmp_path / "c2").exists()  # no conversion needed


def test_lite_2_0_refuses_mindspore_2_10_mindir(lite_python: str, version: str, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as info:
        rf.run_runtime(lite_python, "lite", version, str(tmp_path / "o.npz"), {"lite_source": "mindir"})
    text = str(info.value)
    assert "ModelFileError: MindSpore Lite 2.0.0 cannot run" in text
    assert "maximum mind ir version: 1" in text  # Lite's own diagnosis, in its log


def test_lite_missing_device_is_unavailable(lite_python: str, version: str, tmp_path: Path) -> None:
    if os.path.exists("/dev/davinci0"):
        pytest.skip("this machine has an Ascend device")
    with pytest.raises(RuntimeError) as info:
        rf.run_runtime(lite_python, "lite", version, str(tmp_path / "o.npz"), device="ascend")
    expected = "RuntimeUnavailableError: device ascend:0 is not there (/dev/davinci0 does not exist)"
    assert expected in str(info.value)


def test_worker_side_modules_are_python37_syntax() -> None:
    """Everything a Python 3.7 worker imports compiles under 3.7 (ruff checks this too)."""
    python, _ = rf.lite_python()
    pyenv = Path(os.path.expanduser("~/.pyenv/versions"))
    candidates = [python, *sorted(str(p) for p in pyenv.glob("3.7*/bin/python3.7"))]
    python = next((p for p in candidates if p and os.path.exists(p)), None)
    if python is None:
        pytest.skip("no Python 3.7 interpreter on this machine")
    root = Path(rf.REPO)
    ruff = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["ruff"]
    globs = [g for g, target in ruff["per-file-target-version"].items() if target == "py37"]
    files = sorted({p for g in globs for p in root.glob(g)})
    assert any(p.name == "worker_main.py" for p in files) and len(files) >= 12
    code = "import sys\nfor f in sys.argv[1:]: compile(open(f).read(), f, 'exec')"
    proc = subprocess.run([python, "-c", code, *map(str, files)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
