"""``ddrnet bench --raw``: the machine's limit for one model version, measured in this process.

Two costs, on the same model version and the same payload images as the served measurement:

- **model time per image** at each batch size: the server's own runtime adapter
  (``inference.runtimes``: same runtime, device and thread count) loaded here, fed batches of the
  payload images already preprocessed; the median time of repeated calls after a warm-up;
- **preprocessing time per image**: the version's own eval transform (built from its ``model.json``
  by ``EvalTransform.for_manifest``, decode included) over the payload, one thread.

``L = 1 / (model time per image at the best batch size + preprocessing time per image)`` is what one
image costs when nothing overlaps; served img/s ÷ L is the serving efficiency.

A *placement* is ``instances × threads``: one runtime with T threads in this process, or N worker
processes (the server's own ``inference.worker_client``, each with T threads) fed the same batch size
at the same time, their model time per image being wall time / images of all N together. The
server runs either (``--instances`` × ``--threads-per-instance``), and which one is faster depends
on the runtime and on how busy the machine is (BENCHMARKS.md, "thread placement"), so measuring
only one of them could understate the machine.
:func:`measure_placements` measures several placements on the same payload and the caller takes the
best as the machine's limit. A runtime whose library cannot be imported in this Python (MindSpore
Lite from PyPI needs Python 3.7) is measured in worker processes under ``runtime_python``, which adds
only the shared-memory hand-over to each batch. Each measurement is bounded by ``seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.runtimes.base import tile_batch
from model.manifest import ModelManifest

log = logging.getLogger(__name__)

MIN_CALLS = 3
WARMUP_CALLS = 2


@dataclass
class RawResult:
    model: str
    version: str
    runtime: str
    threads: int | None
    where: str  # "in-process" or "worker process(es)"
    batch_ms: dict[int, float]  # batch size -> median ms per call (all instances calling at once)
    preprocess_ms_per_image: float
    describe: dict[str, Any] = field(default_factory=dict)
    instances: int = 1
    precision: str = "fp32"

    @property
    def placement(self) -> str:
        return f"{self.instances} x {self.threads if self.threads is not None else 'default'}"

    def img_s(self, batch: int) -> float:
        """All instances together: each finishes ``batch`` images every ``batch_ms[batch]``."""
        return 1000.0 * self.instances * batch / self.batch_ms[batch]

    @property
    def best_batch(self) -> int:
        return max(self.batch_ms, key=self.img_s)

    @property
    def model_ms_per_image(self) -> float:
        return 1000.0 / self.img_s(self.best_batch)

    @property
    def limit_img_s(self) -> float:
        """L: images per second when model time (best batch) and preprocessing add up."""
        return 1000.0 / (self.model_ms_per_image + self.preprocess_ms_per_image)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "runtime": self.runtime,
            "precision": self.precision,
            "threads": self.threads,
            "instances": self.instances,
            "placement": self.placement,
            "where": self.where,
            "batches": [
                {"batch_size": b, "ms_per_batch": _sig(ms), "img_s": _sig(self.img_s(b))}
                for b, ms in sorted(self.batch_ms.items())
            ],
            "best_batch_size": self.best_batch,
            "model_ms_per_image": _sig(self.model_ms_per_image),
            "model_img_s": _sig(1000.0 / self.model_ms_per_image),
            "preprocess_ms_per_image": _sig(self.preprocess_ms_per_image),
            "limit_img_s": _sig(self.limit_img_s),
            "runtime_describe": self.describe,
        }


def _sig(value: float, digits: int = 6) -> float:
    """``value`` to ``digits`` significant figures: a fixed number of decimals would wipe out the
    figures of a tiny test model's microsecond batches."""
    return float(f"{value:.{digits}g}")


def _timed(fn: Callable[[], Any], seconds: float) -> list[float]:
    """Durations of repeated ``fn()`` calls for about ``seconds`` (at least MIN_CALLS)."""
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < MIN_CALLS or time.perf_counter() < end:
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def preprocess_cost(transform: Any, payload: Sequence[bytes], seconds: float) -> float:
    """Median over rounds of (time to transform every payload image once) / images, in ms."""
    out = np.empty((len(payload), *transform.output_shape), dtype=np.float32)

    def one_round() -> None:
        for i, data in enumerate(payload):
            transform.transform_into(data, out[i])

    one_round()  # warm caches (and surface a bad image before timing)
    return 1000.0 * statistics.median(_timed(one_round, seconds)) / len(payload)


def _load_version(repository: Path, model: str, version: str | None) -> tuple[Path, ModelManifest]:
    from model import repository as repo

    if version is None:
        chosen = repo.newest_complete_version(repository, model)
        if chosen is None:
            raise ValueError(f"model repository {repository} has no complete version of {model!r}")
        version = str(chosen)
    vdir = repo.version_dir(repository, model, int(version))
    if not vdir.is_dir():
        raise ValueError(f"model repository {repository} has no version {version} of {model!r}")
    return vdir, repo.check_version(vdir)


