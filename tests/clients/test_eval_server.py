"""Accuracy through the server (``ddrnet eval --server``, ``ops.eval_server``) equals the same figures
computed offline. Fast: the small ONNX model against its own outputs on an ImageNet-style folder of
real photo crops (with one corrupt file, skipped and reported). Slow: a DDRNet-23-slim checkpoint
exported with ``ddrnet export`` and served, against offline ``ddrnet eval`` on the same checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from tests.support.client_testutil import (
    REPO_ROOT,
    ServerProcess,
    build_onnx_repository,
    reference_logits,
    sample_images,
)
from training.data import scan_split
from training.evaluate import batch_metrics

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    version_dir = build_onnx_repository(root)
    with ServerProcess(root) as proc:
        yield proc, version_dir


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory) -> Path:
    """10 class folders of three 96x96 crops of the sample photos each, and one corrupt file."""
    from PIL import Image

    root = tmp_path_factory.mktemp("val")
    photos = [Image.open(p).convert("RGB") for p in sample_images()]
    for c in range(NUM_CLASSES):
        (root / str(c)).mkdir()
        for j in range(3):
            photo = photos[(c + j) % len(photos)]
            x, y = 37 * c + 11 * j, 23 * c + 17 * j
            photo.crop((x, y, x + 96, y + 96)).save(root / str(c) / f"img{j}.jpg", quality=92)
    (root / "3" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def _offline(version_dir: Path, val: Path) -> dict:
    split = scan_split(val)
    keep = [i for i, p in enumerate(split.paths) if not p.endswith("broken.jpg")]
    logits = reference_logits(version_dir, [Path(split.paths[i]) for i in keep])
    labels = split.labels[keep]
    top1, top5, loss = batch_metrics(logits, labels)
    n = len(keep)
    return {"top1": 100 * top1 / n, "top5": 100 * top5 / n, "loss": loss / n, "images": n,
            "pred": logits.argmax(axis=1), "labels": labels}


@pytest.mark.parametrize("protocol", ["http", "grpc", "oip-http", "oip-grpc"])
def test_eval_through_the_server_equals_offline(protocol, served, val_dir, tmp_path, capsys):
    server, version_dir = served
    address = server.grpc if protocol.endswith("grpc") else server.http
    matrix = tmp_path / "confusion.png"
    rc = main(["eval", "--server", address, "--data", str(val_dir), "--protocol", protocol,
               "--model", "tiny", "--json", "--batch-size", "4", "--confusion-matrix", str(matrix)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    got = json.loads(out)
    want = _offline(version_dir, val_dir)
    assert got["images"] == want["images"] == 30
    assert got["top1"] == pytest.approx(want["top1"], abs=1e-9)
    assert got["top5"] == pytest.approx(want["top5"], abs=1e-9)
    if protocol.startswith("oip"):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    else:
        assert got["loss"] is None
    assert got["skipped_images"] == 1 and got["skipped"][0]["file"].endswith("broken.jpg")
    expected_matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=int)
    np.add.at(expected_matrix, (want["labels"], want["pred"]), 1)
    assert got["confusion_matrix"] == expected_matrix.tolist()
    for c in range(NUM_CLASSES):
        entry = got["per_class"][str(c)]
        assert entry["images"] == 3
        assert entry["top1"] == pytest.approx(100 * expected_matrix[c, c] / 3)
    assert (got["model_name"], got["model_version"], got["protocol"]) == ("tiny", "1", protocol)
    assert matrix.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "broken.jpg" in err  # the skipped file is listed


def test_ddrnet_eval_server_hook_prints_the_summary(served, val_dir, capsys):
    """``ddrnet eval --server ADDR --data DIR`` (cli/eval.py) prints the summary; default HTTP, the only
    served model."""
    server, version_dir = served
    assert main(["eval", "--server", server.http, "--data", str(val_dir)]) == 0
    out, _ = capsys.readouterr()
    want = _offline(version_dir, val_dir)
    first = out.splitlines()[0]
    assert first.startswith(f"top-1 {want['top1']:.2f}%  top-5 {want['top5']:.2f}%  (30 images, 1 skipped)")
    assert sum(line.startswith("  ") for line in out.splitlines()) == NUM_CLASSES  # per-class lines


def test_class_count_mismatch_is_an_error(served, tmp_path, capsys):
    server, _ = served
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.jpg").write_bytes(sample_images()[0].read_bytes())
    rc = main(["eval", "--server", server.http, "--data", str(tmp_path), "--model", "tiny"])
    _, err = capsys.readouterr()
    assert rc == 2 and "has 10 classes but" in err and "1 class folders" in err


# -- a real DDRNet through the real tools -----------------------------------------------------------------

DIGITS_CONFIG = REPO_ROOT / "training" / "configs" / "digits_demo.yaml"
MAKE_CHECKPOINT = """
import sys, mindspore as ms, model
ms.set_context(mode=ms.GRAPH_MODE); ms.set_device("CPU"); ms.set_seed(3)
net = model.create_model("ddrnet23_slim", num_classes=10)
ms.save_checkpoint(net, sys.argv[1])
"""


def _ddrnet(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"ddrnet {args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_served_ddrnet_equals_offline_ddrnet_eval(tmp_path):
    data = tmp_path / "digits"
    _ddrnet("data", "digits", str(data), "--val-fraction", "0.05")
    checkpoint = tmp_path / "slim.ckpt"
    subprocess.run([sys.executable, "-c", MAKE_CHECKPOINT, str(checkpoint)], cwd=REPO_ROOT, check=True,
                   capture_output=True, timeout=300)
    repository = tmp_path / "models"
    _ddrnet("export", "--config", str(DIGITS_CONFIG), "--checkpoint", str(checkpoint), "--repository",
            str(repository), "--name", "digits", "--formats", "onnx")
    offline = json.loads(_ddrnet("eval", "--config", str(DIGITS_CONFIG), "--checkpoint", str(checkpoint),
                                 "--set", f"data_url={data}", "--json").stdout.strip().splitlines()[-1])
    with ServerProcess(repository) as server:
        over_http = json.loads(_ddrnet("eval", "--server", server.http, "--data", str(data / "val"),
                                       "--json").stdout)
        over_oip = json.loads(_ddrnet("eval", "--server", server.grpc, "--protocol", "oip-grpc", "--model",
                                      "digits", "--data", str(data / "val"), "--json").stdout)
    assert offline["images"] == over_http["images"] == over_oip["images"] > 50
    for through in (over_http, over_oip):
        assert through["skipped_images"] == 0
        assert through["top1"] == pytest.approx(offline["top1"], abs=1e-9)
        assert through["top5"] == pytest.approx(offline["top5"], abs=1e-9)
    assert over_oip["loss"] == pytest.approx(offline["loss"], rel=1e-4)
