"""``ddrnet data bench``: the train input pipeline alone (decode + augment + normalise + erasing and
mixup/cutmix + batch), measured without a model, so a user can size ``num_parallel_workers`` for
their cards before renting them.

Two figures, from the config's own pipeline (``training.data.train_dataset``, epoch 0, rank 0 of 1):

- the whole pipeline, in images per second after a few warm-up batches, in total and per core
  (the total over the cores it can use: ``min(num_parallel_workers, cores)``);
- the per-batch stage alone (random erasing, mixup/cutmix, soft targets: ``training.data._BatchMix``;
  with ``batch_ops_on_device`` only its plan, ``_BatchPlanMap``, as the device applies it) on one
  real batch, single-threaded, in images per second per worker. The pipeline runs it on
  ``num_parallel_workers`` workers, so a rank is capped by it only below that rate times the workers.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from training.config import TrainConfig


@dataclass(frozen=True)
class PipelineFigures:
    """What :func:`bench_pipeline` measured."""

    images_per_s: float
    batches: int
    batch_size: int
    workers: int
    cores: int
    batch_stage_per_worker: float  # images/s of the per-batch stage on one thread
    seconds: float

    @property
    def per_core(self) -> float:
        return self.images_per_s / max(1, min(self.workers, self.cores))

    def lines(self) -> list[str]:
        return [
            f"batches: {self.batches} x {self.batch_size} images in {self.seconds:.1f} s",
            f"batch stage alone: {self.batch_stage_per_worker:.0f} img/s per worker, "
            f"{self.batch_stage_per_worker * self.workers:.0f} img/s on {self.workers} workers",
            f"pipeline: {self.images_per_s:.0f} img/s total, {self.per_core:.0f} img/s per core, "
            f"{self.workers} workers",
        ]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def bench_pipeline(cfg: TrainConfig, batches: int = 20, warmup: int = 3, repeats: int = 5,
                   progress=None) -> PipelineFigures:
    """Run ``warmup + batches`` batches of the train pipeline of ``cfg`` and time the last ``batches``;
    then time the per-batch stage on one batch ``repeats`` times."""
    import tempfile

    from training.data import BadImageLog, check_workers, scan_split, steps_per_epoch, train_dataset

    check_workers(cfg.num_parallel_workers)
    split = scan_split(Path(cfg.data_url) / cfg.train_split)
    available = steps_per_epoch(len(split), cfg.batch_size, 1)
    if available < warmup + batches:
        raise ValueError(f"{split.root} gives {available} batches of {cfg.batch_size}; the bench needs "
                         f"{warmup + batches} (lower --batches or batch_size)")
    with tempfile.TemporaryDirectory() as tmp:
        bad = BadImageLog(Path(tmp) / "bad.txt")
        data = train_dataset(cfg, split, 0, bad)
        iterator = data.create_tuple_iterator(num_epochs=1, output_numpy=True)
        try:
            for _ in range(warmup):
                next(iterator)
            start = time.perf_counter()
            for _ in range(batches):
                next(iterator)
                if progress is not None:
                    progress()
            seconds = time.perf_counter() - start
        finally:
            iterator.stop()
        stage = _batch_stage_rate(cfg, split, bad, repeats)
    return PipelineFigures(images_per_s=batches * cfg.batch_size / seconds, batches=batches,
                           batch_size=cfg.batch_size, workers=cfg.num_parallel_workers,
                           cores=usable_cores(), batch_stage_per_worker=stage, seconds=seconds)


def _batch_stage_rate(cfg: TrainConfig, split, bad, repeats: int) -> float:
    """Images/s of ``_BatchMix`` on one thread, fed one batch of the pipeline's own per-image output."""
    from training.data import _BatchMix, _BatchPlanMap, per_image_dataset

    data = per_image_dataset(cfg, split, 0, bad).batch(cfg.batch_size, drop_remainder=True)
    images, labels, indices = next(data.create_tuple_iterator(num_epochs=1, output_numpy=True))
    stage = (_BatchPlanMap if cfg.batch_ops_on_device else _BatchMix)(cfg, 0)
    rows, labels, indices = list(images), list(labels), list(indices)
    stage(rows, labels, indices, None)  # warm
    start = time.perf_counter()
    for _ in range(repeats):
        stage(rows, labels, indices, None)
    return repeats * len(rows) / (time.perf_counter() - start)

