"""ImageNet labels shipped as package data, the label-resolution rule and label files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from model.labels import (
    imagenet_labels,
    imagenet_synsets,
    read_labels_file,
    resolve_labels,
    write_labels_file,
)

REPO = Path(__file__).resolve().parents[2]
TIMM_WHEEL = Path("/tmp/timm/timm-1.0.31-py3-none-any.whl")


def test_imagenet_labels_known_indices():
    labels = imagenet_labels()
    assert len(labels) == 1000
    # Well-known ILSVRC-2012 class indices (the order every published ImageNet checkpoint uses).
    assert labels[0].split(",")[0] == "tench"
    assert labels[1].split(",")[0] == "goldfish"
    assert labels[2].split(",")[0] == "great white shark"
    assert labels[151] == "Chihuahua"
    assert labels[207] == "golden retriever"
    assert labels[281].split(",")[0] == "tabby"
    assert labels[285] == "Egyptian cat"
    assert labels[409] == "analog clock"
    assert labels[999].split(",")[0] == "toilet tissue"
    # "crane" (bird, 134) and "crane" (machine, 517) are the only repeated label in ImageNet-1k.
    assert labels[134] == labels[517] == "crane"
    assert len(set(labels)) == 999
    assert all(label.strip() == label and label for label in labels)


def test_imagenet_synsets_sorted_and_aligned():
    synsets = imagenet_synsets()
    assert len(synsets) == 1000 == len(set(synsets))
    assert synsets == sorted(synsets)
    assert synsets[0] == "n01440764" and synsets[1] == "n01443537" and synsets[999] == "n15075141"


def test_imagenet_labels_returns_a_fresh_list():
    first = imagenet_labels()
    first[0] = "changed"
    assert imagenet_labels()[0].startswith("tench")


def test_resolve_labels_rule():
    assert resolve_labels(1000) == imagenet_labels()
    assert resolve_labels(3) == ["class_0", "class_1", "class_2"]
    digits = [str(i) for i in range(10)]
    assert resolve_labels(10, digits) == digits
    own = [f"thing {i}" for i in range(1000)]
    assert resolve_labels(1000, own) == own  # a model's own list wins over ImageNet


@pytest.mark.parametrize(
    ("num_classes", "labels", "message"),
    [
        (10, ["a"] * 9, "got 9 labels for a model with num_classes=10"),
        (2, ["a", ""], "label 1 is empty"),
        (2, ["a", "b\nc"], "label 1"),
        (2, ["a", 3], "label 1 must be a string"),
        (1, "a", "not a single string"),
        (0, None, "num_classes must be a positive integer"),
        (True, None, "num_classes must be a positive integer"),
    ],
)
def test_resolve_labels_errors(num_classes, labels, message):
    with pytest.raises(ValueError, match=message):
        resolve_labels(num_classes, labels)


def test_labels_file_round_trip(tmp_path):
    path = tmp_path / "labels.txt"
    labels = ["0", "zwei", "tench, Tinca tinca", "café"]
    write_labels_file(path, labels)
    assert path.read_text(encoding="utf-8") == "0\nzwei\ntench, Tinca tinca\ncafé\n"
    assert read_labels_file(path) == labels


def test_read_labels_file_errors(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("a\n\nb\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 is blank"):
        read_labels_file(blank)
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="no labels"):
        read_labels_file(empty)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00x")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_labels_file(binary)


@pytest.mark.skipif(not TIMM_WHEEL.is_file(), reason="timm wheel not on this machine")
def test_package_data_matches_timm_wheel():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_imagenet_labels.py"), str(TIMM_WHEEL), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _fake_wheel(path: Path, synsets: list[str]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("timm/data/_info/imagenet_synsets.txt", "".join(f"{s}\n" for s in synsets))
        zf.writestr(
            "timm/data/_info/imagenet_synset_to_lemma.txt",
            "n00000000\tunused, extra\n" + "".join(f"{s}\tlemma of {s}, alias\n" for s in synsets),
        )
    return path


def _run_script(*args: str) -> subprocess.CompletedProcess:
    script = REPO / "scripts" / "make_imagenet_labels.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=False)


def test_make_imagenet_labels_script(tmp_path):
    synsets = [f"n{i:08d}" for i in range(1, 1001)]
    wheel = _fake_wheel(tmp_path / "fake.whl", synsets)
    out = tmp_path / "data"
    assert _run_script(str(wheel), "--output-dir", str(out)).returncode == 0
    assert (out / "imagenet_synsets.txt").read_text().splitlines() == synsets
    assert (out / "imagenet_classes.txt").read_text().splitlines()[5] == "lemma of n00000006, alias"
    assert _run_script(str(wheel), "--output-dir", str(out), "--check").returncode == 0
    (out / "imagenet_classes.txt").write_text("changed\n")
    stale = _run_script(str(wheel), "--output-dir", str(out), "--check")
    assert stale.returncode == 1 and "stale" in stale.stderr

    unsorted = _fake_wheel(tmp_path / "unsorted.whl", list(reversed(synsets)))
    failed = _run_script(str(unsorted), "--output-dir", str(out))
    assert failed.returncode != 0 and "not in sorted" in failed.stderr
    short = _fake_wheel(tmp_path / "short.whl", synsets[:999])
    failed = _run_script(str(short), "--output-dir", str(out))
    assert failed.returncode != 0 and "expected 1000 distinct synsets" in failed.stderr
