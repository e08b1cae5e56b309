"""Merging request items into one batch and splitting the batch's outputs back (no asyncio here).

Copies: each item is copied exactly once, into the batch array (a fresh array, or the instance's own
buffer such as shared memory, see :mod:`server.instance`); padding rows are zero-filled; outputs are
handed back as row views of the instance's result array, never copied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from server.errors import ErrorKind, ServingError

BufferFactory = Callable[[int, tuple[int, ...], np.dtype], np.ndarray]


def allowed_batch_sizes(
    instance_sizes: Sequence[int] | None, configured_sizes: Sequence[int] | None
) -> tuple[int, ...] | None:
    """Static batch sizes in force: the instance's own (its runtime insists) over the configured ones."""
    sizes = instance_sizes or configured_sizes
    return tuple(sorted(set(sizes))) if sizes else None


def max_items_per_batch(max_batch_size: int, allowed: Sequence[int] | None) -> int:
    """Most real items one batch may carry: max_batch_size, and no more than the largest static size."""
    return min(max_batch_size, max(allowed)) if allowed else max_batch_size


def padded_size(count: int, allowed: Sequence[int] | None) -> int:
    """The batch size to run ``count`` items at: the smallest allowed size >= count (count itself
    when any size is allowed)."""
    if count < 1:
        raise ValueError(f"a batch needs at least one item, got {count}")
    if not allowed:
        return count
    for size in sorted(allowed):
        if size >= count:
            return size
    raise ValueError(f"{count} items exceed the largest static batch size {max(allowed)}")


def default_buffer(size: int, item_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.empty((size, *item_shape), dtype=dtype)


def assemble(
    items: Sequence[np.ndarray],
    size: int,
    item_shape: tuple[int, ...],
    dtype: np.dtype,
    buffer: BufferFactory = default_buffer,
) -> np.ndarray:
    """Copy ``items`` into rows ``0..len(items)-1`` of a ``(size, *item_shape)`` array from ``buffer``;
    rows past the items (padding) are zero (a reused buffer may hold an older batch there)."""
    batch = buffer(size, item_shape, dtype)
    if batch.shape != (size, *item_shape):
        raise ServingError(
            ErrorKind.INTERNAL,
            f"instance buffer has shape {batch.shape}, expected {(size, *item_shape)}",
        )
    for row, item in enumerate(items):
        np.copyto(batch[row], item, casting="same_kind")
    if size > len(items):
        batch[len(items) :] = 0
    return batch


def split_outputs(outputs: object, count: int, size: int) -> list[np.ndarray]:
    """Rows ``0..count-1`` of an instance's result for a batch of ``size`` rows (``count`` real items).

    Raises INTERNAL when the result is not an array with exactly one row per batch row: a runtime that
    returns the wrong number of outputs must fail its batch, not hand one request another's result.
    """
    if not isinstance(outputs, np.ndarray) or outputs.ndim < 1:
        raise ServingError(
            ErrorKind.INTERNAL, f"model instance returned {type(outputs).__name__}, expected an array"
        )
    if outputs.shape[0] != size:
        raise ServingError(
            ErrorKind.INTERNAL,
            f"model instance returned {outputs.shape[0]} outputs for a batch of {size} inputs",
        )
    return [outputs[row] for row in range(count)]
