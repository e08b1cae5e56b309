"""The interface a model instance offers the batcher (implemented by the worker-process client).

An instance runs one batch at a time: the batcher never calls :meth:`ModelInstance.infer` on an
instance again before the previous call returned, so an instance may reuse one input buffer (e.g. a
shared-memory block its worker process reads) for every batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ModelInstance(Protocol):
    """What the batcher needs from a model instance.

    Required: ``async infer(batch) -> outputs``. ``batch`` has shape ``(B, *item_shape)``; the result
    must be an array with one row per batch row (``outputs.shape[0] == B``, padding rows included) that
    the caller owns (the instance must not write to it after returning it).

    Optional attributes, looked up with ``getattr``:

    - ``fixed_batch_sizes: Sequence[int] | None`` — the only batch sizes the runtime accepts (static
      shapes); the batcher pads each batch up to the next one and drops the padding rows' outputs.
    - ``batch_buffer(size, item_shape, dtype) -> np.ndarray`` — a writable array of shape
      ``(size, *item_shape)`` that the batcher fills in place and then passes to ``infer`` (e.g. a
      view on shared memory, so the batch crosses to the worker process without another copy).
      Without it the batcher allocates a fresh array.
    """

    async def infer(self, batch: np.ndarray) -> np.ndarray: ...


def fixed_batch_sizes(instance: object) -> tuple[int, ...] | None:
    """The instance's static batch sizes, sorted and validated, or None when it takes any size."""
    sizes: Sequence[int] | None = getattr(instance, "fixed_batch_sizes", None)
    if not sizes:
        return None
    result = tuple(sorted({int(size) for size in sizes}))
    if result[0] < 1:
        raise ValueError(f"instance {instance!r} declares a batch size below 1: {list(sizes)}")
    return result
