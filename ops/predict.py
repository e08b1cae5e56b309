"""Offline prediction: classify files, folders, globs or a list file with a repository's model (or a
version directory), no server (``ddrnet predict``), writing one JSON line (or CSV row) per image.

The same pieces as serving: the version's eval transform (``model.preprocess.EvalTransform``, the one
preprocessing, its pixel limit included), the runtime layer's adapters (``inference.runtimes``: ``auto``
or a named runtime, the precision switch and its verification records), top-k with softmax scores
(``server.postprocess``), and the server's placement (``inference.placement``: on a CPU one runtime
with every core as its threads, more instances beyond 8 cores, each in its own thread here, as many
decode threads as cores). Images are decoded on ``workers`` threads while the runtimes run the
previous batches; the order of the output follows the input (folders and globs sorted). An image that
cannot be decoded is one line with its ``error`` (and counted), never the end of the job.
``--resume`` skips the images an earlier, interrupted run already wrote (its output file is appended
to), so a job over millions of images can be restarted.

Output, by the file's suffix: ``.jsonl`` (or anything else) one line per image,
``{"path": ..., "predictions": [{"label", "index", "score"}, ...]}`` or ``{"path": ..., "error": ...}``;
``.csv`` a header ``path,error,label_1,score_1,...,label_K,score_K`` and one row per image.
"""

from __future__ import annotations

import csv
import glob
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


GLOB_CHARS = frozenset("*?[")


