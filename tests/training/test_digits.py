"""`ddrnet data digits`: scikit-learn's digits as an ImageNet-style folder with a fixed stratified split."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import cli.data as cli_data
import training.digits as digits_module
from cli.errors import CliError
from model.labels import read_labels_file
from training.digits import CLASS_NAMES, digit_to_image, split_indices, write_digits

DIGITS = load_digits()


def _files(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "set"
    summary = write_digits(out)
    assert summary.num_train + summary.num_val == 1797
    return out


def test_layout_counts_and_stratification(written):
    counts = np.bincount(DIGITS.target)
    seen: dict[int, str] = {}
    for split in ("train", "val"):
        assert sorted(p.name for p in (written / split).iterdir()) == list(CLASS_NAMES)
        for name in CLASS_NAMES:
            files = sorted((written / split / name).iterdir())
            for f in files:
                index = int(f.stem)
                assert f.suffix == ".jpg" and f.stem == f"{index:04d}"
                assert DIGITS.target[index] == int(name)  # filed under its true class
                assert index not in seen, f"sample {index} in both {seen.get(index)} and {split}"
                seen[index] = split
            per_class = len(files)
            share = 0.2 if split == "val" else 0.8
            assert abs(per_class - share * counts[int(name)]) <= 1  # stratified
    assert sorted(seen) == list(range(1797))
    assert sum(1 for s in seen.values() if s == "val") == 360
    assert read_labels_file(written / "labels.txt") == [str(i) for i in range(10)]
    provenance = json.loads((written / "digits.json").read_text())
    assert provenance["num_images"] == 1797 and provenance["seed"] == 0
    assert sum(provenance["counts"]["val"].values()) == 360


def test_images_are_upscaled_rgb_jpegs_of_the_right_sample(written):
    path = next((written / "val" / "3").iterdir())
    with Image.open(path) as img:
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (64, 64))
        decoded = np.asarray(img, dtype=np.float64)
    expected = np.asarray(digit_to_image(DIGITS.images[int(path.stem)], 64), dtype=np.float64)
    assert np.abs(decoded - expected).mean() < 2.0  # JPEG quality 95
    other = np.asarray(digit_to_image(DIGITS.images[int(path.stem) + 1], 64), dtype=np.float64)
    assert np.abs(decoded - other).mean() > 10.0


def test_digit_to_image_ink_scale():
    ink = np.zeros((8, 8))
    ink[:, 4:] = 16
    img = np.asarray(digit_to_image(ink, 8))  # same size: no resampling
    assert img.shape == (8, 8, 3)
    assert (img[:, :4] == 255).all() and (img[:, 4:] == 0).all()  # white page, black ink


def test_deterministic_and_seeded(tmp_path, written):
    again = tmp_path / "again"
    write_digits(again)
    assert _files(again) == _files(written)
    other = tmp_path / "other_seed"
    write_digits(other, seed=1, size=16)
    assert sorted(p.name for p in (other / "val" / "0").iterdir()) != sorted(
        p.name for p in (written / "val" / "0").iterdir()
    )


def test_split_indices():
    train, val = split_indices(DIGITS.target, 0.5, seed=3)
    assert len(train) + len(val) == 1797 and not set(train) & set(val)
    assert list(train) == sorted(train)
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_indices(DIGITS.target, 0.0)
    with pytest.raises(ValueError, match="cannot give every class"):
        split_indices(DIGITS.target, 0.001)


def test_refuses_non_empty_dir_and_force_replaces_only_its_entries(tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_digits(out, size=16)
    (out / "train" / "0").mkdir(parents=True)
    (out / "train" / "0" / "stale.jpg").write_bytes(b"old")
    write_digits(out, size=16, force=True)
    assert (out / "notes.md").read_text() == "mine"
    assert not (out / "train" / "0" / "stale.jpg").exists()
    assert sum(1 for _ in out.rglob("*.jpg")) == 1797
    assert not list(tmp_path.glob(".set.tmp-*"))


def test_empty_existing_dir_is_fine(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert write_digits(out, size=16).num_val == 360


def test_bad_arguments(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        write_digits(a_file)
    with pytest.raises(ValueError, match="size"):
        write_digits(tmp_path / "a", size=4)
    with pytest.raises(ValueError, match="quality"):
        write_digits(tmp_path / "b", quality=0)
    with pytest.raises(ValueError, match="val fraction"):
        write_digits(tmp_path / "c", val_fraction=1.0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = digits_module.digit_to_image

    def failing(ink, size):
        calls["n"] += 1
        if calls["n"] > 100:
            raise KeyboardInterrupt
        return real(ink, size)

    monkeypatch.setattr(digits_module, "digit_to_image", failing)
    with pytest.raises(KeyboardInterrupt):
        write_digits(tmp_path / "set", size=16)
    assert list(tmp_path.iterdir()) == []


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ddrnet data")
    cli_data.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_writes_and_prints_summary(tmp_path, capsys):
    out = tmp_path / "cli"
    args = _parse("digits", str(out), "--size", "16", "--val-fraction", "0.25", "--seed", "2")
    assert cli_data.run(args) == 0
    printed = capsys.readouterr().out
    assert "1347 train + 450 val = 1797 images" in printed and "16x16" in printed
    with Image.open(next(out.rglob("*.jpg"))) as img:
        assert img.size == (16, 16)
    with pytest.raises(CliError, match="not empty"):
        cli_data.run(_parse("digits", str(out)))
    with pytest.raises(CliError, match="val fraction"):
        cli_data.run(_parse("digits", str(tmp_path / "x"), "--val-fraction", "2"))
    with pytest.raises(SystemExit):
        _parse("imagenet", str(out))  # unknown data set: argparse names the choices
