"""Train and val input pipelines over an ImageNet-style folder, built with ``mindspore.dataset``.

Layout: ``<data_url>/<train_split>/<class>/<image>`` and the same for ``<val_split>``; classes are
the sorted sub-folder names (ImageFolder's rule), labels come from ``<data_url>/labels.txt`` when it
exists, else the ImageNet-1k names when the folders are the 1,000 synsets, else the folder names.

Pipeline: ``GeneratorDataset`` over (sample index, label), shuffled and sharded per rank
(``num_shards``/``shard_id``) → a decode+augment map (``num_parallel_workers``; an undecodable train
image is replaced by the next decodable one, so every rank keeps its batch count; an undecodable val
image is dropped by a filter) → ``vision.Normalize`` + ``vision.HWC2CHW`` → batch with a per-batch map
doing random erasing, mixup/cutmix and the soft targets. With ``device_batch_ops`` on (the default off
the CPU) the images stay uint8 and the batch carries the per-batch plan instead; the train step
normalises, erases and mixes on the device (``training.batch_ops``), so a quarter of the bytes travel to
the device. ``ImageFolderDataset`` is not used because it hides file paths, and a corrupt image must be
reported by its path: the decode op records it in a :class:`BadImageLog` (a file, so it works from
worker threads and processes alike) and the trainer reads it between steps (``corrupt_images: fail``
stops with the path; ``skip`` counts and lists).

The train pipeline is built per epoch, with the shuffle seeded by ``seed + epoch`` and every random
augmentation drawn from a generator seeded by (seed, epoch, index): an epoch is a pure function of
those numbers, so a resumed run repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.labels import imagenet_labels, imagenet_synsets, read_labels_file, validate_labels
from model.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    ImageError,
    decode_image,
    to_rgb,
)
from training.augment import TrainImageAugment
from training.batch_ops import BatchStage
from training.config import TrainConfig

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


class DataError(ValueError):
    """The dataset folder is missing, empty, inconsistent with the config, or holds a bad image."""


@dataclass(frozen=True)
class Split:
    """One split of an ImageNet-style folder: file paths, integer labels, class folder names."""

    root: Path
    paths: tuple[str, ...]
    labels: np.ndarray  # int32
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)


def scan_split(root: str | os.PathLike[str]) -> Split:
    """List ``root/<class>/**/<image>`` files (sorted), ImageFolder-style. DataError if none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"no class folders in {root} (expected {root}/<class>/<image files>)")
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames.sort()
            for fname in sorted(filenames):
                if fname.lower().endswith(IMAGE_EXTENSIONS) and not fname.startswith("."):
                    paths.append(os.path.join(dirpath, fname))
                    labels.append(label)
    if not paths:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return Split(root, tuple(paths), np.asarray(labels, dtype=np.int32), tuple(classes))


def resolve_class_labels(data_url: str | os.PathLike[str], classes: tuple[str, ...]) -> list[str]:
    """Human-readable labels in class-index order (see module docstring)."""
    labels_file = Path(data_url) / "labels.txt"
    if labels_file.is_file():
        try:
            return validate_labels(read_labels_file(labels_file), len(classes))
        except ValueError as exc:
            raise DataError(f"{labels_file}: {exc}") from None
    if len(classes) == 1000 and list(classes) == imagenet_synsets():
        return imagenet_labels()
    return list(classes)


def check_splits(cfg: TrainConfig, train: Split | None, val: Split | None) -> None:
    """The class folders must agree with each other and with ``num_classes``."""
    for split in (train, val):
        if split is not None and len(split.classes) != cfg.num_classes:
            raise DataError(
                f"num_classes is {cfg.num_classes} but {split.root} has {len(split.classes)} class folders"
            )
    if train is not None and val is not None and train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:5]
        only_val = sorted(set(val.classes) - set(train.classes))[:5]
        raise DataError(
            f"class folders differ between {train.root} and {val.root} "
            f"(only in train: {only_train}, only in val: {only_val})"
        )


class BadImageLog:
    """Append-only record of undecodable images, shared by pipeline workers (threads or processes)
    through a file: one ``path<TAB>reason`` line each (O_APPEND writes of one short line are atomic)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)

    def record(self, image_path: str, reason: str) -> None:
        line = f"{image_path}\t{reason}".replace("\n", " ") + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8", "replace"))
        finally:
            os.close(fd)

    def size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def entries(self) -> list[tuple[str, str]]:
        """Unique (path, reason) pairs recorded so far, in first-seen order."""
        try:
            text = Path(self.path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        seen: dict[str, str] = {}
        for line in text.splitlines():
            path, _, reason = line.partition("\t")
            seen.setdefault(path, reason)
        return list(seen.items())

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _read_image(path: str):
    with open(path, "rb") as fh:
        data = fh.read()
    return decode_image(data)


class _IndexSource:
    """Random-access source for GeneratorDataset: index → (index, label)."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return np.int64(index), self.labels[index]