def input_files(inputs: Sequence[str | os.PathLike[str]], list_file: Path | None = None) -> list[Path]:
    """Image files of the inputs and of ``list_file``'s lines (blank lines and ``#`` comments skipped):
    a folder is searched recursively, a glob (``photos/**/*.jpg``) is expanded, both sorted; a file is
    taken as it is. PredictError for an input that does not exist, a folder or glob with no image."""
    items = [str(item) for item in inputs]
    if list_file is not None:
        try:
            lines = Path(list_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise PredictError(f"cannot read the list file {list_file}: {exc}") from None
        items += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not items:
        raise PredictError("no input: name files, folders or globs, or --list FILE")
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = image_files(path)
            if not found:
                raise PredictError(f"{path} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        elif GLOB_CHARS & set(item):
            matched = sorted(Path(m) for m in glob.glob(item, recursive=True))
            found = [m for m in matched if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
            for folder in (m for m in matched if m.is_dir()):
                found.extend(image_files(folder))
            if not found:
                raise PredictError(f"{item} matches no image ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        else:
            raise PredictError(f"input {path} does not exist")
    return out


def done_paths(output: Path) -> set[str]:
    """Paths an earlier run already wrote to ``output`` (JSON lines or CSV; a cut last line is
    ignored)."""
    done: set[str] = set()
    if not output.is_file():
        return done
    with open(output, encoding="utf-8", errors="replace", newline="") as handle:
        if output.suffix.lower() == ".csv":
            rows = list(csv.reader(handle))
            complete = rows[1:-1] if rows and rows[-1] and len(rows[-1]) < len(rows[0]) else rows[1:]
            done.update(row[0] for row in complete if row)
            return done
        for line in handle:
            try:
                done.add(json.loads(line)["path"])
            except (ValueError, KeyError, TypeError):
                continue
    return done


class _Writer:
    """JSON lines, or CSV rows under a header, by the output's suffix."""

    def __init__(self, handle: Any, output: Path, top_k: int, fresh: bool) -> None:
        self.handle = handle
        self.csv = csv.writer(handle) if output.suffix.lower() == ".csv" else None
        self.top_k = top_k
        if self.csv is not None and fresh:
            header = ["path", "error"]
            for rank in range(1, top_k + 1):
                header += [f"label_{rank}", f"score_{rank}"]
            self.csv.writerow(header)

    def result(self, path: Path, predictions: list[dict[str, Any]]) -> None:
        if self.csv is None:
            self.handle.write(json.dumps({"path": str(path), "predictions": predictions}) + "\n")
            return
        row = [str(path), ""]
        for p in predictions:
            row += [p["label"], p["score"]]
        self.csv.writerow(row + [""] * (2 + 2 * self.top_k - len(row)))

    def error(self, path: Path, message: str) -> None:
        if self.csv is None:
            self.handle.write(json.dumps({"path": str(path), "error": message}) + "\n")
        else:
            self.csv.writerow([str(path), message] + [""] * (2 * self.top_k))  # full width: never "cut"


def resolve_version(repository: Path | None, model: str | None, version: int | None,
                    model_dir: Path | None) -> Path:
    """The version directory to run: ``model_dir`` itself, or ``model``'s ``version`` (default: the
    newest) in ``repository``; PredictError naming what is missing."""
    if model_dir is not None:
        if repository is not None or model is not None or version is not None:
            raise PredictError("give --model-dir, or --model-repository with --model [--version], not both")
        if not (Path(model_dir) / "model.json").is_file():
            raise PredictError(f"{model_dir} is not a model version directory (no model.json)")
        return Path(model_dir)
    if repository is None or not model:
        raise PredictError("name the model: --model-repository DIR --model NAME [--version N], or "
                           "--model-dir VERSION_DIR")
    versions = repo.list_versions(repository, model)
    if not versions:
        raise PredictError(f"model repository {repository} has no complete version of {model!r}")
    vdir = repo.version_dir(repository, model, version or versions[-1])
    if not vdir.is_dir():
        raise PredictError(f"model {model!r} has no version {version}")
    return vdir


def predict(
    repository: Path | None,
    model: str | None,
    inputs: Sequence[str | os.PathLike[str]],
    output: Path,
    *,
    version: int | None = None,
    model_dir: Path | None = None,
    list_file: Path | None = None,
    top_k: int = 5,
    batch_size: int = 16,
    runtime: str = "auto",
    precision: str = "fp32",
    instances: int | None = None,
    threads: int | None = None,
    workers: int | None = None,
    resume: bool = False,
    max_pixels: int = 40_000_000,
    progress: Callable[[int], None] | None = None,
    planned: Callable[[int], None] | None = None,
) -> PredictSummary:
    """Classify ``inputs`` with ``model`` of ``repository`` (or the version directory ``model_dir``) into
    ``output``; see the module docstring. ``instances``, ``threads`` and ``workers`` default to the
    server's placement. ``planned(n)`` is called once with the number of images to classify (after
``--resume`` skipped what is done), ``progress(n)`` with the images done after each batch."""
    from inference import runtimes
    from inference.placement import derive_placement
    from inference.precision import PrecisionError, check_precision, check_verified
    from server.postprocess import top_k as best_k

    if batch_size < 1 or top_k < 1 or any(v is not None and v < 1 for v in (workers, instances, threads)):
        raise PredictError("--batch-size, --top-k, --workers, --instances and --threads must be at least 1")
    vdir = resolve_version(repository, model, version, model_dir)
    try:
        manifest = repo.check_version(vdir)
        precision = check_precision(precision)
        check_verified(manifest.verification, precision, manifest.name, manifest.version)
        name = runtimes.select_runtime(runtime, str(vdir), manifest, precision, "cpu")
    except (repo.IncompleteVersionError, PrecisionError, ValueError, RuntimeError) as exc:
        raise PredictError(str(exc)) from None
    files = input_files(inputs, list_file)
    done = done_paths(output) if resume else set()
    todo = [f for f in files if str(f) not in done]
    summary = PredictSummary(skipped=len(files) - len(todo), runtime=name, precision=precision)
    if planned is not None:
        planned(len(todo))
    placement = derive_placement(instances=instances, threads_per_instance=threads,
                                 preprocess_workers=workers)
    options: dict[str, Any] = {"precision": precision} if precision != "fp32" else {}
    options["threads"] = placement.threads_per_instance
    loaded: list[Any] = []
    try:
        for _ in range(placement.instances):
            rt = runtimes.create_runtime(name)
            rt.load(str(vdir), manifest, "cpu", 0, options)
            loaded.append(rt)
    except Exception as exc:  # the adapters' RuntimeUnavailableError / ModelFileError, with the cause
        for rt in loaded:
            rt.close()
        raise PredictError(f"runtime {name} cannot load {vdir}: {exc}") from None
    transform = EvalTransform.for_manifest(manifest, max_pixels)
    started = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    fresh = not (resume and output.is_file() and output.stat().st_size > 0)
    idle = list(loaded)

    def classify(good: list[tuple[Path, np.ndarray]]) -> dict[Path, Any]:
        rt = idle.pop()  # one batch per runtime at a time; list.pop/append are atomic under the GIL
        try:
            logits = rt.infer(np.ascontiguousarray(np.stack([a for _, a in good])))
            logits = np.array(logits, copy=True)  # the adapter's output buffer is reused by its next call
        finally:
            idle.append(rt)
        return {path: [{"label": p.label, "index": p.index, "score": round(p.score, 6)} for p in preds]
                for (path, _), preds in zip(good, best_k(logits, top_k, manifest.labels), strict=True)}

    try:
        with open(output, "a" if not fresh else "w", encoding="utf-8", newline="") as handle, \
                ThreadPoolExecutor(placement.preprocess_workers, thread_name_prefix="decode") as pool, \
                ThreadPoolExecutor(len(loaded), thread_name_prefix="predict-infer") as runners:
            writer = _Writer(handle, output, top_k, fresh)
            window: list[tuple[list[tuple[Path, Any]], Any]] = []  # batches running, in input order

            def drain(keep: int) -> None:
                while len(window) > keep:
                    pairs, future = window.pop(0)
                    results = future.result() if future is not None else {}
                    for path, arr in pairs:
                        if path in results:
                            writer.result(path, results[path])
                            summary.images += 1
                        else:
                            writer.error(path, str(arr))
                            summary.failed += 1
                    handle.flush()
                    if progress is not None:
                        progress(len(pairs))

            for chunk, decoded in _decoded_batches(todo, batch_size, transform, pool):
                pairs = list(zip(chunk, decoded, strict=True))
                good = [(path, arr) for path, arr in pairs if isinstance(arr, np.ndarray)]
                window.append((pairs, runners.submit(classify, good) if good else None))
                drain(len(loaded))
            drain(0)
    finally:
        for rt in loaded:
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
