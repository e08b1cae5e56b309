"""Logits → predictions: a numerically stable softmax and top-k with the model's labels.

Also owns the ``top_k`` rule every front end applies: an integer from 1 to :data:`MAX_TOP_K` (or the
model's class count, when that is larger); values above the class count return every class, best
first. Anything else is an INVALID_ARGUMENT naming the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from server.errors import ErrorKind, ServingError

DEFAULT_TOP_K = 5
MAX_TOP_K = 1000


@dataclass(frozen=True)
class Prediction:
    """One class of one image: its label, index in the model output and softmax probability."""

    label: str
    index: int
    score: float


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[N, C]`` logits (float64 accumulation, float32 result)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x.astype(np.float32)


def check_top_k(value: object, num_classes: int) -> int:
    """``value`` as a valid top-k (None → :data:`DEFAULT_TOP_K`), capped at ``num_classes``."""
    if value is None:
        return min(DEFAULT_TOP_K, num_classes)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ServingError(
            ErrorKind.INVALID_ARGUMENT, f"top_k must be an integer, got {value!r}", reason="bad_top_k"
        )
    limit = max(MAX_TOP_K, num_classes)
    if not 1 <= int(value) <= limit:
        raise ServingError(
            ErrorKind.INVALID_ARGUMENT, f"top_k must be between 1 and {limit}, got {value}",
            reason="bad_top_k",
        )
    return min(int(value), num_classes)


def parse_top_k(text: str | None) -> int | None:
    """A ``top_k`` given as text (query string, form field): None when absent, else an int or a
    ServingError naming the value (the range is checked later by :func:`check_top_k`)."""
    if text is None or text == "":
        return None
    try:
        return int(text.strip())
    except ValueError:
        raise ServingError(
            ErrorKind.INVALID_ARGUMENT, f"top_k must be an integer, got {text!r}", reason="bad_top_k"
        ) from None


def top_k(logits: np.ndarray, k: int, labels: Sequence[str]) -> list[list[Prediction]]:
    """The ``k`` most probable classes of each row of ``[N, C]`` logits, best first (ties: lower index)."""
    probs = softmax(logits)
    n_classes = probs.shape[-1]
    k = min(k, n_classes)
    out: list[list[Prediction]] = []
    for row in probs:
        # A stable sort of -p gives "highest first, lower index on ties"; C is small (<= a few
        # thousand), so a full argsort costs microseconds and keeps the order deterministic.
        order = np.argsort(-row, kind="stable")[:k]
        out.append([Prediction(labels[i], int(i), float(row[i])) for i in order])
    return out
