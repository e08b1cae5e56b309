"""Top-1, top-5 and loss of a network on the val folder, with the one eval transform of ``model/``.

Every image is counted exactly once: each rank takes the slice ``rank::world_size`` (no padding),
the last batch is kept, and the sums are all-reduced. Loss is the plain cross-entropy of the true
label (no smoothing), averaged over images; accuracies are percentages. Top-5 means top-min(5, C).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from training.data import BadImageLog, Split, eval_dataset
from training.distributed import DistInfo, all_reduce_sum


def batch_metrics(logits: np.ndarray, labels: np.ndarray, k: int = 5) -> tuple[float, float, float]:
    """(top-1 correct, top-k correct, summed CE loss) for one batch of float logits."""
    logits = logits.astype(np.float64)
    labels = labels.astype(np.int64)
    k = min(k, logits.shape[1])
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(labels)), labels].sum()
    true_logit = logits[np.arange(len(labels)), labels][:, None]
    rank = (logits > true_logit).sum(axis=1)  # classes strictly ahead of the true one
    return float((rank == 0).sum()), float((rank < k).sum()), float(loss)


def evaluate(net, cfg, split: Split, dist: DistInfo, bad_log: BadImageLog, *,
             show_bar: bool = False) -> dict[str, Any]:
    """Evaluate ``net`` (switched to inference mode, then back) on ``split``."""
    import mindspore as ms

    was_training = net.training
    net.set_train(False)
    data = eval_dataset(cfg, split, bad_log, rank=dist.rank, world_size=dist.world_size)
    sums = np.zeros(4, dtype=np.float64)  # top1, top5, loss, count
    bar = None
    if show_bar and dist.is_main:
        from tqdm import tqdm

        bar = tqdm(total=-(-len(split) // dist.world_size), desc="eval", unit="img", leave=False)
    start = time.perf_counter()
    iterator = data.create_tuple_iterator(num_epochs=1, output_numpy=True)
    try:
        for images, labels in iterator:
            logits = net(ms.Tensor(images)).asnumpy()
            top1, top5, loss = batch_metrics(logits, labels)
            sums += (top1, top5, loss, len(labels))
            if bar is not None:
                bar.update(len(labels))
    finally:
        iterator.stop()
        if bar is not None:
            bar.close()
        net.set_train(was_training)
    seconds = time.perf_counter() - start
    sums = all_reduce_sum(sums, dist)
    count = round(float(sums[3]))
    if count == 0:
        raise ValueError(f"no decodable images in {split.root}")
    return {
        "top1": 100.0 * sums[0] / count,
        "top5": 100.0 * sums[1] / count,
        "loss": sums[2] / count,
        "images": count,
        "seconds": round(seconds, 2),
    }
