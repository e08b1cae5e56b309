"""Dynamic batcher: routing, queue limits, deadlines, cancellation, padding, failures, drain, hot swap.

Fake instances work on tiny ``(2,)`` items whose first element is a tag unique to each image, so every
output can be traced back to the image that produced it.
"""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from server import batch_assembly
from server.batcher import Batcher, BatcherConfig
from server.errors import ErrorKind, ServingError
from server.metrics import ServerMetrics

SHAPE = (2,)


def item(tag: float) -> np.ndarray:
    return np.array([tag, 1.0], dtype=np.float32)


class FakeModel:
    """Returns ``tag * 10`` per row; records batches; optionally slow, gated, failing or fixed-shape."""

    def __init__(
        self, name: str = "m", delay: float = 0.0, fixed_batch_sizes=None, poison: float | None = None
    ):
        self.name = name
        self.delay = delay
        self.fixed_batch_sizes = fixed_batch_sizes
        self.poison = poison
        self.gate: asyncio.Event | None = None  # when set up, batches wait for it
        self.started = asyncio.Event()  # set when a batch has arrived
        self.batches: list[np.ndarray] = []
        self.active = 0

    @property
    def seen_tags(self) -> list[float]:
        return [float(tag) for batch in self.batches for tag in batch[:, 0]]

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        assert self.active == 0, "the batcher gave one instance two batches at once"
        if self.fixed_batch_sizes:
            assert batch.shape[0] in self.fixed_batch_sizes, batch.shape
        self.active += 1
        try:
            self.batches.append(batch.copy())
            self.started.set()
            if self.gate is not None:
                await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay * random.random())
            if self.poison is not None and self.poison in batch[:, 0]:
                raise RuntimeError("poisoned batch")
            return batch[:, :1] * 10.0
        finally:
            self.active -= 1


