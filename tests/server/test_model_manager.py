"""ModelManager: newest complete version, several models, hot swap under load with no failed request,
broken versions kept out (logged + counted), a vanishing repository, start-up errors, dead workers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal

import numpy as np
import pytest

from model import repository as repo
from server.core import InferInput
from server.errors import ErrorKind, ServingError
from server.model_manager import StartupError, warmup_batch_sizes
from tests.support import server_fixtures as sf
from tests.support.fake_runtimes import SLOW


def run(coro, timeout: float = 90.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_for(predicate, timeout_s: float) -> bool:
    """Poll ``predicate`` every 50 ms for at most ``timeout_s``."""
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


def red() -> bytes:
    return sf.colour_image("red")


def test_warmup_sizes_cover_every_batch_size_in_use() -> None:
    assert warmup_batch_sizes(8, []) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert warmup_batch_sizes(8, [2, 8]) == [2, 8]
    assert warmup_batch_sizes(64, []) == [1, 2, 4, 8, 16, 32, 64]
    assert warmup_batch_sizes(40, []) == [1, 2, 4, 8, 16, 32, 40]


def test_serves_newest_complete_version_of_each_model(tmp_path) -> None:
    sf.make_fake_version(tmp_path, "alpha", 1)
    sf.make_fake_version(tmp_path, "alpha", 2)
    broken = sf.make_fake_version(tmp_path, "alpha", 3)
    (broken / "model.onnx").write_bytes(b"tampered")  # size/hash no longer as recorded
    sf.make_fake_version(tmp_path, "beta", 4, image_size=12)
    (tmp_path / "alpha" / "7").mkdir()  # a version directory without model.json
    (tmp_path / ".hidden").mkdir()

    async def main():
        async with sf.started_core(sf.settings_for(tmp_path, instances=2)) as core:
            manager = core.manager
            assert manager.ready and sorted(manager.models) == ["alpha", "beta"]
            assert manager.get("alpha").current.version == "2"
            assert manager.get("beta").current.item_shape == (3, 12, 12)
            assert len(manager.get("alpha").current.instances) == 2
            for name in ("alpha", "beta"):
                result = await core.classify([sf.colour_image("green")], model=name, protocol="http")
                assert result.results[0][0].label == "green"
            assert sf.sample(core.metrics, "ddrnet_model_load_failures_total", model="alpha",
                             reason="incomplete") == 2  # version 3 (tampered) and 7 (no manifest)
            assert sf.sample(core.metrics, "ddrnet_model_info", model="alpha", version="2",
                             runtime="fake", device="cpu") == 1
            await manager.poll_once()  # incomplete versions are reported once, not every poll
            assert sf.sample(core.metrics, "ddrnet_model_load_failures_total", model="alpha",
                             reason="incomplete") == 2

    run(main())


def test_models_option_limits_what_is_served(tmp_path) -> None:
    sf.make_fake_version(tmp_path, "alpha", 1)
    sf.make_fake_version(tmp_path, "beta", 1)

    async def main():
        async with sf.started_core(sf.settings_for(tmp_path, models=["beta"])) as core:
            assert list(core.manager.models) == ["beta"]

    run(main())


def test_hot_swap_under_load_fails_and_drops_nothing(tmp_path) -> None:
    sf.make_fake_version(tmp_path, "fake", 1)

    async def main():
        settings = sf.settings_for(tmp_path, max_batch_size=4, max_queue_delay_ms=2)
        async with sf.started_core(settings) as core:
            manager = core.manager
            old_workers = [i.worker for i in manager.get("fake").current.instances]
            versions: list[str] = []  # all answers, in completion order
            per_client: dict[int, list[str]] = {}
            errors: list[BaseException] = []
            stop = asyncio.Event()

            async def client(index: int, colour: str) -> None:
                seen = per_client.setdefault(index, [])
                while not stop.is_set():
                    try:
                        result = await core.classify([sf.colour_image(colour)], model="fake", protocol="http")
                    except BaseException as exc:  # every failure counts
                        errors.append(exc)
                        return
                    assert result.results[0][0].label == colour
                    versions.append(result.version)
                    seen.append(result.version)

            colours = ("red", "green", "blue", "red")
            clients = [asyncio.ensure_future(client(i, c)) for i, c in enumerate(colours)]
            for _ in range(200):  # bounded: wait until requests flow
                if len(versions) >= 20:
                    break
                await asyncio.sleep(0.01)
            sf.make_fake_version(tmp_path, "fake", 2, image_size=6)  # also a different input size
            await manager.poll_once()  # load + warm v2, switch, drain v1
            count_at_switch = len(versions)
            for _ in range(300):
                if len(versions) >= count_at_switch + 20:
                    break
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.gather(*clients)
            assert errors == []
            assert versions[0] == "1" and versions[-1] == "2"
            for seen in per_client.values():  # each client's requests are sequential: 1 ... 1 2 ... 2
                assert seen == sorted(seen), "a request went to v1 after the same client got v2"
            assert manager.get("fake").current.version == "2"
            assert list(manager.get("fake").versions) == ["2"]
            assert all(w.pid is None and not w.ready for w in old_workers)  # old workers stopped
            assert sf.sample(core.metrics, "ddrnet_model_info", model="fake", version="2",
                             runtime="fake", device="cpu") == 1
            assert sf.sample(core.metrics, "ddrnet_model_info", model="fake", version="1",
                             runtime="fake", device="cpu") == 0
            assert sf.sample(core.metrics, "ddrnet_model_load_seconds_count", model="fake", version="2") == 1

    run(main())


def test_a_version_that_fails_to_load_is_never_served(tmp_path) -> None:
    sf.make_fake_version(tmp_path, "fake", 1)

    async def main():
        async with sf.started_core(sf.settings_for(tmp_path)) as core:
            manager = core.manager
            broken = sf.make_fake_version(tmp_path, "fake", 2)
            data = json.loads((broken / "model.json").read_text())
            data["preprocess"]["interpolation"] = "sideways"
            (broken / "model.json").write_text(json.dumps(data))
            await manager.poll_once()
            await manager.poll_once()  # not retried: counted once
            assert manager.get("fake").current.version == "1"
            assert sf.sample(core.metrics, "ddrnet_model_load_failures_total", model="fake",
                             reason="incomplete") == 1
            assert (await core.classify([red()], model="fake", protocol="http")).version == "1"
            # A later good version is picked up past the broken one.
            sf.make_fake_version(tmp_path, "fake", 3)
            await manager.poll_once()
            assert (await core.classify([red()], model="fake", protocol="http")).version == "3"

    run(main())


def test_vanishing_repository_keeps_serving_and_rollback_by_deleting(tmp_path) -> None:
    repository = tmp_path / "repo"
    sf.make_fake_version(repository, "fake", 1)
    sf.make_fake_version(repository, "fake", 2)

    async def main():
        async with sf.started_core(sf.settings_for(repository)) as core:
            manager = core.manager
            assert manager.get("fake").current.version == "2"
            shutil.rmtree(repository / "fake" / "2")  # operator deletes a bad version: roll back
            await manager.poll_once()
            assert (await core.classify([red()], model="fake", protocol="http")).version == "1"
            shutil.rmtree(repository)  # the whole repository disappears
            await manager.poll_once()
            assert manager.ready
            assert (await core.classify([red()], model="fake", protocol="http")).version == "1"

    run(main())


def test_empty_repository_starts_unready_and_picks_up_a_published_model(tmp_path) -> None:
    async def main():
        async with sf.started_core(sf.settings_for(tmp_path)) as core:
            assert core.manager.started and not core.ready()
            with pytest.raises(ServingError) as info:
                await core.classify([red()], model="fake", protocol="http")
            assert info.value.kind is ErrorKind.NOT_FOUND
            sf.make_fake_version(tmp_path, "fake", 1)
            await core.manager.poll_once()
            assert core.ready()
            assert (await core.classify([red()], model="fake", protocol="http")).version == "1"

    run(main())


def test_polling_runs_in_the_background(tmp_path) -> None:
    sf.make_fake_version(tmp_path, "fake", 1)

    async def main():
        async with sf.started_core(sf.settings_for(tmp_path, poll_interval_s=0.1)) as core:
            core.manager.start_polling()
            sf.make_fake_version(tmp_path, "fake", 2)
            for _ in range(200):
                if core.manager.get("fake").current.version == "2":
                    break
                await asyncio.sleep(0.05)
            assert core.manager.get("fake").current.version == "2"
            assert await core.manager.drain(5.0)

    run(main())


def test_a_model_that_cannot_load_at_start_is_a_startup_error(tmp_path) -> None:
    sf.make_fake_version(tmp_path, "fake", 1)

    async def main():
        with pytest.raises(StartupError, match="model 'fake' could not be loaded"):
            missing = "tests.support.fake_runtimes:NoSuchRuntime"
            async with sf.started_core(sf.settings_for(tmp_path), runtime=missing):
                pass

    run(main())


def test_killed_worker_fails_only_its_batch_and_comes_back(tmp_path) -> None:
    sf.make_fake_version(tmp_path, "fake", 1)

    async def main():
        async with sf.started_core(sf.settings_for(tmp_path)) as core:
            worker = core.manager.get("fake").current.instances[0].worker
            # Idle worker killed: the next request waits for the restart instead of failing.
            first_pid = worker.pid
            os.kill(first_pid, signal.SIGKILL)
            await asyncio.sleep(0.1)
            result = await core.classify([red()], model="fake", protocol="http")
            assert result.results[0][0].label == "red" and worker.pid != first_pid
            # Worker killed with a batch in flight: the batch runs again on the restarted worker, and
            # the request gets its answer (a crash costs latency, not an error).
            slow = np.full((1, 3, 8, 8), SLOW, np.float32)

            def infer_slow():
                return asyncio.ensure_future(core.infer(
                    model="fake", version=None, inputs=[InferInput("input", "FP32", [1, 3, 8, 8], slow)],
                    protocol="grpc"))

            inflight = infer_slow()
            await asyncio.sleep(0.5)
            os.kill(worker.pid, signal.SIGKILL)
            answer = await inflight
            np.testing.assert_allclose(answer.outputs[0].data, [[SLOW] * 3])
            retries = sf.sample(core.metrics, "ddrnet_batch_retries_total", model="fake",
                                reason="worker_died")
            assert retries == 1
            # Killed again during the retry: the second loss is the request's error.
            inflight = infer_slow()
            await asyncio.sleep(0.5)
            retried_pid = worker.pid
            os.kill(retried_pid, signal.SIGKILL)
            assert await wait_for(lambda: worker.ready and worker.pid != retried_pid, 30)
            await asyncio.sleep(0.5)
            os.kill(worker.pid, signal.SIGKILL)
            with pytest.raises(ServingError) as info:
                await inflight
            assert info.value.kind is ErrorKind.UNAVAILABLE and "SIGKILL" in info.value.message
            result = await core.classify([sf.colour_image("blue")], model="fake", protocol="http")
            assert result.results[0][0].label == "blue"
            core.manager.refresh_metrics()
            assert sf.sample(core.metrics, "ddrnet_worker_restarts_total", model="fake",
                             reason="worker_died") == 4

    run(main())


def test_drain_finishes_accepted_work_then_refuses(tmp_path) -> None:
    sf.make_fake_version(tmp_path, "fake", 1)

    async def main():
        async with sf.started_core(sf.settings_for(tmp_path, max_batch_size=2)) as core:
            tasks = [asyncio.ensure_future(core.classify([red()], model="fake", protocol="http"))
                     for _ in range(10)]
            await asyncio.sleep(0)  # all reserved before the drain starts
            core.begin_shutdown()
            assert await core.manager.drain(10.0)
            results = await asyncio.gather(*tasks)
            assert [r.results[0][0].label for r in results] == ["red"] * 10
            assert not core.manager.ready
            worker = core.manager.get("fake").current.instances[0].worker
            assert worker.pid is None

    run(main())


def test_repository_helpers_publish_like_an_exporter(tmp_path) -> None:
    source = sf.make_fake_version(tmp_path / "a", "fake", 1)
    version = sf.copy_version(source, tmp_path / "b", "copy")
    assert version == 1
    assert repo.check_version(tmp_path / "b" / "copy" / "1").name == "copy"


def test_a_swap_failing_with_any_exception_leaves_the_old_version_serving(tmp_path, monkeypatch) -> None:
    """A hot swap whose new version fails to start its batcher with an unexpected exception: the old
    version keeps serving and the metadata says so, the new version's workers are stopped, the failure
    is counted and not retried every poll; rewriting the version's files makes it a new attempt."""
    from server.batcher import Batcher

    sf.make_fake_version(tmp_path, "fake", 1)
    attempts = []
    real_init = Batcher.__init__

    def failing_init(self, *args, **kwargs):
        attempts.append(kwargs.get("version"))
        raise RuntimeError("batcher exploded")

    async def main():
        async with sf.started_core(sf.settings_for(tmp_path)) as core:
            manager = core.manager
            monkeypatch.setattr(Batcher, "__init__", failing_init)
            v2 = sf.make_fake_version(tmp_path, "fake", 2)
            await manager.poll_once()
            await manager.poll_once()
            assert attempts == ["2"]  # remembered: not retried on the next poll
            served = manager.get("fake")
            assert served.current.version == "1" and list(served.versions) == ["1"]
            assert core.model_metadata("fake").versions == ["1"]
            assert (await core.classify([red()], model="fake", protocol="http")).version == "1"
            assert sf.sample(core.metrics, "ddrnet_model_load_failures_total", model="fake",
                             reason="load_error") == 1
            workers = [i.worker for i in served.current.instances]
            assert all(w.ready for w in workers)
            # the failed version's worker processes were stopped: only v1's are alive
            assert sorted(sf.worker_pids(os.getpid())) == sorted(w.pid for w in workers)
            # rewriting v2's files is a new attempt, which now succeeds
            monkeypatch.setattr(Batcher, "__init__", real_init)
            shutil.rmtree(v2)
            sf.make_fake_version(tmp_path, "fake", 2, preprocess={"crop_pct": 0.9})
            await manager.poll_once()
            assert manager.get("fake").current.version == "2"

    run(main())