class _DecodeTrain:
    """(index, label) → (augmented uint8 HWC image, label, ok flag, index).

    An undecodable image is logged and replaced by the next decodable one of the split (its label
    too), so every rank keeps its full number of batches: under msrun a rank that ran out early
    would leave the others waiting in the gradient all-reduce. ``ok`` is 0 only when
    ``MAX_SUBSTITUTES`` images in a row are undecodable (then the sample is filtered out).
    """

    MAX_SUBSTITUTES = 16

    def __init__(self, paths: tuple[str, ...], labels: np.ndarray, augment: TrainImageAugment, seed: int,
                 epoch: int, bad_log: BadImageLog) -> None:
        self.paths, self.labels, self.augment = paths, labels, augment
        self.seed, self.epoch, self.bad_log = seed, epoch, bad_log
        self.placeholder = np.zeros((augment.size, augment.size, 3), np.uint8)

    def __call__(self, index, label):
        i = int(index)
        rng = np.random.default_rng([self.seed, self.epoch, i, 1])
        for k in range(self.MAX_SUBSTITUTES):
            j = (i + k) % len(self.paths)
            try:
                img = to_rgb(_read_image(self.paths[j]))
            except (ImageError, OSError) as exc:
                self.bad_log.record(self.paths[j], str(exc))
                continue
            return self.augment(img, rng), self.labels[j], np.int32(1), index
        return self.placeholder, label, np.int32(0), index


class _DecodeEval:
    """index → (eval-transformed float32 CHW image, ok flag); the transform is model.preprocess's."""

    def __init__(self, paths: tuple[str, ...], transform: EvalTransform, bad_log: BadImageLog) -> None:
        self.paths, self.transform, self.bad_log = paths, transform, bad_log
        self.placeholder = np.zeros(transform.output_shape, np.float32)

    def __call__(self, index):
        path = self.paths[int(index)]
        try:
            with open(path, "rb") as fh:
                return self.transform(fh.read()), np.int32(1)
        except (ImageError, OSError) as exc:
            self.bad_log.record(path, str(exc))
            return self.placeholder, np.int32(0)


class _BatchMix:
    """Per-batch map, float32 batches: random erasing per image, then mixup/cutmix and soft targets
    (``training.batch_ops``: planned and applied on the host)."""

    def __init__(self, cfg: TrainConfig, epoch: int) -> None:
        self.stage = BatchStage(cfg, epoch)

    def __call__(self, images, labels, indices, _batch_info):
        batch = np.stack(images).astype(np.float32, copy=False)
        keys = [int(k) for k in indices]
        plan = self.stage.plan(keys, np.asarray(labels), batch.shape[-2], batch.shape[-1])
        return self.stage.apply(batch, plan, keys), plan.targets


class _BatchPlanMap:
    """Per-batch map, uint8 batches: the same plan, shipped with the untouched uint8 images for the
    device to normalise, erase and mix (``training.batch_ops.device_batch_stage``)."""

    def __init__(self, cfg: TrainConfig, epoch: int) -> None:
        self.stage = BatchStage(cfg, epoch)

    def __call__(self, images, labels, indices, _batch_info):
        batch = np.stack(images)
        keys = [int(k) for k in indices]
        plan = self.stage.plan(keys, np.asarray(labels), batch.shape[-2], batch.shape[-1])
        return (batch, np.asarray(keys, np.int32), plan.boxes, plan.colours, plan.mix, plan.cut,
                plan.targets)


#: The columns of a uint8 train batch, in the order ``DeviceBatchStage`` takes them (then targets).
DEVICE_BATCH_COLUMNS = ["image", "key", "boxes", "colours", "mix", "cut", "label"]


def _normalize_ops():
    import mindspore.dataset.vision as vision

    mean = [255.0 * m for m in IMAGENET_MEAN]
    std = [255.0 * s for s in IMAGENET_STD]
    return [vision.Normalize(mean=mean, std=std), vision.HWC2CHW()]