def run(coro, timeout: float = 20.0):
    """Run a test coroutine with a bound, so a bug hangs no test."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def new_metrics() -> ServerMetrics:
    return ServerMetrics(CollectorRegistry())


def sample(metrics: ServerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def check(result, tags) -> None:
    assert [float(out[0]) for out in result.outputs] == [10.0 * t for t in tags]


# -- routing --------------------------------------------------------------------------------------


def test_results_go_to_the_request_that_sent_each_image() -> None:
    async def main():
        models = [FakeModel("a", delay=0.003), FakeModel("b", delay=0.003)]
        config = BatcherConfig(max_batch_size=8, max_queue_size=1000)
        batcher = Batcher("m", models, version="1", config=config)
        rng = random.Random(0)
        requests = []
        tag = 0
        for _ in range(150):
            count = rng.randint(1, 3)
            requests.append([tag + k for k in range(count)])
            tag += count

        async def client(tags):
            await asyncio.sleep(rng.random() * 0.02)
            return await batcher.infer([item(t) for t in tags])

        results = await asyncio.gather(*(client(tags) for tags in requests))
        for tags, result in zip(requests, results, strict=True):
            check(result, tags)
            assert result.version == "1"
        seen = sorted(models[0].seen_tags + models[1].seen_tags)
        assert seen == list(range(tag))  # every image ran exactly once
        assert models[0].batches and models[1].batches  # both instances took work
        assert max(len(b) for m in models for b in m.batches) > 1  # batches formed
        assert await batcher.drain(5)

    run(main())


# -- queue limits -------------------------------------------------------------------------------------


def test_queue_full_is_rejected_at_once_with_retry_after() -> None:
    async def main():
        model = FakeModel()
        model.gate = asyncio.Event()
        metrics = new_metrics()
        config = BatcherConfig(max_batch_size=1, max_queue_size=3)
        batcher = Batcher("m", [model], version="1", config=config, metrics=metrics)
        first = asyncio.ensure_future(batcher.infer([item(0)]))
        await model.started.wait()  # the first image runs: it no longer occupies the queue
        queued = [asyncio.ensure_future(batcher.infer([item(t)])) for t in (1, 2, 3)]
        await asyncio.sleep(0)
        with pytest.raises(ServingError) as info:
            await batcher.infer([item(4)])
        assert info.value.kind is ErrorKind.QUEUE_FULL
        assert info.value.retry_after_s is not None and info.value.retry_after_s > 0
        with pytest.raises(ServingError) as too_many:
            batcher.reserve(4)
        assert too_many.value.kind is ErrorKind.PAYLOAD_TOO_LARGE
        assert sample(metrics, "ddrnet_rejected_total", model="m", reason="queue_full") == 1
        assert sample(metrics, "ddrnet_queue_depth", model="m") == 3
        model.gate.set()
        for future, tag in zip([first, *queued], range(4), strict=True):
            check(await future, [tag])
        assert 4.0 not in model.seen_tags
        assert sample(metrics, "ddrnet_queue_depth", model="m") == 0

    run(main())


def test_reservation_holds_room_while_preprocessing() -> None:
    async def main():
        batcher = Batcher("m", [FakeModel()], version="1", config=BatcherConfig(max_queue_size=2))
        with batcher.reserve(2) as reservation:
            with pytest.raises(ServingError) as info:
                batcher.reserve(1)
            assert info.value.kind is ErrorKind.QUEUE_FULL
            check(await reservation.infer([item(5)]), [5])  # used 1 of 2; the rest comes back
        check(await batcher.infer([item(6), item(7)]), [6, 7])

    run(main())


# -- deadlines and cancellation ---------------------------------------------------------------------


def test_expired_request_leaves_the_queue_and_never_reaches_the_model() -> None:
    async def main():
        model = FakeModel()
        model.gate = asyncio.Event()
        metrics = new_metrics()
        batcher = Batcher("m", [model], version="1", config=BatcherConfig(max_batch_size=4), metrics=metrics)
        first = asyncio.ensure_future(batcher.infer([item(0)]))
        await model.started.wait()
        late = asyncio.ensure_future(batcher.infer([item(1), item(2)], deadline=time.monotonic() + 0.05))
        with pytest.raises(ServingError) as info:
            await late  # answered while the instance is still busy: removed from the queue on time
        assert info.value.kind is ErrorKind.DEADLINE_EXCEEDED
        assert not model.gate.is_set()
        assert batcher.queue_depth == 0
        model.gate.set()
        check(await first, [0])
        check(await batcher.infer([item(3)]), [3])
        assert model.seen_tags == [0.0, 3.0]
        assert sample(metrics, "ddrnet_dropped_total", model="m", reason="deadline") == 2

    run(main())


def test_deadline_passed_during_preprocessing_is_refused() -> None:
    async def main():
        model = FakeModel()
        metrics = new_metrics()
        batcher = Batcher("m", [model], version="1", metrics=metrics)
        with batcher.reserve(1, deadline=time.monotonic() + 0.01) as reservation:
            await asyncio.sleep(0.02)  # "decoding" took too long
            with pytest.raises(ServingError) as info:
                await reservation.infer([item(1)])
        assert info.value.kind is ErrorKind.DEADLINE_EXCEEDED
        assert model.batches == []
        assert sample(metrics, "ddrnet_dropped_total", model="m", reason="deadline") == 1

    run(main())


def test_cancelled_request_leaves_the_queue_and_never_reaches_the_model() -> None:
    async def main():
        model = FakeModel()
        model.gate = asyncio.Event()
        metrics = new_metrics()
        batcher = Batcher("m", [model], version="1", config=BatcherConfig(max_batch_size=8), metrics=metrics)
        first = asyncio.ensure_future(batcher.infer([item(0)]))
        await model.started.wait()
        gone = asyncio.ensure_future(batcher.infer([item(1), item(2), item(3)]))
        kept = asyncio.ensure_future(batcher.infer([item(4)]))
        await asyncio.sleep(0.01)
        assert batcher.queue_depth == 4
        gone.cancel()  # the client went away
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert batcher.queue_depth == 1
        model.gate.set()
        check(await first, [0])
        check(await kept, [4])
        assert gone.cancelled()
        assert model.seen_tags == [0.0, 4.0]
        assert sample(metrics, "ddrnet_dropped_total", model="m", reason="cancelled") == 3
        assert sample(metrics, "ddrnet_queue_depth", model="m") == 0

    run(main())


# -- batch forming --------------------------------------------------------------------------------


def test_queue_delay_groups_requests_into_one_batch() -> None:
    async def main():
        model = FakeModel()
        config = BatcherConfig(max_batch_size=8, max_queue_delay_ms=300)  # ample margin on a busy CI box
        batcher = Batcher("m", [model], version="1", config=config)

        async def late(tag, after):
            await asyncio.sleep(after)
            return await batcher.infer([item(tag)])

        results = await asyncio.gather(*(late(t, 0.005 * t) for t in range(5)))
        for tag, result in enumerate(results):
            check(result, [tag])
        assert [len(b) for b in model.batches] == [5]

    run(main())


def test_without_delay_a_free_instance_takes_what_is_there() -> None:
    async def main():
        model = FakeModel()
        batcher = Batcher("m", [model], version="1", config=BatcherConfig(max_batch_size=8))
        check(await batcher.infer([item(0)]), [0])
        check(await batcher.infer([item(1), item(2)]), [1, 2])
        assert [len(b) for b in model.batches] == [1, 2]

    run(main())


def test_full_batch_does_not_wait_for_the_delay() -> None:
    async def main():
        model = FakeModel()
        config = BatcherConfig(max_batch_size=4, max_queue_delay_ms=60_000)
        batcher = Batcher("m", [model], version="1", config=config)
        result = await asyncio.wait_for(batcher.infer([item(t) for t in range(4)]), 5)  # not 60 s
        check(result, range(4))

    run(main())


def test_a_free_instance_waits_for_images_still_being_decoded() -> None:
    """Closed-loop clients: image 0 is queued while image 1 is still being decoded (reserved, not
    queued); the free instance waits for it and runs both in one batch."""

    async def main():
        model = FakeModel()
        config = BatcherConfig(max_batch_size=8, preprocess_wait_ms=60_000)  # ends by arrival, not time
        batcher = Batcher("m", [model], version="1", config=config)
        decoding = batcher.reserve(1)  # image 1: its request arrived, its decode is under way
        first = asyncio.create_task(batcher.infer([item(0)]))
        await asyncio.sleep(0.05)
        assert model.batches == []  # waiting for image 1, not running image 0 alone
        second = asyncio.create_task(decoding.infer([item(1)]))
        check(await asyncio.wait_for(first, 5), [0])
        check(await asyncio.wait_for(second, 5), [1])
        assert [sorted(b[:, 0].tolist()) for b in model.batches] == [[0.0, 1.0]]

    run(main())


def test_a_lone_request_or_a_failed_decode_never_waits() -> None:
    async def main():
        model = FakeModel()
        config = BatcherConfig(max_batch_size=8, preprocess_wait_ms=60_000)
        batcher = Batcher("m", [model], version="1", config=config)
        check(await asyncio.wait_for(batcher.infer([item(0)]), 5), [0])  # nothing else decoding
        decoding = batcher.reserve(2)
        waiting = asyncio.create_task(batcher.infer([item(1)]))
        await asyncio.sleep(0.05)
        assert len(model.batches) == 1
        decoding.release()  # its image did not decode: the wait ends at once
        check(await asyncio.wait_for(waiting, 5), [1])
        assert [len(b) for b in model.batches] == [1, 1]

    run(main())


def test_the_wait_for_decoding_images_is_bounded() -> None:
    async def main():
        model = FakeModel()
        config = BatcherConfig(max_batch_size=8, preprocess_wait_ms=100)
        batcher = Batcher("m", [model], version="1", config=config)
        with batcher.reserve(1):  # never arrives while image 0 waits
            started = time.monotonic()
            check(await asyncio.wait_for(batcher.infer([item(0)]), 5), [0])
            assert 0.09 <= time.monotonic() - started < 5
        assert [len(b) for b in model.batches] == [1]

    run(main())


def test_static_batch_sizes_pad_and_strip() -> None:
    async def main():
        model = FakeModel(fixed_batch_sizes=[1, 4])
        model.gate = asyncio.Event()
        metrics = new_metrics()
        batcher = Batcher("m", [model], version="1", config=BatcherConfig(max_batch_size=8), metrics=metrics)
        assert batcher.batch_sizes == (1, 4)
        first = asyncio.ensure_future(batcher.infer([item(1)]))
        await model.started.wait()
        rest = [asyncio.ensure_future(batcher.infer([item(t)])) for t in (2, 3, 4, 5, 6)]
        await asyncio.sleep(0)
        model.gate.set()
        check(await first, [1])
        for tag, future in zip((2, 3, 4, 5, 6), rest, strict=True):
            check(await future, [tag])
        assert [len(b) for b in model.batches] == [1, 4, 1]  # 5 queued: max 4 per batch, then 1
        assert sample(metrics, "ddrnet_padded_items_total", model="m", version="1") == 0
        three = await batcher.infer([item(7), item(8), item(9)])
        check(three, [7, 8, 9])
        padded = model.batches[-1]
        assert padded.shape == (4, 2) and np.all(padded[3] == 0)
        assert sample(metrics, "ddrnet_padded_items_total", model="m", version="1") == 1

    run(main())


def test_configured_preferred_sizes_pad_too() -> None:
    async def main():
        model = FakeModel()
        config = BatcherConfig(max_batch_size=8, preferred_batch_sizes=(2, 8))
        batcher = Batcher("m", [model], version="1", config=config)
        check(await batcher.infer([item(t) for t in range(3)]), range(3))
        assert [len(b) for b in model.batches] == [8]

    run(main())


def test_instance_buffer_is_filled_in_place() -> None:
    class BufferedModel(FakeModel):
        def __init__(self):
            super().__init__()
            self.memory = np.full((4, *SHAPE), 99.0, dtype=np.float32)  # stands in for shared memory
            self.received = None

        def batch_buffer(self, size, item_shape, dtype):
            return self.memory[:size]

        async def infer(self, batch):
            self.received = batch
            return await super().infer(batch)

    async def main():
        model = BufferedModel()
        batcher = Batcher("m", [model], version="1", config=BatcherConfig(preferred_batch_sizes=(4,)))
        check(await batcher.infer([item(1), item(2)]), [1, 2])
        assert np.shares_memory(model.received, model.memory)
        assert np.all(model.memory[2:] == 0)  # padding cleared, not left over from earlier

    run(main())


def test_mismatched_item_shape_is_refused_without_harming_others() -> None:
    async def main():
        model = FakeModel()
        batcher = Batcher("m", [model], version="1", item_shape=SHAPE)
        with pytest.raises(ServingError) as info:
            await batcher.infer([np.zeros((3,), np.float32)])
        assert info.value.kind is ErrorKind.INVALID_ARGUMENT
        assert "[3]" in info.value.message and "[2]" in info.value.message
        check(await batcher.infer([item(1)]), [1])
        assert batcher.queue_depth == 0

    run(main())


# -- failures -------------------------------------------------------------------------------------


def test_failing_batch_fails_only_its_requests() -> None:
    async def main():
        poisoned = FakeModel(poison=13.0)
        poisoned.gate = asyncio.Event()
        batcher = Batcher("m", [poisoned], version="1", config=BatcherConfig(max_batch_size=2))
        first = asyncio.ensure_future(batcher.infer([item(1)]))
        await poisoned.started.wait()
        bad_batch = [asyncio.ensure_future(batcher.infer([item(t)])) for t in (12, 13)]
        good_batch = [asyncio.ensure_future(batcher.infer([item(t)])) for t in (14, 15)]
        await asyncio.sleep(0)
        poisoned.gate.set()
        check(await first, [1])
        for future in bad_batch:
            with pytest.raises(ServingError) as info:
                await future
            assert info.value.kind is ErrorKind.INTERNAL
            assert "poisoned batch" in info.value.message
        for tag, future in zip((14, 15), good_batch, strict=True):
            check(await future, [tag])
        check(await batcher.infer([item(16)]), [16])

    run(main())


def test_wrong_number_of_outputs_fails_the_batch() -> None:
    class ShortModel(FakeModel):
        async def infer(self, batch):
            return (await super().infer(batch))[:-1]

    async def main():
        batcher = Batcher("m", [ShortModel()], version="1")
        with pytest.raises(ServingError) as info:
            await batcher.infer([item(1), item(2)])
        assert info.value.kind is ErrorKind.INTERNAL
        assert "1 outputs for a batch of 2" in info.value.message

    run(main())


def test_instance_serving_error_keeps_its_kind() -> None:
    class DeadWorker(FakeModel):
        async def infer(self, batch):
            raise ServingError(ErrorKind.UNAVAILABLE, "worker 1 died", reason="worker_died")

    async def main():
        batcher = Batcher("m", [DeadWorker()], version="1")
        with pytest.raises(ServingError) as info:
            await batcher.infer([item(1)])
        assert info.value.kind is ErrorKind.UNAVAILABLE and info.value.reason == "worker_died"

    run(main())


# -- drain ----------------------------------------------------------------------------------------


def test_drain_finishes_all_accepted_work_and_refuses_new() -> None:
    async def main():
        model = FakeModel(delay=0.01)
        metrics = new_metrics()
        config = BatcherConfig(max_batch_size=2, max_queue_delay_ms=5)
        batcher = Batcher("m", [model], version="1", config=config, metrics=metrics)
        accepted = [asyncio.ensure_future(batcher.infer([item(t)])) for t in range(12)]
        reservation = batcher.reserve(1)  # a request still being decoded when the drain starts
        await asyncio.sleep(0)
        drained = asyncio.ensure_future(batcher.drain(10))
        await asyncio.sleep(0)
        with pytest.raises(ServingError) as info:
            batcher.reserve(1)
        assert info.value.kind is ErrorKind.UNAVAILABLE
        assert sample(metrics, "ddrnet_rejected_total", model="m", reason="shutting_down") == 1
        with reservation:
            check(await reservation.infer([item(99)]), [99])
        assert await drained
        for tag, future in enumerate(accepted):
            check(await future, [tag])

    run(main())


def test_drain_timeout_fails_leftovers_with_unavailable() -> None:
    async def main():
        model = FakeModel()
        model.gate = asyncio.Event()  # never opens
        batcher = Batcher("m", [model], version="1", config=BatcherConfig(max_batch_size=1))
        running = asyncio.ensure_future(batcher.infer([item(0)]))
        await model.started.wait()
        queued = asyncio.ensure_future(batcher.infer([item(1)]))
        await asyncio.sleep(0)
        assert not await batcher.drain(0.05)
        for future in (running, queued):
            with pytest.raises(ServingError) as info:
                await future
            assert info.value.kind is ErrorKind.UNAVAILABLE

    run(main())


# -- hot swap -------------------------------------------------------------------------------------


def test_replace_instances_under_load_loses_nothing() -> None:
    async def main():
        old = [FakeModel("old1", delay=0.004), FakeModel("old2", delay=0.004)]
        new = [FakeModel("new1", delay=0.004)]
        config = BatcherConfig(max_batch_size=4, max_queue_size=10_000)
        batcher = Batcher("m", old, version="1", config=config)
        stop = asyncio.Event()
        answers: list[tuple[list[int], object]] = []
        counter = iter(range(1_000_000))

        async def client():
            while not stop.is_set():
                tags = [next(counter) for _ in range(random.randint(1, 2))]
                answers.append((tags, await batcher.infer([item(t) for t in tags])))

        clients = [asyncio.ensure_future(client()) for _ in range(8)]
        await asyncio.sleep(0.1)
        pinned = batcher.reserve(1)  # preprocessed for version 1 just before the swap
        swap = asyncio.ensure_future(batcher.replace_instances(new, version="2"))
        await asyncio.sleep(0)
        assert batcher.version == "2"
        assert not swap.done()  # version 1 still owes work
        with pinned:
            late = await pinned.infer([item(-1)])
        assert late.version == "1"
        released = await swap
        assert released == old
        assert all(m.active == 0 for m in old)
        old_counts = [len(m.batches) for m in old]
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*clients)  # raises if any request failed
        assert [len(m.batches) for m in old] == old_counts  # released instances got no more work
        assert new[0].batches
        versions = {result.version for _, result in answers}
        assert versions == {"1", "2"}
        for tags, result in answers:
            check(result, tags)
        assert await batcher.drain(5)

    run(main())


# -- batch assembly -------------------------------------------------------------------------------


def test_padded_size_and_limits() -> None:
    assert batch_assembly.padded_size(3, None) == 3
    assert batch_assembly.padded_size(3, (1, 4, 8)) == 4
    assert batch_assembly.padded_size(4, (1, 4, 8)) == 4
    assert batch_assembly.max_items_per_batch(16, (1, 4, 8)) == 8
    assert batch_assembly.max_items_per_batch(2, (1, 4, 8)) == 2
    assert batch_assembly.allowed_batch_sizes((4, 1), (2,)) == (1, 4)
    assert batch_assembly.allowed_batch_sizes(None, (8, 2)) == (2, 8)
    assert batch_assembly.allowed_batch_sizes(None, ()) is None
    with pytest.raises(ValueError):
        batch_assembly.padded_size(9, (1, 4, 8))


def test_split_outputs_checks_the_count() -> None:
    rows = batch_assembly.split_outputs(np.arange(8).reshape(4, 2), count=3, size=4)
    assert [r.tolist() for r in rows] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ServingError, match="3 outputs for a batch of 4"):
        batch_assembly.split_outputs(np.zeros((3, 2)), count=3, size=4)
    with pytest.raises(ServingError, match="returned list"):
        batch_assembly.split_outputs([1, 2], count=2, size=2)


def test_config_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match="max_batch_size must be >= 1, got 0"):
        BatcherConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="-5"):
        BatcherConfig(max_queue_delay_ms=-5)
    with pytest.raises(ValueError, match="preprocess_wait_ms must be >= 0, got -1"):
        BatcherConfig(preprocess_wait_ms=-1)


class FlakyInstance(FakeModel):
    """A fake instance with the worker client's ``ready`` flag: its worker can 'die' (the batch in
    flight fails with reason worker_died) and come back after ``restart_s``."""

    def __init__(self, name: str, restart_s: float = 0.3):
        super().__init__(name)
        self.ready = True
        self.restart_s = restart_s
        self.die_next = False
        self.deadlines: list[float | None] = []

    async def infer(self, batch: np.ndarray, deadline: float | None = None) -> np.ndarray:
        self.deadlines.append(deadline)
        if self.die_next:
            self.die_next = False
            self.ready = False
            asyncio.get_running_loop().call_later(self.restart_s, setattr, self, "ready", True)
            raise ServingError(ErrorKind.UNAVAILABLE, f"worker of {self.name} was killed",
                               reason="worker_died")
        while not self.ready:  # like ManagedInstance: wait for the restart within the deadline
            if deadline is not None and time.monotonic() >= deadline:
                raise ServingError(ErrorKind.UNAVAILABLE, "restarting", reason="not_ready")
            await asyncio.sleep(0.01)
        return await super().infer(batch)


def test_a_batch_whose_worker_dies_runs_again_and_answers() -> None:
    async def main():
        metrics = new_metrics()
        lone = FlakyInstance("a")
        batcher = Batcher("m", [lone], version="1", metrics=metrics)
        lone.die_next = True
        check(await batcher.infer([item(1), item(2)]), [1, 2])  # on the restarted worker
        assert len(lone.batches) == 1 and sample(metrics, "ddrnet_batch_retries_total", model="m",
                                                 reason="worker_died") == 1
        assert lone.deadlines[0] is not None and lone.deadlines[0] > time.monotonic()  # deadline passed on
        # With a ready sibling free, the retry goes there at once.
        a, b = FlakyInstance("a", restart_s=5.0), FlakyInstance("b")
        pair = Batcher("m", [a, b], version="1", metrics=metrics)
        a.die_next = True
        b.die_next = False
        started = time.monotonic()
        check(await pair.infer([item(3)]), [3])
        assert time.monotonic() - started < 4.0 and [len(a.batches), len(b.batches)] == [0, 1]
        # While a is restarting, new batches go to b only.
        for tag in (4, 5, 6):
            check(await pair.infer([item(tag)]), [tag])
        assert len(a.batches) == 0 and len(b.batches) == 4

    run(main())


def test_a_second_worker_death_fails_the_batch_once() -> None:
    async def main():
        lone = FlakyInstance("a", restart_s=0.1)
        batcher = Batcher("m", [lone], version="1")
        lone.die_next = True
        original = lone.infer

        async def die_twice(batch, deadline=None):
            if lone.deadlines:  # the retry dies too
                lone.die_next = True
            return await original(batch, deadline)

        lone.infer = die_twice
        with pytest.raises(ServingError) as info:
            await batcher.infer([item(1)])
        assert info.value.reason == "worker_died" and len(lone.deadlines) == 2

    run(main())
