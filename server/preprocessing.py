"""Request images → model input, off the event loop: decode + the version's own eval transform.

The transform of a model version is built from its ``model.json`` (``EvalTransform.for_manifest``),
never hard-coded, with the server's pixel limit (checked on the declared size, before decoding: image
bombs never allocate). :class:`Preprocessor` runs one pool task per image on ``preprocess_workers``
threads (Pillow releases the GIL while decoding and resampling, so images of one request and of
concurrent requests are transformed in parallel, and in parallel with inference in the worker
processes). Each image is written straight into its row of the request's float32 ``[N, 3, S, S]``
array by :meth:`EvalTransform.transform_into`; the batcher then copies each row once into the
instance's shared-memory batch (the batch is only composed after preprocessing, so that one copy is
the least possible).

Memory: every image reserves what it will need (mode-aware, from its header) in a :class:`DecodeBudget`
before its pixels are decoded, so the images decoded at once never hold more than
``max_decode_memory_bytes`` between them; 16-bit and float images are reduced by Pillow's own
conversions (``model.preprocess``), without whole-image numpy temporaries; and freed image blocks go
back to the system (``server/allocator.py``), so the budget bounds the process's memory too.

Errors come back as :class:`~server.errors.ServingError` naming the image (``image 2: ...``) with the
kind from ``model.preprocess``'s error reasons (400 / 413 / 415), or UNAVAILABLE (503) when the budget
had no room in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from model.preprocess import EvalTransform, ImageError, ImageTooLargeError
from server.allocator import return_large_blocks_to_the_system
from server.errors import ErrorKind, ServingError, from_exception

log = logging.getLogger(__name__)

BUDGET_WAIT_S = 5.0  # the longest an image waits for room in the decode budget before a 503


class DecodeBudget:
    """Bytes the images being decoded may hold at once, across the decode threads.

    Each image reserves its :meth:`EvalTransform.decode_cost` (read from its header, before a pixel is
    decoded) for the time it is decoded, converted and resized. An image whose cost alone exceeds the
    budget is refused (PAYLOAD_TOO_LARGE, 413); one that does not fit beside the images in progress
    waits, at most ``wait_s`` and never past its request's deadline, then is UNAVAILABLE (503 with
    Retry-After). So a burst of large images slows down instead of running the process out of memory.
    """

    def __init__(self, total_bytes: int, wait_s: float = BUDGET_WAIT_S) -> None:
        if total_bytes < 1:
            raise ValueError(f"decode memory budget must be >= 1 byte, got {total_bytes}")
        self.total = total_bytes
        self.wait_s = wait_s
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, nbytes: int, deadline: float | None = None) -> Iterator[None]:
        if nbytes > self.total:
            raise ImageTooLargeError(
                f"image needs about {_mib(nbytes)} MiB to decode, more than the server's decode memory "
                f"budget of {_mib(self.total)} MiB", "too_much_memory",
            )
        give_up = time.monotonic() + self.wait_s
        if deadline is not None:
            give_up = min(give_up, deadline)
        with self._cond:
            while self.in_use + nbytes > self.total:
                left = give_up - time.monotonic()
                if left <= 0:
                    raise ServingError(
                        ErrorKind.UNAVAILABLE,
                        f"the server is decoding other large images ({_mib(self.in_use)} of "
                        f"{_mib(self.total)} MiB in use); retry shortly",
                        reason="decode_memory", retry_after_s=1.0,
                    )
                self._cond.wait(left)
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= nbytes
                self._cond.notify_all()


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f}"


class Preprocessor:
    """A thread pool that turns encoded images into model input tensors, under a decode budget."""

    def __init__(self, workers: int, budget_bytes: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"preprocess workers must be >= 1, got {workers}")
        self.workers = workers
        self.budget = DecodeBudget(budget_bytes) if budget_bytes is not None else None
        if self.budget is not None:
            return_large_blocks_to_the_system()  # the budget bounds freed image blocks too (see allocator)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")

    async def run(
        self, transform: EvalTransform, images: Sequence[bytes], deadline: float | None = None
    ) -> np.ndarray:
        """Transform ``images`` into a new float32 ``[N, *transform.output_shape]`` array; an image
        waiting for room in the decode budget waits no longer than ``deadline`` (monotonic).

        Raises ServingError for the first image that fails (the others still queued are cancelled).
        Cancelling the caller cancels the images not yet started.
        """
        if not images:
            raise ServingError(ErrorKind.INVALID_ARGUMENT, "request has no images")
        out = np.empty((len(images), *transform.output_shape), dtype=np.float32)
        loop = asyncio.get_running_loop()
        budget = self.budget
        reserve = None if budget is None else (lambda nbytes: budget.hold(nbytes, deadline))
        futures = [
            loop.run_in_executor(self._pool, transform.transform_into, data, out[i], reserve)
            for i, data in enumerate(images)
        ]
        try:
            done, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()
                # Only the first failure is raised; without this, every other image that failed would
                # be logged by asyncio as "Future exception was never retrieved", with a traceback.
                future.add_done_callback(_retrieve)
        for index, future in enumerate(futures):
            if future in done and future.exception() is not None:
                raise _image_error(future.exception(), index, len(images))
        return out

    def close(self) -> None:
        """Stop the threads (pending work is cancelled)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _image_error(exc: BaseException, index: int, count: int) -> ServingError:
    if isinstance(exc, TypeError):  # not bytes: a front-end bug, but still the request's fault
        return ServingError(ErrorKind.INVALID_ARGUMENT, f"image {index}: {exc}")
    if not isinstance(exc, ImageError):
        log.error("preprocessing image %d failed unexpectedly", index, exc_info=exc)
    err = from_exception(exc)
    prefix = f"image {index}: " if count > 1 else ""
    return ServingError(err.kind, f"{prefix}{err.message}", reason=err.reason)
