"""The interface a model instance offers the batcher, and :class:`ManagedInstance`, the worker-process
client in that role.

An instance runs one batch at a time: the batcher never calls :meth:`ModelInstance.infer` on an
instance again before the previous call returned, so an instance may reuse one input buffer (e.g. a
shared-memory block its worker process reads) for every batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from inference.worker_client import WorkerInstance
from server.errors import ErrorKind, ServingError


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


READY_POLL_S = 0.05


class ManagedInstance:
    """A :class:`~inference.worker_client.WorkerInstance` as the batcher's model instance.

    While the worker is being restarted after a crash, :meth:`infer` waits (up to ``restart_wait_s``)
    for it to come back instead of failing at once, so the batcher keeps the queued requests instead
    of answering them all 503; only the batch in flight when the worker died fails.
    """

    def __init__(self, worker: WorkerInstance, restart_wait_s: float) -> None:
        self.worker = worker
        self.restart_wait_s = restart_wait_s
        self.stopping = False

    @property
    def ready(self) -> bool:
        return self.worker.ready

    @property
    def name(self) -> str:
        return self.worker.name

    @property
    def runtime(self) -> str:
        """The runtime the worker loaded (empty before its first start)."""
        return str(self.worker.describe().get("runtime") or "")

    @property
    def fixed_batch_sizes(self) -> list[int] | None:
        return self.worker.fixed_batch_sizes

    def batch_buffer(self, size: int, item_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self.worker.batch_buffer(size, item_shape, dtype)

    async def infer(self, batch: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """Run ``batch``; while the worker restarts, wait for it until ``deadline`` (the earliest
        deadline of the batch's requests, a ``time.monotonic()`` instant) or ``restart_wait_s``, whichever
        comes first."""
        if not self.worker.ready:
            cap = time.monotonic() + self.restart_wait_s
            deadline = cap if deadline is None else min(deadline, cap)
            while not self.worker.ready:
                if self.stopping or time.monotonic() >= deadline:
                    raise ServingError(
                        ErrorKind.UNAVAILABLE, f"instance {self.worker.name} is restarting",
                        reason="not_ready",
                    )
                await asyncio.sleep(READY_POLL_S)
        return await self.worker.infer(batch)

    async def start(self) -> None:
        await self.worker.start()

    async def stop(self) -> None:
        self.stopping = True
        await self.worker.stop()