class _RestartingWorker:
    """A worker that stays not ready (a restart that takes long)."""

    name = "w0"
    ready = False
    fixed_batch_sizes = None

    async def infer(self, batch):  # pragma: no cover - never reached while not ready
        raise AssertionError("infer on a worker that is not ready")


def test_a_restarting_instance_waits_no_longer_than_the_batch_deadline_or_its_bound() -> None:
    import time

    from server.instance import ManagedInstance

    async def waited(instance: ManagedInstance, deadline: float | None) -> float:
        started = time.monotonic()
        with pytest.raises(ServingError, match="restarting") as info:
            await instance.infer(np.zeros((1, 3, 2, 2), np.float32), deadline)
        assert info.value.kind is ErrorKind.UNAVAILABLE and info.value.reason == "not_ready"
        return time.monotonic() - started

    async def scenario() -> None:
        long_bound = ManagedInstance(_RestartingWorker(), restart_wait_s=30.0)
        assert await waited(long_bound, time.monotonic() + 0.2) < 5.0  # the batch's deadline wins
        short_bound = ManagedInstance(_RestartingWorker(), restart_wait_s=0.2)
        assert await waited(short_bound, float("inf")) < 5.0  # no deadline: the bound wins
        assert await waited(short_bound, None) < 5.0

    run(scenario())


def test_worker_timeouts_come_from_the_settings(tmp_path) -> None:
    sf.make_fake_version(tmp_path, "fake", 1)

    async def main():
        settings = sf.settings_for(tmp_path, infer_timeout_s=7.5, max_worker_down_s=42.0)
        async with sf.started_core(settings) as core:
            worker = core.manager.get("fake").current.instances[0].worker
            assert worker.infer_timeout_s == 7.5
            assert core.live()
            assert await core.manager.drain(5.0)

    run(main())
