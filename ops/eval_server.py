"""Accuracy through a server (``ddrnet eval --server ADDR --data VAL_DIR``): top-1 / top-5 of a served
model over an ImageNet-style folder (the counterpart of the reference's Ascend310 postprocess).

The folder is read exactly as offline ``ddrnet eval`` reads it (``training.data.scan_split``: class =
sorted sub-folder name, every image file once), the files are sent as they are (the server decodes
them and applies the model's own eval transform), and the answers are scored like offline eval
(``training.evaluate.batch_metrics``): top-1 is "no class scored above the true one", top-5 "fewer
than five did". With ``--protocol grpc|http`` the classify API's top-5 is used (loss unavailable);
with ``oip-grpc|oip-http`` the logits come back and the cross-entropy loss is reported too, so
on the same checkpoint every figure equals offline ``ddrnet eval``.

Also: per-class top-1, a confusion matrix (true class × top-1 class) as JSON and, with
``--confusion-matrix FILE.png``, as an image. An image the server refuses (undecodable) is counted
as skipped and listed, as offline eval does with ``corrupt_images: skip``.

:func:`evaluate_split` is the whole evaluation given a client; ``cli/eval.py`` (``ddrnet eval
--server``) builds the client from its options and prints the figures.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TOP_K = 5


class EvalServerError(RuntimeError):
    """The evaluation cannot go on: the model does not fit the folder, or the server failed a request."""


@dataclass
class Tally:
    """Running sums of an evaluation over ``num_classes`` classes."""

    num_classes: int
    top1: float = 0.0
    top5: float = 0.0
    loss: float = 0.0
    images: int = 0
    confusion: np.ndarray = field(init=False)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def add_ranked(self, labels: np.ndarray, indices: list[list[int]]) -> None:
        """Score top-k class indices (best first) against true ``labels``."""
        k = min(TOP_K, self.num_classes)
        for label, idx in zip(labels.tolist(), indices, strict=True):
            self.top1 += float(idx[0] == label)
            self.top5 += float(label in idx[:k])
            self.confusion[label, idx[0]] += 1
            self.images += 1

    def add_logits(self, labels: np.ndarray, logits: np.ndarray) -> None:
        """Score logits exactly as offline eval does (``training.evaluate.batch_metrics``)."""
        from training.evaluate import batch_metrics

        top1, top5, loss = batch_metrics(logits, labels, TOP_K)
        self.top1 += top1
        self.top5 += top5
        self.loss += loss
        self.images += len(labels)
        np.add.at(self.confusion, (labels, logits.argmax(axis=1)), 1)


async def _score(client: Any, paths: list[str], labels: np.ndarray, tally: Tally, protocol: str,
                 model: str, concurrency: int, batch_size: int, progress: bool) -> None:
    from clients.errors import ClientError, InvalidInputError

    slots = asyncio.Semaphore(concurrency)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", desc="eval", file=sys.stderr, leave=False)
    k = min(TOP_K, tally.num_classes)

    async def request(images: list[bytes]) -> Any:
        if protocol.startswith("oip"):
            return (await client.infer_images(images, model=model)).values
        return [r.indices for r in await client.classify_batch(images, top_k=k, model=model)]

    def add(answer: Any, batch_labels: np.ndarray) -> None:
        if protocol.startswith("oip"):
            tally.add_logits(batch_labels, np.asarray(answer))
        else:
            tally.add_ranked(batch_labels, answer)

    async def one(start: int) -> None:
        chunk = paths[start : start + batch_size]
        batch_labels = labels[start : start + batch_size]
        async with slots:
            images = await asyncio.to_thread(lambda: [Path(p).read_bytes() for p in chunk])
            try:
                add(await request(images), batch_labels)
            except InvalidInputError:
                # one bad image fails its whole request: find it by sending the images one by one
                for path, data, label in zip(chunk, images, batch_labels, strict=True):
                    try:
                        add(await request([data]), np.asarray([label]))
                    except InvalidInputError as exc:
                        tally.skipped.append((path, exc.message))
            except ClientError as exc:
                raise EvalServerError(f"the server failed on {chunk[0]}: {exc.kind}: {exc.message}") from None
            finally:
                if bar is not None:
                    bar.update(len(chunk))

    try:
        await asyncio.gather(*(one(i) for i in range(0, len(paths), batch_size)))
    finally:
        if bar is not None:
            bar.close()


def _summary(tally: Tally, classes: tuple[str, ...], protocol: str) -> dict[str, Any]:
    n = max(tally.images, 1)
    per_class = {}
    for index, name in enumerate(classes):
        count = int(tally.confusion[index].sum())
        per_class[name] = {
            "images": count,
            "top1": 100.0 * tally.confusion[index, index] / count if count else None,
        }
    return {
        "top1": 100.0 * tally.top1 / n,
        "top5": 100.0 * tally.top5 / n,
        "loss": tally.loss / n if protocol.startswith("oip") else None,
        "images": tally.images,
        "skipped_images": len(tally.skipped),
        "skipped": [{"file": p, "reason": r} for p, r in tally.skipped],
        "per_class": per_class,
        "classes": list(classes),
        "confusion_matrix": tally.confusion.tolist(),
    }


def write_confusion_matrix(path: Path, confusion: np.ndarray, classes: list[str], title: str) -> None:
    """The confusion matrix (rows: true class, columns: top-1 class), row-normalised, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape, dtype=float), where=rows > 0)
    side = min(20.0, 4.0 + 0.3 * n)
    fig, ax = plt.subplots(figsize=(side, side), dpi=100)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if confusion[i, j]:
                        color = "white" if share[i, j] > 0.5 else "black"
                        ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)


async def evaluate_split(
    client: Any, model: str, split: Any, protocol: str, *, concurrency: int = 4, batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Send every image of ``split`` (``training.data.scan_split``) to ``model`` through ``client`` (an
    async client of ``clients``) and score the answers; the summary (top-1/top-5, loss for OIP
    protocols, per-class top-1, confusion matrix, skipped images, seconds). EvalServerError when the
    model's class count differs from the split's or the server fails."""
    meta = await client.model_metadata(model)
    outputs = meta.get("outputs") or [{}]
    num_classes = int((outputs[0].get("shape") or [0, 0])[-1])
    if num_classes != len(split.classes):
        raise EvalServerError(f"model {model} has {num_classes} classes but {split.root} has "
                              f"{len(split.classes)} class folders")
    tally = Tally(num_classes)
    started = time.perf_counter()
    await _score(client, list(split.paths), split.labels.astype(np.int64), tally, protocol, model,
                 max(1, concurrency), max(1, batch_size), progress=progress)
    summary = _summary(tally, split.classes, protocol)
    summary.update(seconds=round(time.perf_counter() - started, 2), protocol=protocol, model_name=model,
                   model_version=(meta.get("versions") or [""])[0])
    return summary
