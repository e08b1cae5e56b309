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

Errors come back as :class:`~server.errors.ServingError` naming the image (``image 2: ...``) with the
kind from ``model.preprocess``'s error reasons (400 / 413 / 415).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from model.preprocess import EvalTransform, ImageError
from server.errors import ErrorKind, ServingError, from_exception

log = logging.getLogger(__name__)


class Preprocessor:
    """A thread pool that turns encoded images into model input tensors."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"preprocess workers must be >= 1, got {workers}")
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")

    async def run(self, transform: EvalTransform, images: Sequence[bytes]) -> np.ndarray:
        """Transform ``images`` into a new float32 ``[N, *transform.output_shape]`` array.

        Raises ServingError for the first image that fails (the others still queued are cancelled).
        Cancelling the caller cancels the images not yet started.
        """
        if not images:
            raise ServingError(ErrorKind.INVALID_ARGUMENT, "request has no images")
        out = np.empty((len(images), *transform.output_shape), dtype=np.float32)
        loop = asyncio.get_running_loop()
        futures = [
            loop.run_in_executor(self._pool, transform.transform_into, data, out[i])
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
