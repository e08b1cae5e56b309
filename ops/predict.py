"""Offline prediction: classify a folder of images (or a list of files) with a repository's model, no
server (``ddrnet predict``), writing one JSON line per image.

The same pieces as serving: the version's eval transform (``model.preprocess.EvalTransform``, the one
preprocessing, its pixel limit included), the runtime layer's adapters (``inference.runtimes``: ``auto``
or a named runtime, the precision switch and its verification records), top-k with softmax scores
(``server.postprocess``). Images are decoded on ``workers`` threads while the runtime runs the
previous batch; the order of the output follows the sorted input. An image that cannot be decoded is
one line with its ``error`` (and counted), never the end of the job. ``--resume`` skips the images
an earlier, interrupted run already wrote (its output file is appended to), so a job over millions
of images can be restarted.

Output line: ``{"path": ..., "predictions": [{"label", "index", "score"}, ...]}`` or
``{"path": ..., "error": ...}``; the last line printed is the summary.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model import repository as repo
from model.preprocess import IMAGE_SUFFIXES, EvalTransform, ImageError, image_files


class PredictError(ValueError):
    """A bad request (no such model or input, a runtime that cannot load); the message names it."""


@dataclass
class PredictSummary:
    images: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    runtime: str = ""
    precision: str = "fp32"

    def line(self) -> str:
        rate = self.images / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.images} classified, {self.failed} failed, {self.skipped} already done "
                f"({rate:.1f} img/s, {self.runtime} {self.precision})")


def input_files(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files of the inputs (folders searched recursively), sorted per input; PredictError for
    an input that does not exist or holds no image."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = image_files(path)
            if not found:
                raise PredictError(f"{path} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise PredictError(f"input {path} does not exist")
    return out


def done_paths(output: Path) -> set[str]:
    """Paths an earlier run already wrote to ``output`` (a cut last line is ignored)."""
    done: set[str] = set()
    if output.is_file():
        with open(output, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    done.add(json.loads(line)["path"])
                except (ValueError, KeyError, TypeError):
                    continue
    return done


def predict(
    repository: Path,
    model: str,
    inputs: Sequence[str | os.PathLike[str]],
    output: Path,
    *,
    version: int | None = None,
    top_k: int = 5,
    batch_size: int = 16,
    runtime: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
    workers: int = 2,
    resume: bool = False,
    max_pixels: int = 40_000_000,
    progress: Callable[[int], None] | None = None,
) -> PredictSummary:
    """Classify ``inputs`` with ``model`` of ``repository`` into ``output`` (JSON lines); see the module
    docstring. ``progress(n)`` is called with the images done after each batch."""
    from inference import runtimes
    from inference.precision import PrecisionError, check_precision, check_verified
    from server.postprocess import top_k as best_k

    if batch_size < 1 or workers < 1 or top_k < 1:
        raise PredictError("--batch-size, --workers and --top-k must be at least 1")
    versions = repo.list_versions(repository, model)
    if not versions:
        raise PredictError(f"model repository {repository} has no complete version of {model!r}")
    vdir = repo.version_dir(repository, model, version or versions[-1])
    if not vdir.is_dir():
        raise PredictError(f"model {model!r} has no version {version}")
    try:
        manifest = repo.check_version(vdir)
        precision = check_precision(precision)
        check_verified(manifest.verification, precision, model, manifest.version)
        name = runtimes.select_runtime(runtime, str(vdir), manifest, precision, "cpu")
    except (repo.IncompleteVersionError, PrecisionError, ValueError, RuntimeError) as exc:
        raise PredictError(str(exc)) from None
    files = input_files(inputs)
    done = done_paths(output) if resume else set()
    todo = [f for f in files if str(f) not in done]
    summary = PredictSummary(skipped=len(files) - len(todo), runtime=name, precision=precision)
    rt = runtimes.create_runtime(name)
    options: dict[str, Any] = {"precision": precision} if precision != "fp32" else {}
    if threads is not None:
        options["threads"] = threads
    try:
        rt.load(str(vdir), manifest, "cpu", 0, options)
    except Exception as exc:  # the adapters' RuntimeUnavailableError / ModelFileError, with the cause
        raise PredictError(f"runtime {name} cannot load {vdir}: {exc}") from None
    transform = EvalTransform.for_manifest(manifest, max_pixels)
    started = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(output, "a" if resume else "w", encoding="utf-8") as out, \
                ThreadPoolExecutor(workers, thread_name_prefix="predict-decode") as pool:
            for chunk, decoded in _decoded_batches(todo, batch_size, transform, pool):
                pairs = list(zip(chunk, decoded, strict=True))
                good = [(path, arr) for path, arr in pairs if isinstance(arr, np.ndarray)]
                results: dict[Path, Any] = {}
                if good:
                    logits = rt.infer(np.ascontiguousarray(np.stack([a for _, a in good])))
                    for (path, _), preds in zip(good, best_k(logits, top_k, manifest.labels), strict=True):
                        results[path] = [{"label": p.label, "index": p.index, "score": round(p.score, 6)}
                                         for p in preds]
                for path, arr in pairs:
                    if path in results:
                        out.write(json.dumps({"path": str(path), "predictions": results[path]}) + "\n")
                        summary.images += 1
                    else:
                        out.write(json.dumps({"path": str(path), "error": str(arr)}) + "\n")
                        summary.failed += 1
                out.flush()
                if progress is not None:
                    progress(len(chunk))
    finally:
        rt.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _decoded_batches(
    files: list[Path], batch_size: int, transform: EvalTransform, pool: ThreadPoolExecutor
) -> Iterator[tuple[list[Path], list[Any]]]:
    """(paths, arrays or error messages) per batch; the next batch decodes while this one runs."""

    def load(path: Path) -> Any:
        try:
            return transform(path.read_bytes())
        except (ImageError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"

    chunks = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    pending = [pool.submit(load, p) for p in chunks[0]] if chunks else []
    for index, chunk in enumerate(chunks):
        current = pending
        pending = [pool.submit(load, p) for p in chunks[index + 1]] if index + 1 < len(chunks) else []
        yield chunk, [f.result() for f in current]
