"""``ddrnet bench --raw``: the machine's limit for one model version, measured in this process.

Two costs, on the same model version and the same payload images as the served measurement:

- **model time per image** at each batch size: the server's own runtime adapter
  (``server.runtimes``: same runtime, device and thread count) loaded here, fed batches of the
  payload images already preprocessed; the median time of repeated calls after a warm-up;
- **preprocessing time per image**: the version's own eval transform (built from its ``model.json``
  by ``server.preprocessing.build_transform``, decode included) over the payload, one thread.

``L = 1 / (model time per image at the best batch size + preprocessing time per image)`` is what one
image costs when nothing overlaps; served img/s ÷ L is the serving efficiency. A runtime whose
library cannot be imported in this Python (MindSpore Lite from PyPI needs Python 3.7) is measured in
the server's own worker process instead (``server.worker_client``; ``runtime_python``), which adds
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

log = logging.getLogger(__name__)

MIN_CALLS = 3
WARMUP_CALLS = 2


@dataclass
class RawResult:
    model: str
    version: str
    runtime: str
    threads: int | None
    where: str  # "in-process" or "worker process"
    batch_ms: dict[int, float]  # batch size -> median ms per call
    preprocess_ms_per_image: float
    describe: dict[str, Any] = field(default_factory=dict)

    def img_s(self, batch: int) -> float:
        return 1000.0 * batch / self.batch_ms[batch]

    @property
    def best_batch(self) -> int:
        return max(self.batch_ms, key=self.img_s)

    @property
    def model_ms_per_image(self) -> float:
        return self.batch_ms[self.best_batch] / self.best_batch

    @property
    def limit_img_s(self) -> float:
        """L: images per second when model time (best batch) and preprocessing add up."""
        return 1000.0 / (self.model_ms_per_image + self.preprocess_ms_per_image)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "runtime": self.runtime,
            "threads": self.threads,
            "where": self.where,
            "batches": [
                {"batch_size": b, "ms_per_batch": round(ms, 3), "img_s": round(self.img_s(b), 3)}
                for b, ms in sorted(self.batch_ms.items())
            ],
            "best_batch_size": self.best_batch,
            "model_ms_per_image": round(self.model_ms_per_image, 4),
            "model_img_s": round(1000.0 / self.model_ms_per_image, 3),
            "preprocess_ms_per_image": round(self.preprocess_ms_per_image, 4),
            "limit_img_s": round(self.limit_img_s, 3),
            "runtime_describe": self.describe,
        }


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


def _batch(inputs: np.ndarray, size: int) -> np.ndarray:
    index = np.arange(size) % len(inputs)
    return np.ascontiguousarray(inputs[index])


def _load_version(repository: Path, model: str, version: str | None) -> tuple[Path, Any]:
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


def measure(
    repository: Path,
    model: str,
    payload: Sequence[bytes],
    *,
    version: str | None = None,
    runtime: str = "auto",
    threads: int | None = None,
    batch_sizes: Sequence[int] = (1, 2, 4, 8),
    seconds: float = 2.0,
    device: str = "cpu",
    runtime_python: str | None = None,
    max_pixels: int = 40_000_000,
    precision: str = "fp32",
) -> RawResult:
    """Measure model time per batch size and preprocessing per image (see the module docstring).
    ValueError for a missing model/version or runtime; the runtimes' own errors pass through."""
    from server import runtimes
    from server.preprocessing import build_transform

    vdir, manifest = _load_version(repository, model, version)
    transform = build_transform(manifest, max_pixels)
    pre_ms = preprocess_cost(transform, payload, seconds)
    inputs = transform.batch(list(payload))
    manifest_dict = manifest.to_dict()
    name = runtimes.select_runtime(runtime, str(vdir), manifest_dict) if runtime_python is None else runtime
    options: dict[str, Any] = {} if threads is None else {"threads": threads}
    if precision != "fp32":  # the server's --precision int8: ONNX Runtime on model.int8.onnx
        options["precision"] = precision
    if runtime_python is None:
        rt = runtimes.create_runtime(name)
        rt.load(str(vdir), manifest_dict, device, 0, options)
        try:
            batch_ms = {}
            for size in batch_sizes:
                batch = _batch(inputs, size)
                for _ in range(WARMUP_CALLS):
                    rt.infer(batch)
                batch_ms[size] = 1000.0 * statistics.median(_timed(lambda b=batch: rt.infer(b), seconds))
            describe = rt.describe()
        finally:
            rt.close()
        where = "in-process"
    else:
        batch_ms, describe = asyncio.run(
            _measure_in_worker(vdir, manifest_dict, name, threads, batch_sizes, inputs, seconds, device,
                               runtime_python)
        )
        name = describe.get("runtime", name)
        where = "worker process"
    return RawResult(model, str(manifest.version), name, threads, where, batch_ms, pre_ms, describe)


async def _measure_in_worker(
    vdir: Path, manifest: dict[str, Any], runtime: str, threads: int | None, batch_sizes: Sequence[int],
    inputs: np.ndarray, seconds: float, device: str, python: str,
) -> tuple[dict[int, float], dict[str, Any]]:
    from server.worker_client import WorkerInstance

    worker = WorkerInstance(
        vdir, manifest, runtime=runtime, device=device, threads=threads, max_batch_size=max(batch_sizes),
        python=python, warmup_batch_sizes=list(batch_sizes), restart=False,
    )
    await worker.start()
    try:
        batch_ms = {}
        for size in batch_sizes:
            batch = _batch(inputs, size)
            for _ in range(WARMUP_CALLS):
                await worker.infer(batch)
            times: list[float] = []
            end = time.perf_counter() + seconds
            while len(times) < MIN_CALLS or time.perf_counter() < end:
                started = time.perf_counter()
                await worker.infer(batch)
                times.append(time.perf_counter() - started)
            batch_ms[size] = 1000.0 * statistics.median(times)
        describe = dict(worker.describe())
    finally:
        await worker.stop()
    return batch_ms, describe
