"""The classify methods both transports offer, written once over each client's ``_classify_call``.

A client class provides ``_classify_call(images: list[bytes], top_k, model, version, deadline)``
(one request, answered as a ClassifyResult) and a ``timeout`` attribute; these mixins give it the
public ``classify`` / ``classify_batch`` / ``classify_many`` with identical semantics for gRPC and
HTTP, blocking or asyncio.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from clients.payload import ImageLike, to_bytes
from clients.types import ClassifyResult, ImageResult, merge

DEFAULT_BATCH = 16  # images per request in classify_many (the server allows 64 by default)


class _ClassifyHelpers:
    timeout: float | None

    def _deadline(self, timeout: float | None) -> float | None:
        timeout = self.timeout if timeout is None else timeout
        return None if timeout is None else time.monotonic() + timeout

    @staticmethod
    def _chunks(images: Sequence[bytes], batch_size: int) -> list[Sequence[bytes]]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return [images[i : i + batch_size] for i in range(0, len(images), batch_size)]

    @staticmethod
    def _all_bytes(images: Sequence[ImageLike]) -> list[bytes]:
        data = [to_bytes(image) for image in images]
        if not data:
            raise ValueError("no images to classify")
        return data


class SyncClassifyMethods(_ClassifyHelpers):
    """Blocking classify methods."""

    def _classify_call(self, images: Sequence[bytes], top_k: int | None, model: str | None,
                       version: Any, deadline: float | None) -> ClassifyResult:
        raise NotImplementedError

    def classify(
        self, image: ImageLike, *, top_k: int | None = None, model: str | None = None,
        version: str | int | None = None, timeout: float | None = None,
    ) -> ImageResult:
        """Top-k predictions for one image."""
        return self._classify_call([to_bytes(image)], top_k, model, version, self._deadline(timeout))[0]

    def classify_batch(
        self, images: Sequence[ImageLike], *, top_k: int | None = None, model: str | None = None,
        version: str | int | None = None, timeout: float | None = None,
    ) -> ClassifyResult:
        """Top-k predictions for each image, in order, from ONE request (the server limits how many
        images a request may hold: 64 by default)."""
        return self._classify_call(self._all_bytes(images), top_k, model, version, self._deadline(timeout))

    def classify_many(
        self, images: Sequence[ImageLike], *, top_k: int | None = None, model: str | None = None,
        version: str | int | None = None, timeout: float | None = None, batch_size: int = DEFAULT_BATCH,
    ) -> ClassifyResult:
        """Top-k predictions for each image, in order; requests of up to ``batch_size`` images, one
        after another; ``timeout`` bounds each request."""
        return merge([
            self._classify_call(chunk, top_k, model, version, self._deadline(timeout))
            for chunk in self._chunks(self._all_bytes(images), batch_size)
        ])


class AsyncClassifyMethods(_ClassifyHelpers):
    """asyncio classify methods; ``classify_many`` sends its requests concurrently."""

    async def _classify_call(self, images: Sequence[bytes], top_k: int | None, model: str | None,
                             version: Any, deadline: float | None) -> ClassifyResult:
        raise NotImplementedError

    async def classify(
        self, image: ImageLike, *, top_k: int | None = None, model: str | None = None,
        version: str | int | None = None, timeout: float | None = None,
    ) -> ImageResult:
        """Top-k predictions for one image."""
        result = await self._classify_call([to_bytes(image)], top_k, model, version, self._deadline(timeout))
        return result[0]

    async def classify_batch(
        self, images: Sequence[ImageLike], *, top_k: int | None = None, model: str | None = None,
        version: str | int | None = None, timeout: float | None = None,
    ) -> ClassifyResult:
        """Top-k predictions for each image, in order, from ONE request."""
        data = self._all_bytes(images)
        return await self._classify_call(data, top_k, model, version, self._deadline(timeout))

    async def classify_many(
        self, images: Sequence[ImageLike], *, top_k: int | None = None, model: str | None = None,
        version: str | int | None = None, timeout: float | None = None, batch_size: int = DEFAULT_BATCH,
        concurrency: int = 4,
    ) -> ClassifyResult:
        """Top-k predictions for each image, in order (requests of up to ``batch_size`` images, at
        most ``concurrency`` at a time)."""
        chunks = self._chunks(self._all_bytes(images), batch_size)
        slots = asyncio.Semaphore(max(1, concurrency))

        async def one(chunk: Sequence[bytes]) -> ClassifyResult:
            async with slots:
                return await self._classify_call(chunk, top_k, model, version, self._deadline(timeout))

        return merge(list(await asyncio.gather(*(one(c) for c in chunks))))