def check_workers(workers: int) -> None:
    """MindSpore refuses more pipeline workers than the machine has cores; say so naming the key."""
    cores = os.cpu_count() or 1
    if workers > cores:
        raise DataError(f"num_parallel_workers: {workers} is more than the {cores} cores of this machine "
                        f"(mindspore.dataset's limit); set it to {cores} or fewer")


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    """Batches per rank and epoch: the shard (padded to equal size) over the batch, remainder dropped."""
    shard = -(-num_samples // world_size)
    return shard // batch_size


def train_dataset(cfg: TrainConfig, split: Split, epoch: int, bad_log: BadImageLog, *, rank: int = 0,
                  world_size: int = 1, skip_batches: int = 0):
    """The train pipeline for one epoch (yields ``image`` float32 NCHW and ``label`` float32 soft
    targets; with ``batch_ops_on_device``, the uint8 batch and its plan: ``DEVICE_BATCH_COLUMNS``),
    optionally skipping the first ``skip_batches`` batches (mid-epoch resume). The per-batch
    stage runs on ``num_parallel_workers`` workers like the per-image one: each batch draws from its
    own generator, so the result does not depend on which worker made it."""
    data = per_image_dataset(cfg, split, epoch, bad_log, rank=rank, world_size=world_size,
                             skip_batches=skip_batches)
    on_device = cfg.batch_ops_on_device
    return data.batch(cfg.batch_size, drop_remainder=True,
                      per_batch_map=(_BatchPlanMap if on_device else _BatchMix)(cfg, epoch),
                      input_columns=["image", "label", "index"],
                      output_columns=DEVICE_BATCH_COLUMNS if on_device else ["image", "label"],
                      num_parallel_workers=cfg.num_parallel_workers,
                      python_multiprocessing=cfg.python_multiprocessing)


def per_image_dataset(cfg: TrainConfig, split: Split, epoch: int, bad_log: BadImageLog, *, rank: int = 0,
                      world_size: int = 1, skip_batches: int = 0):
    """The train pipeline up to the batch: ``image`` (normalised float32 CHW, or uint8 CHW when the
    device normalises), ``label``, ``index``."""
    import mindspore.dataset as ds

    check_workers(cfg.num_parallel_workers)

    ds.config.set_seed(cfg.seed + epoch)  # the shuffle order of this epoch, equal on every rank
    workers = cfg.num_parallel_workers
    data = ds.GeneratorDataset(_IndexSource(split.labels), column_names=["index", "label"], shuffle=True,
                               num_shards=world_size if world_size > 1 else None,
                               shard_id=rank if world_size > 1 else None, num_parallel_workers=1)
    if skip_batches:
        data = data.skip(skip_batches * cfg.batch_size)
    augment = TrainImageAugment(cfg.image_size, cfg.interpolation, cfg.auto_augment, cfg.color_jitter,
                                cfg.hflip, IMAGENET_MEAN, tuple(cfg.crop_scale), tuple(cfg.crop_ratio))
    data = data.map(_DecodeTrain(split.paths, split.labels, augment, cfg.seed, epoch, bad_log),
                    input_columns=["index", "label"], output_columns=["image", "label", "ok", "index"],
                    num_parallel_workers=workers, python_multiprocessing=cfg.python_multiprocessing)
    data = data.filter(lambda ok: bool(ok), input_columns=["ok"], num_parallel_workers=1)
    ops = _normalize_ops() if not cfg.batch_ops_on_device else _normalize_ops()[-1:]  # HWC2CHW only
    data = data.map(ops, input_columns=["image"], num_parallel_workers=workers)
    return data.project(["image", "label", "index"])


def eval_transform(cfg: TrainConfig) -> EvalTransform:
    """The one eval transform (model.preprocess) for this config."""
    return EvalTransform(cfg.eval_preprocess())


def eval_dataset(cfg: TrainConfig, split: Split, bad_log: BadImageLog, *, rank: int = 0, world_size: int = 1):
    """Val pipeline: every image of this rank's slice ``rank::world_size`` exactly once, in order, last
    batch kept (no padding, no drop), yielding ``image`` float32 NCHW and ``label`` int32."""
    import mindspore.dataset as ds

    check_workers(cfg.num_parallel_workers)
    indices = list(range(rank, len(split), world_size))
    data = ds.GeneratorDataset(_IndexSource(split.labels), column_names=["index", "label"],
                               sampler=indices, num_parallel_workers=1)
    data = data.map(_DecodeEval(split.paths, eval_transform(cfg), bad_log), input_columns=["index"],
                    output_columns=["image", "ok"], num_parallel_workers=cfg.num_parallel_workers,
                    python_multiprocessing=cfg.python_multiprocessing)
    data = data.filter(lambda ok: bool(ok), input_columns=["ok"], num_parallel_workers=1)
    data = data.project(["image", "label"])
    return data.batch(cfg.eval_batch, drop_remainder=False)
