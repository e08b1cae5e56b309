"""Request decoding off the event loop, in one bounded pool.

Parsing a request body (JSON, base64, the OIP binary extension, gzip) or a gRPC message's tensors
(length-prefixed BYTES elements, typed contents) is CPU work proportional to the body: megabytes of it
take tens of milliseconds to seconds of Python, which on the event loop would stall every other
request and the health endpoints with it. :class:`Offloader` runs such work in its own small thread
pool, separate from the image preprocessing pool (a large body never delays decoding of images
already admitted). At most ``workers`` decodes run at once and at most ``4 × workers`` wait; more
callers wait their turn without holding a thread. Admission checks (counts, declared shapes, sizes)
happen before anything is handed here, so what reaches the pool is work the server accepted.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
QUEUE_PER_WORKER = 4


class Offloader:
    """A bounded thread pool for request decoding (see the module docstring)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"decode workers must be >= 1, got {workers}")
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        self._slots: asyncio.Semaphore | None = None  # created in the running loop

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in the pool; its exception propagates as it is."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers * QUEUE_PER_WORKER)
        async with self._slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