def version_precisions(repository: Path, model: str, version: str | None = None) -> list[str]:
    """The precisions the version was verified for (``model.json``), fp32 first."""
    from inference.precision import PRECISIONS, precision_summary

    _vdir, manifest = _load_version(repository, model, version)
    found = precision_summary(manifest.verification)
    return ["fp32"] + [p for p in PRECISIONS if p != "fp32" and p in found]


def measure_placements(
    repository: Path,
    model: str,
    payload: Sequence[bytes],
    placements: Sequence[tuple[int, int | None]],
    *,
    version: str | None = None,
    runtime: str = "auto",
    batch_sizes: Sequence[int] = (1, 2, 4, 8),
    seconds: float = 2.0,
    device: str = "cpu",
    runtime_python: str | None = None,
    max_pixels: int = 40_000_000,
    precision: str = "fp32",
) -> list[RawResult]:
    """Model time per batch size for each (instances, threads) placement, one after the other, and
    the preprocessing per image once (see the module docstring). ValueError for a missing
    model/version or runtime, or a placement below 1; the runtimes' own errors pass through."""
    from inference import runtimes
    from model.preprocess import EvalTransform

    for instances, threads in placements:
        if instances < 1 or (threads is not None and threads < 1):
            raise ValueError(f"placement {instances} x {threads}: instances and threads must be at least 1")
    vdir, manifest = _load_version(repository, model, version)
    transform = EvalTransform.for_manifest(manifest, max_pixels)
    pre_ms = preprocess_cost(transform, payload, seconds)
    inputs = transform.batch(list(payload))
    if runtime_python is None:
        name = runtimes.select_runtime(runtime, str(vdir), manifest, precision, device)
    else:
        name = runtime
    options: dict[str, Any] = {}
    if precision != "fp32":  # the server's --precision: the runtime runs the precision's file
        options["precision"] = precision
    results = []
    for instances, threads in placements:
        run_options = dict(options) if threads is None else {**options, "threads": threads}
        if runtime_python is None and instances == 1:
            batch_ms, describe = _measure_in_process(vdir, manifest, name, run_options, batch_sizes,
                                                     inputs, seconds, device)
            where, actual = "in-process", name
        else:
            batch_ms, describe = asyncio.run(_measure_in_workers(
                vdir, manifest, name, instances, threads, options, batch_sizes, inputs, seconds,
                device, runtime_python,
            ))
            actual = describe.get("runtime", name)
            where = "worker process" if instances == 1 else f"{instances} worker processes at once"
        results.append(RawResult(model, str(manifest.version), actual, threads, where, batch_ms, pre_ms,
                                 describe, instances, precision))
    return results


def _measure_in_process(
    vdir: Path, manifest: ModelManifest, name: str, options: dict[str, Any], batch_sizes: Sequence[int],
    inputs: np.ndarray, seconds: float, device: str,
) -> tuple[dict[int, float], dict[str, Any]]:
    from inference import runtimes

    rt = runtimes.create_runtime(name)
    rt.load(str(vdir), manifest, device, 0, options)
    try:
        batch_ms = {}
        for size in batch_sizes:
            batch = tile_batch(inputs, size)
            for _ in range(WARMUP_CALLS):
                rt.infer(batch)
            batch_ms[size] = 1000.0 * statistics.median(_timed(lambda b=batch: rt.infer(b), seconds))
        return batch_ms, rt.describe()
    finally:
        rt.close()


async def _measure_in_workers(
    vdir: Path, manifest: ModelManifest, runtime: str, instances: int, threads: int | None,
    options: dict[str, Any], batch_sizes: Sequence[int], inputs: np.ndarray, seconds: float, device: str,
    python: str | None,
) -> tuple[dict[int, float], dict[str, Any]]:
    """N worker processes (the server's), all fed the same batch size at once; the median call time
    of every call in the window (MIN_CALLS at least per worker)."""
    from inference.worker_client import WorkerInstance

    workers = [
        WorkerInstance(
            vdir, manifest, runtime=runtime, device=device, threads=threads, options=dict(options),
            max_batch_size=max(batch_sizes), python=python, warmup_batch_sizes=list(batch_sizes),
            restart=False, name=f"raw-{i}",
        )
        for i in range(instances)
    ]
    try:
        await asyncio.gather(*(w.start() for w in workers))

        async def loop(worker: WorkerInstance, batch: np.ndarray, end: float) -> list[float]:
            for _ in range(WARMUP_CALLS):
                await worker.infer(batch)
            times: list[float] = []
            while len(times) < MIN_CALLS or time.perf_counter() < end:
                started = time.perf_counter()
                await worker.infer(batch)
                times.append(time.perf_counter() - started)
            return times

        batch_ms = {}
        for size in batch_sizes:
            batch = tile_batch(inputs, size)
            end = time.perf_counter() + seconds
            per_worker = await asyncio.gather(*(loop(w, batch, end) for w in workers))
            batch_ms[size] = 1000.0 * statistics.median([t for times in per_worker for t in times])
        return batch_ms, dict(workers[0].describe())
    finally:
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
