"""Input pipelines: folder scanning and checks, determinism, sharding, eval counting, bad images."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.support.train_testutil import dataset_rows, make_image_folder, pipeline_config
from training.data import (
    BadImageLog,
    DataError,
    check_splits,
    eval_dataset,
    resolve_class_labels,
    scan_split,
    steps_per_epoch,
    train_dataset,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("digits"), classes=3, train_per_class=6, val_per_class=3)


def _cfg(folder, **kw):
    return pipeline_config(folder, **kw)


_batches = dataset_rows


def test_scan_and_checks(folder, tmp_path):
    train = scan_split(folder / "train")
    assert train.classes == ("0", "1", "2") and len(train) == 18
    assert list(np.bincount(train.labels)) == [6, 6, 6]
    assert resolve_class_labels(folder, train.classes) == ["0", "1", "2"]
    (folder / "labels.txt").write_text("zero\none\ntwo\n")
    try:
        assert resolve_class_labels(folder, train.classes) == ["zero", "one", "two"]
    finally:
        (folder / "labels.txt").unlink()
    with pytest.raises(DataError, match=r"num_classes is 10 but .* has 3 class folders"):
        check_splits(_cfg(folder, num_classes=10), train, None)
    with pytest.raises(DataError, match="dataset folder not found"):
        scan_split(tmp_path / "nope")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no image files"):
        scan_split(tmp_path / "empty")
    other = make_image_folder(tmp_path / "other", classes=3, train_per_class=1, val_per_class=1)
    (other / "val" / "2").rename(other / "val" / "7")
    expected = r"class folders differ .*only in train: \['2'\], only in val: \['7'\]"
    with pytest.raises(DataError, match=expected):
        check_splits(_cfg(folder), train, scan_split(other / "val"))
    assert steps_per_epoch(18, 4, 1) == 4 and steps_per_epoch(18, 4, 2) == 2 and steps_per_epoch(7, 8, 1) == 0


def test_train_batches_are_deterministic_per_epoch(folder, tmp_path):
    cfg = _cfg(folder, auto_augment="rand-m9-mstd0.5-inc1")
    split = scan_split(folder / "train")
    bad = BadImageLog(tmp_path / "bad.txt")
    a = _batches(train_dataset(cfg, split, 0, bad))
    b = _batches(train_dataset(cfg, split, 0, bad))
    c = _batches(train_dataset(cfg, split, 1, bad))
    assert len(a) == 4  # 18 images, batch 4, remainder dropped
    images, targets = a[0]
    assert images.shape == (4, 3, 64, 64) and images.dtype == np.float32
    assert targets.shape == (4, 3) and np.allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0][0], c[0][0])
    # resuming mid-epoch: skipping 2 batches yields exactly the remaining batches
    rest = _batches(train_dataset(cfg, split, 0, bad, skip_batches=2))
    assert len(rest) == 2 and all(np.array_equal(x[0], y[0]) for x, y in zip(a[2:], rest, strict=True))
    assert not bad.entries()


def test_shards_are_disjoint_and_cover(folder, tmp_path):
    cfg = _cfg(folder, batch_size=1, mix_up=0.0, cutmix=0.0, re_prob=0.0, label_smoothing=0.0)
    split = scan_split(folder / "train")
    bad = BadImageLog(tmp_path / "bad.txt")

    def labels_and_images(rank):
        rows = _batches(train_dataset(cfg, split, 3, bad, rank=rank, world_size=2))
        return [r[0].tobytes() for r in rows]

    r0, r1 = labels_and_images(0), labels_and_images(1)
    assert len(r0) == len(r1) == 9
    assert not set(r0) & set(r1)


def test_eval_counts_every_image_once(folder, tmp_path):
    cfg = _cfg(folder, eval_batch_size=4)  # 9 val images: batches of 4, 4, 1
    split = scan_split(folder / "val")
    rows = _batches(eval_dataset(cfg, split, BadImageLog(tmp_path / "bad.txt")))
    assert [len(r[1]) for r in rows] == [4, 4, 1]
    assert sorted(np.concatenate([r[1] for r in rows]).tolist()) == sorted(split.labels.tolist())
    from training.data import eval_transform

    with open(split.paths[0], "rb") as fh:
        first = eval_transform(cfg)(fh.read())
    assert np.array_equal(rows[0][0][0], first)  # the model/ eval transform, bit for bit
    halves = [_batches(eval_dataset(cfg, split, BadImageLog(tmp_path / "b2.txt"), rank=r, world_size=2))
              for r in (0, 1)]
    assert sum(len(row[1]) for half in halves for row in half) == 9


def test_corrupt_image_is_logged_with_its_path(folder, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    victim = sorted((data / "train" / "1").iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:200])  # a truncated JPEG
    (data / "train" / "2" / "notes.jpg").write_text("not an image")
    cfg = _cfg(data, batch_size=1, mix_up=0.0, cutmix=0.0)
    bad = BadImageLog(tmp_path / "bad.txt")
    split = scan_split(data / "train")
    rows = _batches(train_dataset(cfg, split, 0, bad))
    assert len(rows) == 19  # every sample slot filled: an undecodable image gives way to the next one
    seen = np.concatenate([r[1].argmax(axis=1) for r in rows])
    # the truncated class-1 image gives way to the next class-1 image; notes.jpg (the split's last
    # file) to the first one, a class-0 image
    assert list(np.bincount(seen, minlength=3)) == [7, 6, 6]
    entries = dict(bad.entries())
    assert set(entries) == {str(victim), str(data / "train" / "2" / "notes.jpg")}
    assert "truncated" in entries[str(victim)] or "cannot decode" in entries[str(victim)]
    assert os.path.getsize(bad.path) > 0


def test_batches_do_not_depend_on_worker_count_or_kind(folder, tmp_path):
    split = scan_split(folder / "train")
    bad = BadImageLog(tmp_path / "bad.txt")
    one_thread = _batches(train_dataset(_cfg(folder, num_parallel_workers=1), split, 2, bad))
    two_procs = _batches(train_dataset(_cfg(folder, num_parallel_workers=2, python_multiprocessing=True),
                                       split, 2, bad))
    assert len(one_thread) == len(two_procs) == 4
    for (xa, ya), (xb, yb) in zip(one_thread, two_procs, strict=True):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


def test_data_photos_and_bench_commands(tmp_path):
    import json

    from tests.support.train_testutil import ddrnet, tiny_config

    made = ddrnet("data", "photos", str(tmp_path / "photos"), "--per-class", "12", "--val-per-class", "1")
    assert made.returncode == 0, made.stderr
    from PIL import Image

    first = sorted((tmp_path / "photos" / "train").iterdir())[0]
    with Image.open(next(first.iterdir())) as img:
        assert img.size in ((500, 375), (375, 500)) and img.format == "JPEG"
    classes = len(list((tmp_path / "photos" / "train").iterdir()))
    cfg = tiny_config(tmp_path, tmp_path / "photos", num_classes=classes, batch_size=8, image_size=224,
                      auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25)
    out = ddrnet("data", "bench", "--config", str(cfg), "--set", "num_parallel_workers=2", "--batches", "4",
                 "--warmup", "1", "--json")
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    assert figures["workers"] == 2 and figures["batches"] == 4 and figures["images_per_s"] > 0
    assert figures["batch_stage_per_worker"] > 0
    text = ddrnet("data", "bench", "--config", str(cfg), "--batches", "4", "--warmup", "1")
    assert text.returncode == 0 and text.stdout.strip().splitlines()[-1].startswith("pipeline: ")
    assert "img/s per core, 1 workers" in text.stdout.splitlines()[-1]
    over = f"num_parallel_workers={os.cpu_count() + 1}"
    cores = ddrnet("data", "bench", "--config", str(cfg), "--set", over)
    assert cores.returncode == 2 and "num_parallel_workers:" in cores.stderr and "cores" in cores.stderr
    too_many = ddrnet("data", "bench", "--config", str(cfg), "--batches", "500")
    assert too_many.returncode == 2 and "the bench needs 503" in too_many.stderr
    again = ddrnet("data", "photos", str(tmp_path / "photos"))
    assert again.returncode == 2 and "is not empty" in again.stderr
