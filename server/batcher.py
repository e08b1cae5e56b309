"""Dynamic batching for one model: a bounded queue of images in front of N model instances.

Protocol-free (MLServer's "batching wraps the model"): front ends call :meth:`Batcher.reserve` as soon
as a request arrives (queue full, shutting down or too many images are refused right there, before any
decoding work), preprocess the images for ``reservation.version``, then ``await
reservation.infer(arrays)``. :meth:`Batcher.infer` does both steps for callers with ready arrays.

How a batch forms. Images wait in FIFO order. Whenever an instance is free and images wait, a batch of
up to ``max_batch_size`` images goes to the first free instance — at once when ``max_queue_delay_ms``
is 0, otherwise when the batch is full or the oldest image has waited ``max_queue_delay_ms``. While
images that would join the batch are still being decoded (reserved, not yet queued), a free instance
waits for them up to ``preprocess_wait_ms`` after the oldest queued image, so a closed loop of
clients gets whole batches instead of one image now and the rest a batch later; a lone request never
waits (nothing else is being decoded). With
static batch sizes (the instance's ``fixed_batch_sizes``, else ``preferred_batch_sizes``) the batch is
zero-padded up to the next allowed size and the padding rows' outputs are dropped. Every image's output
goes back to the future of the request that sent it; an instance that fails (or returns the wrong number
of outputs) fails exactly the requests in that batch. A batch whose worker died or hung (the
instance's fault, not the batch's) runs once more, on a ready sibling or on the restarted worker,
while its requests' deadlines allow: a worker crash costs latency, not errors. Free instances that
are restarting are passed over while a ready one exists; when none is ready, the batch goes to a
restarting one, which waits for its worker no longer than the batch's earliest deadline.

Deadlines and cancellation. Every image carries its request's deadline (a ``time.monotonic()`` value).
An image whose deadline passes while queued is removed and its request fails with DEADLINE_EXCEEDED;
an image whose request was cancelled (client went away: the awaiting task is cancelled) is removed as
well. Neither reaches a model instance; both are counted in ``ddrnet_dropped_total``.

Hot reload. :meth:`Batcher.replace_instances` starts a new *generation* (instance set + version): new
reservations go to it at once, while images reserved for the old version are still run by the old
instances (a batch never mixes versions, so the image was preprocessed by the transform of the version
that runs it, and the response names that version). The old instances are returned once their queue,
their pending reservations and their in-flight batches are done. Nothing is dropped.

Shutdown. :meth:`Batcher.drain` refuses new reservations (UNAVAILABLE), then finishes everything
already accepted, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field

import numpy as np

from server import batch_assembly, tracing
from server.errors import ErrorKind, ServingError
from server.instance import ModelInstance, fixed_batch_sizes
from server.metrics import ServerMetrics
from server.tracing import Tracing

log = logging.getLogger(__name__)

_EWMA_WEIGHT = 0.2  # weight of the newest batch in the per-image inference time estimate
READY_POLL_S = 0.05  # how often a queue whose instances are all restarting looks again
#: Failures of the instance rather than the batch: the batch runs once more (inference is idempotent).
RETRYABLE = ("worker_died", "worker_timeout")


def _ready(instance: ModelInstance) -> bool:
    return bool(getattr(instance, "ready", True))


def _takes_deadline(instance: ModelInstance) -> bool:
    try:
        return "deadline" in inspect.signature(instance.infer).parameters
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class BatcherConfig:
    """Batching settings of one model (validated here, with the offending value in the message)."""

    max_batch_size: int = 8
    max_queue_delay_ms: float = 0.0
    preprocess_wait_ms: float = 0.0  # wait for images being decoded that would join a free batch
    max_queue_size: int = 256  # images reserved or queued (not yet running) at once
    preferred_batch_sizes: tuple[int, ...] = ()  # static sizes; batches are padded up to one
    default_timeout_s: float | None = 30.0  # deadline of requests that bring none
    dtype: str = "float32"  # batch element type (items are cast into it)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")
        if self.preprocess_wait_ms < 0:
            raise ValueError(f"preprocess_wait_ms must be >= 0, got {self.preprocess_wait_ms}")
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        if any(size < 1 for size in self.preferred_batch_sizes):
            raise ValueError(f"preferred_batch_sizes must be >= 1, got {list(self.preferred_batch_sizes)}")
        if self.default_timeout_s is not None and self.default_timeout_s <= 0:
            raise ValueError(f"default_timeout_s must be > 0, got {self.default_timeout_s}")
        np.dtype(self.dtype)  # raises TypeError naming the bad dtype


@dataclass(frozen=True)
class InferenceResult:
    """Outputs of one request (one row per image, request order) and the version that computed them."""

    outputs: list[np.ndarray]
    version: str


@dataclass(eq=False)
class _Item:
    array: np.ndarray
    future: asyncio.Future
    deadline: float
    enqueued: float
    key: int
    timer: asyncio.TimerHandle | None = None
    trace: object | None = None  # the request's trace context (tracing on, span sampled)
    enqueued_ns: int = 0  # wall clock, for the queue span


def _cancel_reason(item: _Item, now: float) -> str:
    """Why a cancelled request left the queue. A gRPC call whose deadline passes is cancelled by grpc
    at the same moment the item's own deadline timer is due; whichever the event loop runs first, it
    is a deadline expiry."""
    return "deadline" if now >= item.deadline else "cancelled"


@dataclass(eq=False)
class _Generation:
    """One instance set and the version it serves, with its own queue and scheduling loop."""

    version: str
    instances: list[ModelInstance]
    allowed_sizes: tuple[int, ...] | None
    max_items: int
    item_shape: tuple[int, ...] | None
    idle: deque = field(default_factory=deque)
    queue: OrderedDict = field(default_factory=OrderedDict)  # key -> _Item, FIFO; O(1) removal
    running: set = field(default_factory=set)  # batch tasks
    pins: int = 0  # open reservations
    preparing: int = 0  # images reserved for this generation and not queued yet (being decoded)
    retired: bool = False  # replaced: finishes its work, then ends
    aborted: bool = False  # drain timed out: accepts no more items
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    loop_task: asyncio.Task | None = None

    def idle_and_empty(self) -> bool:
        return not self.queue and not self.running and (self.pins == 0 or self.aborted)


class Reservation:
    """Room for ``count`` images in a model's queue, held while the request is being preprocessed.

    Use as a context manager (``with batcher.reserve(n) as r: ... await r.infer(arrays)``); leaving it
    returns any room not used. ``version`` is the model version that will run these images.
    """

    def __init__(self, batcher: Batcher, generation: _Generation, count: int, deadline: float):
        self._batcher = batcher
        self._generation = generation
        self._unused = count
        self.deadline = deadline
        self._released = False

    @property
    def version(self) -> str:
        return self._generation.version

    @property
    def item_shape(self) -> tuple[int, ...] | None:
        """Shape of one image the version's instances take, once known (None until then)."""
        return self._generation.item_shape

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        """Give back unused room and unpin the generation (idempotent)."""
        if self._released:
            return
        self._released = True
        self._batcher._give_back(self._unused)
        self._generation.preparing -= self._unused
        self._unused = 0
        self._generation.pins -= 1
        self._generation.wake.set()

    async def infer(self, items: Sequence[np.ndarray]) -> InferenceResult:
        """Queue ``items`` (at most the reserved count), wait for their outputs.

        Raises ServingError: INVALID_ARGUMENT (item shape differs from the model input),
        DEADLINE_EXCEEDED, INTERNAL / UNAVAILABLE (the batch failed). Cancelling the awaiting task
        removes the still-queued items from the queue.
        """
        if self._released:
            raise RuntimeError("reservation already released")
        if not items:
            raise ServingError(ErrorKind.INVALID_ARGUMENT, "request has no images")
        if len(items) > self._unused:
            raise RuntimeError(f"{len(items)} items for a reservation of {self._unused}")
        futures: list[asyncio.Future] = []
        try:
            futures = self._batcher._enqueue(self, items)
            await asyncio.wait(futures, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for future in futures:
                if not future.done():  # cancelled, or a sibling failed: leave the queue
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # mark retrieved: no "exception was never retrieved" logs
            self.release()
        for future in futures:
            if not future.cancelled() and future.exception() is not None:
                raise future.exception()
        return InferenceResult([future.result() for future in futures], self.version)

    def _take(self, count: int) -> None:
        self._unused -= count
        self._generation.preparing -= count


class Batcher:
    """Dynamic batcher of one model over a set of :class:`~server.instance.ModelInstance` objects.

    Create it inside a running event loop. ``item_shape`` (e.g. ``(3, 224, 224)``) is the shape of
    one image tensor; when None, the first image queued fixes it. Images of another shape are refused
    with INVALID_ARGUMENT at :meth:`Reservation.infer`, so they never fail a shared batch.
    """

    def __init__(
        self,
        model: str,
        instances: Sequence[ModelInstance],
        *,
        version: str,
        config: BatcherConfig | None = None,
        metrics: ServerMetrics | None = None,
        item_shape: Sequence[int] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.model = model
        self._tracing = tracing
        self.config = config or BatcherConfig()
        self._metrics = metrics
        self._dtype = np.dtype(self.config.dtype)
        self._held = 0  # images reserved or queued, not yet handed to an instance
        self._closing = False
        self._keys = itertools.count()
        self._item_seconds: float | None = None  # EWMA of inference time per image
        self._generations: list[_Generation] = []
        self._current = self._start_generation(instances, version, item_shape)

    # -- public API -------------------------------------------------------------------------------

    @property
    def version(self) -> str:
        """The version new reservations go to."""
        return self._current.version

    @property
    def queue_depth(self) -> int:
        """Images waiting in the queue (all generations)."""
        return sum(len(g.queue) for g in self._generations)

    @property
    def accepting(self) -> bool:
        return not self._closing

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """Batch sizes the current instances may be given (to warm up each one before serving)."""
        gen = self._current
        if gen.allowed_sizes:
            return tuple(s for s in gen.allowed_sizes if s >= 1)
        return tuple(range(1, gen.max_items + 1))

    def reserve(self, count: int, *, deadline: float | None = None) -> Reservation:
        """Hold room for ``count`` images or refuse at once.

        ``deadline`` is a ``time.monotonic()`` instant (default: now + ``default_timeout_s``).
        Raises ServingError: UNAVAILABLE (draining), PAYLOAD_TOO_LARGE (more images than the queue
        holds), QUEUE_FULL (with ``retry_after_s``).
        """
        if self._closing:
            self._count_rejected("shutting_down")
            raise ServingError(
                ErrorKind.UNAVAILABLE, f"model {self.model} is shutting down", reason="shutting_down"
            )
        limit = self.config.max_queue_size
        if count > limit:
            raise ServingError(
                ErrorKind.PAYLOAD_TOO_LARGE,
                f"request has {count} images; model {self.model} queues at most {limit}",
                reason="too_many_images",
            )
        if count < 1:
            raise ServingError(ErrorKind.INVALID_ARGUMENT, "request has no images")
        if self._held + count > limit:
            self._count_rejected("queue_full")
            raise ServingError(
                ErrorKind.QUEUE_FULL,
                f"model {self.model} queue is full ({self._held} of {limit} images waiting)",
                retry_after_s=self._retry_after(),
            )
        if deadline is None:
            timeout = self.config.default_timeout_s
            deadline = math.inf if timeout is None else time.monotonic() + timeout
        self._held += count
        self._current.pins += 1
        self._current.preparing += count
        return Reservation(self, self._current, count, deadline)

    async def infer(self, items: Sequence[np.ndarray], *, deadline: float | None = None) -> InferenceResult:
        """Reserve room for ``items`` and run them (for callers whose arrays are ready)."""
        with self.reserve(len(items), deadline=deadline) as reservation:
            return await reservation.infer(items)

    def switch(
        self, instances: Sequence[ModelInstance], *, version: str, item_shape: Sequence[int] | None = None
    ) -> Awaitable[list[ModelInstance]]:
        """Switch to a new instance set serving ``version`` now; the returned awaitable gives the old
        instances back once idle. Synchronous up to the switch: when it raises (shutting down,
        instances that disagree), nothing changed and the old instances keep serving.

        New reservations use the new instances immediately. Work already reserved for the old
        version (queued, being preprocessed, or running) is finished by the old instances; only
        then are they returned, for the caller to shut down. No request fails or is dropped.
        """
        if self._closing:
            raise ServingError(ErrorKind.UNAVAILABLE, f"model {self.model} is shutting down")
        old = self._current
        self._current = self._start_generation(instances, version, item_shape)
        old.retired = True
        old.wake.set()

        async def old_instances() -> list[ModelInstance]:
            await old.finished.wait()
            log.info("model %s: version %s replaced by %s", self.model, old.version, version)
            return old.instances

        return old_instances()

    async def replace_instances(
        self, instances: Sequence[ModelInstance], *, version: str, item_shape: Sequence[int] | None = None
    ) -> list[ModelInstance]:
        """:meth:`switch`, then wait for the old instances."""
        return await self.switch(instances, version=version, item_shape=item_shape)

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Stop accepting (UNAVAILABLE), finish all accepted work, stop. True if all finished in time.

        On timeout the images still queued fail with UNAVAILABLE and running batches are cancelled
        (their requests fail with UNAVAILABLE too).
        """
        self._closing = True
        for gen in self._generations:
            gen.wake.set()  # skip max_queue_delay waits
        waits = [asyncio.ensure_future(gen.finished.wait()) for gen in list(self._generations)]
        if not waits:
            return True
        _, pending = await asyncio.wait(waits, timeout=timeout_s)
        if not pending:
            return True
        for waiter in pending:
            waiter.cancel()
        for gen in list(self._generations):
            self._abort_generation(gen)
        for gen in list(self._generations):
            await gen.finished.wait()
        return False

    # -- admission and queueing -------------------------------------------------------------------

    def _enqueue(self, reservation: Reservation, items: Sequence[np.ndarray]) -> list[asyncio.Future]:
        gen = reservation._generation
        if gen.aborted:
            raise ServingError(ErrorKind.UNAVAILABLE, f"model {self.model} shut down before this request ran")
        arrays = [np.asarray(item) for item in items]
        shape = gen.item_shape or arrays[0].shape
        for index, array in enumerate(arrays):
            if array.shape != shape:
                raise ServingError(
                    ErrorKind.INVALID_ARGUMENT,
                    f"image {index} has tensor shape {list(array.shape)}; model {self.model} "
                    f"version {gen.version} takes {list(shape)}",
                )
        now = time.monotonic()
        if reservation.deadline <= now:
            self._count_dropped("deadline", len(arrays))
            raise ServingError(ErrorKind.DEADLINE_EXCEEDED, self._deadline_message(), reason="deadline")
        gen.item_shape = tuple(shape)
        loop = asyncio.get_running_loop()
        futures = []
        trace = self._tracing.current() if self._tracing is not None else None
        enqueued_ns = tracing.now_ns() if trace is not None else 0
        for array in arrays:
            item = _Item(array, loop.create_future(), reservation.deadline, now, next(self._keys),
                         trace=trace, enqueued_ns=enqueued_ns)
            if math.isfinite(item.deadline):
                item.timer = loop.call_later(item.deadline - now, self._expire, gen, item.key)
            item.future.add_done_callback(lambda fut, gen=gen, key=item.key: self._on_done(gen, key, fut))
            gen.queue[item.key] = item
            futures.append(item.future)
        reservation._take(len(arrays))
        self._update_depth()
        gen.wake.set()
        return futures

    def _expire(self, gen: _Generation, key: int) -> None:
        item = gen.queue.pop(key, None)
        if item is None:  # already dispatched
            return
        self._leave_queue(1)
        self._count_dropped("deadline", 1)
        item.future.set_exception(
            ServingError(ErrorKind.DEADLINE_EXCEEDED, self._deadline_message(), reason="deadline")
        )
        gen.wake.set()

    def _on_done(self, gen: _Generation, key: int, future: asyncio.Future) -> None:
        if not future.cancelled():
            return
        item = gen.queue.pop(key, None)
        if item is None:  # cancelled while its batch ran: the output is simply discarded
            return
        if item.timer is not None:
            item.timer.cancel()
        self._leave_queue(1)
        self._count_dropped(_cancel_reason(item, time.monotonic()), 1)
        gen.wake.set()

    def _give_back(self, count: int) -> None:
        self._held -= count

    def _leave_queue(self, count: int) -> None:
        self._held -= count
        self._update_depth()

    def _retry_after(self) -> float:
        per_image = self._item_seconds if self._item_seconds is not None else 1.0
        return max(0.001, self._held * per_image / max(1, len(self._current.instances)))

    def _deadline_message(self) -> str:
        return f"request deadline passed while waiting for model {self.model}"

    # -- scheduling -------------------------------------------------------------------------------

    def _start_generation(
        self, instances: Sequence[ModelInstance], version: str, item_shape: Sequence[int] | None
    ) -> _Generation:
        instances = list(instances)
        if not instances:
            raise ValueError(f"model {self.model} version {version}: no instances given")
        declared = {fixed_batch_sizes(instance) for instance in instances}
        if len(declared) > 1:
            raise ValueError(f"model {self.model} instances disagree on fixed batch sizes: {declared}")
        allowed = batch_assembly.allowed_batch_sizes(declared.pop(), self.config.preferred_batch_sizes)
        gen = _Generation(
            version=str(version),
            instances=instances,
            allowed_sizes=allowed,
            max_items=batch_assembly.max_items_per_batch(self.config.max_batch_size, allowed),
            item_shape=tuple(item_shape) if item_shape is not None else None,
        )
        gen.idle.extend(instances)
        self._generations.append(gen)
        gen.loop_task = asyncio.get_running_loop().create_task(self._schedule(gen))
        return gen

    def _generation_done(self, gen: _Generation) -> bool:
        return gen.idle_and_empty() and (gen.retired or self._closing)

    async def _schedule(self, gen: _Generation) -> None:
        delay = self.config.max_queue_delay_ms / 1000.0
        preprocess_wait = self.config.preprocess_wait_ms / 1000.0
        try:
            while not self._generation_done(gen):
                gen.wake.clear()
                if gen.queue and gen.idle and not self._usable_idle(gen):
                    # Only restarting instances are free while a ready one is busy: wait for either.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(gen.wake.wait(), READY_POLL_S)
                    continue
                if gen.queue and gen.idle:
                    wait = 0.0
                    limit = max(delay, preprocess_wait if gen.preparing > 0 else 0.0)
                    if limit > 0 and len(gen.queue) < gen.max_items and not (gen.retired or self._closing):
                        oldest = next(iter(gen.queue.values()))
                        wait = oldest.enqueued + limit - time.monotonic()
                    if wait <= 0:
                        self._dispatch(gen)
                        continue
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(gen.wake.wait(), wait)
                    continue
                await gen.wake.wait()
        finally:
            self._generations.remove(gen)
            gen.finished.set()

    def _dispatch(self, gen: _Generation) -> None:
        now = time.monotonic()
        batch: list[_Item] = []
        while gen.queue and len(batch) < gen.max_items:
            _, item = gen.queue.popitem(last=False)
            self._leave_queue(1)
            if item.timer is not None:
                item.timer.cancel()
            if item.future.done():  # cancelled; its done-callback has not run yet
                self._count_dropped(_cancel_reason(item, now), 1)
                continue
            if item.deadline <= now:  # expired; its timer has not fired yet
                self._count_dropped("deadline", 1)
                item.future.set_exception(
                    ServingError(ErrorKind.DEADLINE_EXCEEDED, self._deadline_message(), reason="deadline")
                )
                continue
            batch.append(item)
        if not batch:
            return
        if self._metrics is not None:
            histogram = self._metrics.queue_duration.labels(self.model, gen.version)
            for item in batch:
                histogram.observe(now - item.enqueued)
        instance = self._take_instance(gen)
        task = asyncio.get_running_loop().create_task(self._run_batch(gen, instance, batch))
        gen.running.add(task)

    @staticmethod
    def _usable_idle(gen: _Generation) -> bool:
        """Whether a free instance should get the next batch: a ready one, or a restarting one when no
        instance of the generation is ready (it waits for its worker within the batch's deadline)."""
        return any(_ready(i) for i in gen.idle) or not any(_ready(i) for i in gen.instances)

    @staticmethod
    def _take_instance(gen: _Generation) -> ModelInstance:
        for instance in gen.idle:
            if _ready(instance):
                gen.idle.remove(instance)
                return instance
        return gen.idle.popleft()

    @staticmethod
    def _worth_retrying(batch: list[_Item], err: ServingError) -> list[_Item] | None:
        """The items of a failed batch to run once more: those whose clients still wait, when the
        instance (not the batch) failed and their deadlines leave time; None when there are none."""
        if err.reason not in RETRYABLE:
            return None
        waiting = [item for item in batch if not item.future.done()]
        if not waiting or min(item.deadline for item in waiting) <= time.monotonic():
            return None
        return waiting

    @staticmethod
    def _take_ready_sibling(gen: _Generation) -> ModelInstance | None:
        for instance in gen.idle:
            if _ready(instance):
                gen.idle.remove(instance)
                return instance
        return None

    async def _infer_once(
        self, gen: _Generation, instance: ModelInstance, batch: list[_Item], size: int
    ) -> tuple[np.ndarray, float]:
        buffer = getattr(instance, "batch_buffer", None) or batch_assembly.default_buffer
        arrays = [item.array for item in batch]
        inputs = batch_assembly.assemble(arrays, size, gen.item_shape, self._dtype, buffer)
        started = time.monotonic()
        if _takes_deadline(instance):  # a restarting instance waits no longer than its requests may
            outputs = await instance.infer(inputs, deadline=min(item.deadline for item in batch))
        else:
            outputs = await instance.infer(inputs)
        return outputs, time.monotonic() - started

    async def _run_batch(self, gen: _Generation, instance: ModelInstance, batch: list[_Item]) -> None:
        count = len(batch)
        size = batch_assembly.padded_size(count, gen.allowed_sizes)
        traced = self._tracing is not None and any(item.trace is not None for item in batch)
        started_ns = tracing.now_ns() if traced else 0
        failure: str | None = None
        try:
            try:
                outputs, elapsed = await self._infer_once(gen, instance, batch, size)
            except ServingError as err:
                waiting = self._worth_retrying(batch, err)
                if waiting is None:
                    raise
                batch, count = waiting, len(waiting)
                size = batch_assembly.padded_size(count, gen.allowed_sizes)
                # The instance failed, not the batch: once more, on a ready sibling if one is free, else
                # on the same instance once its worker is back (within the requests' deadlines).
                sibling = self._take_ready_sibling(gen)
                if sibling is not None:
                    gen.idle.append(instance)  # restarting: the scheduler passes it over until ready
                    instance = sibling
                log.warning("model %s version %s: batch of %d lost its worker (%s); running it again on %s",
                            self.model, gen.version, count, err.reason,
                            "a sibling instance" if sibling is not None else "the restarted worker")
                self._count_retry(err.reason)
                outputs, elapsed = await self._infer_once(gen, instance, batch, size)
            rows = batch_assembly.split_outputs(outputs, count, size)
        except asyncio.CancelledError:
            self._fail(batch, ServingError(ErrorKind.UNAVAILABLE, f"model {self.model} shut down mid-batch"))
            raise
        except ServingError as err:
            log.warning("model %s version %s: batch of %d failed: %s", self.model, gen.version, count, err)
            failure = str(err)
            self._fail(batch, err)
        except Exception as exc:
            log.exception("model %s version %s: batch of %d failed", self.model, gen.version, count)
            failure = f"{type(exc).__name__}: {exc}"
            self._fail(
                batch,
                ServingError(
                    ErrorKind.INTERNAL,
                    f"model {self.model} failed on a batch of {count}: {type(exc).__name__}: {exc}",
                    reason="runtime_error",
                ),
            )
        else:
            for item, row in zip(batch, rows, strict=True):
                if not item.future.done():
                    item.future.set_result(row)
            self._record_batch(gen, count, size, elapsed)
        finally:
            gen.running.discard(asyncio.current_task())
            gen.idle.append(instance)
            gen.wake.set()
            if traced:
                self._trace_batch(gen, instance, batch, size, started_ns, failure)

    def _fail(self, batch: list[_Item], err: ServingError) -> None:
        for item in batch:  # one exception object per request: each gets its own traceback
            if not item.future.done():
                item.future.set_exception(
                    ServingError(err.kind, err.message, reason=err.reason, retry_after_s=err.retry_after_s)
                )

    def _abort_generation(self, gen: _Generation) -> None:
        """Drain timeout: fail what is queued, cancel what runs."""
        err = ServingError(ErrorKind.UNAVAILABLE, f"model {self.model} shut down before this request ran")
        while gen.queue:
            _, item = gen.queue.popitem(last=False)
            self._leave_queue(1)
            if item.timer is not None:
                item.timer.cancel()
            if not item.future.done():
                item.future.set_exception(err)
        for task in list(gen.running):
            task.cancel()
        gen.aborted = True  # open reservations' infer() now fails with UNAVAILABLE
        gen.wake.set()

    def _trace_batch(self, gen: _Generation, instance: ModelInstance, batch: list[_Item], size: int,
                     started_ns: int, failure: str | None) -> None:
        parents: dict[int, tuple[object, int]] = {}  # one entry per request (its items share a context)
        for item in batch:
            if item.trace is not None:
                parents.setdefault(id(item.trace), (item.trace, item.enqueued_ns))
        attributes = {
            "ddrnet.model": self.model, "ddrnet.version": gen.version, "ddrnet.batch_size": len(batch),
            "ddrnet.padded_batch_size": size, "ddrnet.instance": str(getattr(instance, "name", "")),
            "ddrnet.runtime": str(getattr(instance, "runtime", "")),
        }
        assert self._tracing is not None
        self._tracing.record_batch(list(parents.values()), started_ns=started_ns, ended_ns=tracing.now_ns(),
                                   attributes=attributes, error=failure)

    # -- metrics ----------------------------------------------------------------------------------

    def _record_batch(self, gen: _Generation, count: int, size: int, elapsed: float) -> None:
        per_image = elapsed / count
        if self._item_seconds is None:
            self._item_seconds = per_image
        else:
            self._item_seconds += _EWMA_WEIGHT * (per_image - self._item_seconds)
        if self._metrics is not None:
            self._metrics.inference_duration.labels(self.model, gen.version).observe(elapsed)
            self._metrics.batch_size.labels(self.model, gen.version).observe(count)
            if size > count:
                self._metrics.padded_items_total.labels(self.model, gen.version).inc(size - count)

    def _update_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.set_queue_depth(self.model, self, self.queue_depth)

    def _count_retry(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.batch_retries_total.labels(self.model, reason).inc()

    def _count_dropped(self, reason: str, count: int) -> None:
        if self._metrics is not None:
            self._metrics.dropped_total.labels(self.model, reason).inc(count)

    def _count_rejected(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.rejected_total.labels(self.model, reason).inc()
