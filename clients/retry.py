"""Retries with exponential backoff and jitter, shared by the HTTP and gRPC clients.

Only :class:`~clients.errors.UnavailableError` (HTTP 503, gRPC UNAVAILABLE, a server that cannot be
reached) is retried; every other error is the request's own fault or a real failure and is raised at
once. The delay before retry ``n`` (1-based) is "full jitter" (AWS architecture blog): uniform in
``[0, min(max_backoff, initial_backoff * multiplier**(n-1))]``, but never less than the server's
``Retry-After`` / pushback hint. The whole call, retries included, stays inside its deadline: a retry
whose delay would end past the deadline is not made and the last error is raised.

Why not the libraries' own retries: httpx retries only failed connections, never an answer's status;
gRPC's built-in retry policy (service config) is per channel, caps attempts at 5 and would give the two
clients different semantics. One small policy keeps them identical and observable (``on_retry``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from clients.errors import ClientError, QueueFullError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` counts the first try (1 = never retry)."""

    max_attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    honour_retry_after: bool = True
    on_retry: Callable[[int, ClientError, float], None] | None = None  # (attempt just failed, error, delay)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")

    def delay(self, attempt: int, error: ClientError, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        wait = (rng or random).uniform(0.0, cap)
        if self.honour_retry_after and isinstance(error, QueueFullError) and error.retry_after is not None:
            wait = max(wait, error.retry_after)
        return wait


NO_RETRY = RetryPolicy(max_attempts=1)


def _next_delay(
    policy: RetryPolicy, attempt: int, error: ClientError, deadline: float | None
) -> float | None:
    """The delay before the next attempt, or None when the error must be raised."""
    if not error.retryable or attempt >= policy.max_attempts:
        return None
    wait = policy.delay(attempt, error)
    if deadline is not None and time.monotonic() + wait >= deadline:
        return None
    log.debug("attempt %d failed (%s); retrying in %.3f s", attempt, error.kind, wait)
    if policy.on_retry is not None:
        policy.on_retry(attempt, error, wait)
    return wait


def call_with_retry(policy: RetryPolicy, deadline: float | None, attempt_fn: Callable[[], T]) -> T:
    """Run ``attempt_fn`` until it succeeds or fails for good (see the module docstring).
    ``deadline`` is a ``time.monotonic()`` value or None."""
    attempt = 1
    while True:
        try:
            return attempt_fn()
        except ClientError as error:
            wait = _next_delay(policy, attempt, error, deadline)
            if wait is None:
                raise
        time.sleep(wait)
        attempt += 1


async def acall_with_retry(
    policy: RetryPolicy, deadline: float | None, attempt_fn: Callable[[], Awaitable[T]]
) -> T:
    """The asyncio form of :func:`call_with_retry`."""
    attempt = 1
    while True:
        try:
            return await attempt_fn()
        except ClientError as error:
            wait = _next_delay(policy, attempt, error, deadline)
            if wait is None:
                raise
        await asyncio.sleep(wait)
        attempt += 1
