"""Worker processes: correct logits through shared memory (ONNX Runtime, and MindSpore Lite under
Python 3.7), a SIGKILLed or hung worker fails only its batch and is restarted, a runtime exception
fails one batch only, shared-memory files never outlive their use, bad devices are clear errors."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference.shm import ShmArray
from inference.worker_client import WorkerInstance
from inference.worker_main import Worker
from inference.worker_protocol import ProtocolError, decode_body, decode_length, encode
from model.manifest import ModelManifest, load_manifest
from server.errors import ErrorKind, ServingError
from tests.support import runtime_fixtures as rf
from tests.support.fake_runtimes import BAD_VALUE, FAIL, HANG, SLOW, fake_manifest

FAKE = "tests.support.fake_runtimes:FakeRuntime"
HERE = os.path.dirname(os.path.abspath(__file__))
FAKE_MANIFEST = fake_manifest()


def run(coro: Coroutine[Any, Any, Any], timeout: float = 180.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="module")
def version(tiny_version: str) -> str:
    return tiny_version


@pytest.fixture(scope="module")
def manifest(version: str) -> ModelManifest:
    return load_manifest(version)


@pytest.fixture
def shm_dir(tmp_path: Path) -> Path:
    path = tmp_path / "shm"
    path.mkdir()
    return path


def fake_instance(tmp_path: Path, shm_dir: Path, **kwargs: Any) -> WorkerInstance:
    kwargs.setdefault("max_batch_size", 4)
    return WorkerInstance(tmp_path, FAKE_MANIFEST, runtime=FAKE,
                          shm_dir=str(shm_dir), backoff_s=(0.05, 0.5), **kwargs)


def images_with_first_pixel(value: float, n: int = 2) -> np.ndarray:
    batch = np.random.default_rng(0).random((n, 3, 4, 4), dtype=np.float32)
    batch[0, 0, 0, 0] = value
    return batch


async def wait_ready(inst: WorkerInstance, limit_s: float = 60.0) -> None:
    for _ in range(int(limit_s / 0.05)):
        if inst.ready:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"instance not ready again after {limit_s} s")


# -- real runtimes -----------------------------------------------------------------------------------


def test_onnxruntime_worker_results_through_shared_memory(
    version: str, manifest: ModelManifest, shm_dir: Path
) -> None:
    images = np.load(os.path.join(version, "images.npy"))
    reference = np.load(os.path.join(version, "reference.npy"))

    async def scenario() -> None:
        inst = WorkerInstance(version, manifest, runtime="onnxruntime", threads=1, max_batch_size=8,
                              shm_dir=str(shm_dir), warmup_batch_sizes=[1, 3, 8])
        await inst.start()
        try:
            info = inst.describe()
            assert info["runtime"] == "onnxruntime" and info["ready"]
            assert info["python"] == sys.version.split()[0]
            assert sorted(info["warmup_s"]) == ["1", "3", "8"] and inst.fixed_batch_sizes is None
            for n in rf.BATCH_SIZES:
                np.testing.assert_allclose(await inst.infer(images[:n]), reference[:n], atol=1e-3, rtol=0)
            np.testing.assert_allclose(await inst.infer(list(images[2:5])), reference[2:5], atol=1e-3, rtol=0)
            # The batcher's zero-copy path: fill the shared input buffer in place, then infer on it.
            buf = inst.batch_buffer(3, (3, 64, 64), np.dtype(np.float32))
            assert buf.ctypes.data == inst.batch_buffer(8, (3, 64, 64), np.dtype(np.float32)).ctypes.data
            buf[:] = images[5:8]
            out = await inst.infer(buf)
            np.testing.assert_allclose(out, reference[5:8], atol=1e-3, rtol=0)
            # Concurrent callers each get the logits of their own images.
            slices = [(0, 2), (2, 3), (3, 8), (1, 7)]
            outs = await asyncio.gather(*(inst.infer(images[a:b]) for a, b in slices))
            for (a, b), got in zip(slices, outs, strict=True):
                np.testing.assert_allclose(got, reference[a:b], atol=1e-3, rtol=0)
            with pytest.raises(ServingError, match=r"batch of 9 images") as info9:
                await inst.infer(np.zeros((9, 3, 64, 64), np.float32))
            assert info9.value.kind is ErrorKind.INVALID_ARGUMENT
            with pytest.raises(ServingError, match=r"image 0 has shape \(3, 32, 32\)"):
                await inst.infer([np.zeros((3, 32, 32), np.float32)])
            proc = inst._proc
        finally:
            await inst.stop()
        assert proc is not None and proc.returncode == 0  # a clean shutdown, not a kill
        assert list(shm_dir.iterdir()) == []

    run(scenario())


def test_relative_version_dir_is_resolved_here(
    version: str, manifest: ModelManifest, shm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ddrnet serve --model-repository models`` from any directory: the worker starts in the
    repository root, so a relative version directory is made absolute before it is sent."""
    monkeypatch.chdir(Path(version).parent)

    async def scenario() -> None:
        inst = WorkerInstance(Path(version).name, manifest, runtime="auto", threads=1, max_batch_size=2,
                              shm_dir=str(shm_dir), warmup_batch_sizes=[1])
        assert inst.version_dir == str(Path(version).resolve())
        await inst.start()
        try:
            assert inst.describe()["runtime"] in ("onnxruntime", "lite")
        finally:
            await inst.stop()

    asyncio.run(scenario())


def test_lite_worker_under_python37(
    version: str, manifest: ModelManifest, shm_dir: Path, tmp_path: Path
) -> None:
    python, why = rf.lite_python()
    if python is None:
        pytest.skip(f"MindSpore Lite worker test skipped: {why}")
    images = np.load(os.path.join(version, "images.npy"))
    reference = np.load(os.path.join(version, "reference.npy"))

    async def scenario() -> None:
        inst = WorkerInstance(version, manifest, runtime="auto", python=python, threads=1, max_batch_size=8,
                              shm_dir=str(shm_dir), options={"cache_dir": str(tmp_path / "lite-cache")})
        await inst.start()
        try:
            info = inst.describe()
            assert info["runtime"] == "lite" and info["chosen_by"] == "auto"
            assert info["python"].startswith("3.7.") and info["library_version"] == "2.0.0"
            for n in rf.BATCH_SIZES:
                out = await inst.infer(images[:n])
                np.testing.assert_allclose(out, reference[:n], atol=1e-3, rtol=0)
                assert (out.argmax(1) == reference[:n].argmax(1)).all()
        finally:
            await inst.stop()
        assert list(shm_dir.iterdir()) == []

    run(scenario())


# -- faults --------------------------------------------------------------------------------------------


def test_sigkilled_worker_fails_only_its_batch_and_is_restarted(tmp_path: Path, shm_dir: Path) -> None:
    async def scenario() -> None:
        inst = fake_instance(tmp_path, shm_dir)
        await inst.start()
        try:
            good = images_with_first_pixel(0.5)
            np.testing.assert_allclose(await inst.infer(good), good.mean(axis=(2, 3)), rtol=1e-6)
            old_pid = inst.pid
            in_flight = asyncio.ensure_future(inst.infer(images_with_first_pixel(HANG)))
            await asyncio.sleep(0.2)
            os.kill(old_pid, signal.SIGKILL)
            with pytest.raises(ServingError, match="killed by SIGKILL") as info:
                await in_flight
            assert info.value.kind is ErrorKind.UNAVAILABLE and info.value.reason == "worker_died"
            if not inst.ready:  # while restarting, batches fail fast instead of waiting
                with pytest.raises(ServingError, match="not ready"):
                    await inst.infer(good)
            await wait_ready(inst)
            assert inst.restarts == 1 and inst.pid != old_pid
            np.testing.assert_allclose(await inst.infer(good), good.mean(axis=(2, 3)), rtol=1e-6)
        finally:
            await inst.stop()
        assert list(shm_dir.iterdir()) == []

    run(scenario())


def test_runtime_exception_fails_one_batch_only(tmp_path: Path, shm_dir: Path) -> None:
    async def scenario() -> None:
        inst = fake_instance(tmp_path, shm_dir)
        await inst.start()
        try:
            pid = inst.pid
            with pytest.raises(ServingError, match="injected runtime failure") as info:
                await inst.infer(images_with_first_pixel(FAIL))
            assert info.value.kind is ErrorKind.INTERNAL and info.value.reason == "runtime_error"
            # a ValueError from the runtime is still the server's fault: INTERNAL, never INVALID_ARGUMENT
            with pytest.raises(ServingError, match="injected ValueError") as info:
                await inst.infer(images_with_first_pixel(BAD_VALUE))
            assert info.value.kind is ErrorKind.INTERNAL
            good = images_with_first_pixel(0.25, n=3)
            np.testing.assert_allclose(await inst.infer(good), good.mean(axis=(2, 3)), rtol=1e-6)
            assert inst.pid == pid and inst.restarts == 0 and inst.ready
        finally:
            await inst.stop()

    run(scenario())


def test_hung_worker_is_killed_and_restarted(tmp_path: Path, shm_dir: Path) -> None:
    async def scenario() -> None:
        inst = fake_instance(tmp_path, shm_dir, infer_timeout_s=1.0)
        await inst.start()
        try:
            with pytest.raises(ServingError, match="did not answer within 1 s") as info:
                await inst.infer(images_with_first_pixel(HANG))
            assert info.value.kind is ErrorKind.UNAVAILABLE and info.value.reason == "worker_timeout"
            await wait_ready(inst)
            assert inst.restarts == 1
            good = images_with_first_pixel(0.5)
            np.testing.assert_allclose(await inst.infer(good), good.mean(axis=(2, 3)), rtol=1e-6)
        finally:
            await inst.stop()

    run(scenario())


def test_fixed_batch_sizes_are_padded_and_warmed_up(tmp_path: Path, shm_dir: Path) -> None:
    async def scenario() -> None:
        inst = fake_instance(tmp_path, shm_dir, options={"fixed": [2, 4]})
        await inst.start()
        try:
            assert inst.fixed_batch_sizes == [2, 4]
            assert sorted(inst.describe()["warmup_s"]) == ["2", "4"]
            batch = images_with_first_pixel(0.5, n=3)  # runs as a batch of 4, answers 3 rows
            np.testing.assert_allclose(await inst.infer(batch), batch.mean(axis=(2, 3)), rtol=1e-6)
        finally:
            await inst.stop()

    run(scenario())


def test_library_output_on_stdout_does_not_break_the_protocol(tmp_path: Path, shm_dir: Path) -> None:
    async def scenario() -> None:
        inst = fake_instance(tmp_path, shm_dir, options={"noisy": True})
        await inst.start()
        try:
            good = images_with_first_pixel(0.5)
            np.testing.assert_allclose(await inst.infer(good), good.mean(axis=(2, 3)), rtol=1e-6)
        finally:
            await inst.stop()

    run(scenario())


# -- start-up errors and resources ---------------------------------------------------------------------


def test_bad_device_or_runtime_is_a_clear_start_error(
    version: str, manifest: ModelManifest, shm_dir: Path
) -> None:
    async def start_error(**kwargs: Any) -> ServingError:
        inst = WorkerInstance(version, manifest, shm_dir=str(shm_dir), **kwargs)
        with pytest.raises(ServingError) as info:
            await inst.start()
        assert inst.pid is None and not inst.ready  # the worker is gone
        return info.value

    async def scenario() -> None:
        err = await start_error(runtime="onnxruntime", device="tpu")
        assert err.kind is ErrorKind.INVALID_ARGUMENT and "unknown device 'tpu'" in err.message
        err = await start_error(runtime="onnxruntime", device="gpu")
        assert err.kind is ErrorKind.UNAVAILABLE and "CUDAExecutionProvider" in err.message
        if importlib.util.find_spec("mindspore_lite") is None:
            err = await start_error(runtime="lite")
            assert err.kind is ErrorKind.UNAVAILABLE and "mindspore_lite" in err.message

        err = await start_error(runtime="onnxruntime", python="/bin/false")  # dies before a word
        assert err.kind is ErrorKind.UNAVAILABLE and "exited with code 1" in err.message

    run(scenario(), timeout=60)
    assert list(shm_dir.iterdir()) == []  # failed starts leave no shared memory behind
    inst = WorkerInstance(version, manifest, runtime="onnxruntime", shm_dir="/nonexistent-shm-dir")
    with pytest.raises(ServingError, match=r"shared memory: .*nonexistent-shm-dir") as info:
        run(inst.start(), timeout=60)
    assert info.value.kind is ErrorKind.UNAVAILABLE and inst.pid is None
    with pytest.raises(ValueError, match="is not an executable file"):
        WorkerInstance(version, manifest, python="/nonexistent/python3.7")


def test_shared_memory_array_maps_across_processes_and_unlinks(shm_dir: Path) -> None:
    arr = ShmArray.create((2, 3), "float32", str(shm_dir))
    arr.array[:] = np.arange(6, dtype=np.float32).reshape(2, 3)
    code = (
        "import sys, json\nfrom inference.shm import ShmArray\n"
        "a = ShmArray.from_spec(json.loads(sys.argv[1]))\nprint(a.array.sum())\na.array[1] = -1\na.close()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(arr.spec())], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=rf.REPO), timeout=60, check=True)
    assert float(proc.stdout) == 15.0
    assert arr.array[1].tolist() == [-1.0, -1.0, -1.0]
    assert [p.name for p in shm_dir.iterdir()] == [os.path.basename(arr.path)]
    arr.unlink()
    assert list(shm_dir.iterdir()) == []
    arr.array[0] = 7.0  # the mapping outlives the name
    arr.close()
    arr.close()  # idempotent
    with pytest.raises(FileNotFoundError):
        ShmArray.attach(arr.path, (2, 3))


def test_worker_answers_bad_requests_and_exits_with_its_server() -> None:
    worker = Worker()
    reply, done = worker.handle({"op": "bogus"})
    assert reply == {"ok": False, "error": "invalid_argument", "message": reply["message"]} and not done
    assert "unknown op 'bogus'" in reply["message"]
    # a bad infer message can only come from the server itself: its fault, INTERNAL
    reply, _ = worker.handle({"op": "infer", "n": 1})
    assert reply["error"] == "internal" and "no model loaded" in reply["message"]
    reply, _ = worker.handle({"op": "infer"})
    assert reply["error"] == "internal" and "bad infer message" in reply["message"]
    frame = encode({"op": "warmup", "batch_sizes": [1]})
    assert decode_body(frame[4:]) == {"op": "warmup", "batch_sizes": [1]}
    assert decode_length(frame[:4]) == len(frame) - 4
    with pytest.raises(ProtocolError):
        decode_length(b"\xff\xff\xff\xff")
    # A worker whose server goes away (stdin closes) exits by itself.
    proc = subprocess.Popen([sys.executable, "-m", "inference.worker_main"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=rf.REPO), cwd=rf.REPO)
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    assert proc.stdout is not None and proc.stdout.read() == b""


def test_fixed_batch_sizes_above_the_maximum_are_not_used(tmp_path: Path, shm_dir: Path) -> None:
    """A model with static sizes 1, 4 and 16 under a maximum batch of 8: padding to 16 would overflow
    the shared input array the worker was given, so only 1 and 4 are used; with no size that fits,
    the instance refuses to start and says which option to raise."""
    async def scenario() -> None:
        inst = fake_instance(tmp_path, shm_dir, max_batch_size=8, options={"fixed": [1, 4, 16]})
        await inst.start()
        try:
            assert inst.fixed_batch_sizes == [1, 4] and inst.max_batch_size == 4
            out = await inst.infer(images_with_first_pixel(0.5, n=3))  # padded to 4, three rows back
            assert out.shape == (3, 3)
        finally:
            await inst.stop()
        none_fits = fake_instance(tmp_path, shm_dir, max_batch_size=8, options={"fixed": [16]})
        with pytest.raises(ServingError, match=r"fixed batch sizes \[16\] are all above .* --max-batch-size"):
            await none_fits.start()

    run(scenario())


def test_restart_survives_spawn_failures_and_counts_them(tmp_path: Path, shm_dir: Path, monkeypatch) -> None:
    """An OSError from spawning the worker (EAGAIN, ENOMEM, a replaced interpreter) is retried with
    backoff and counted, not the end of the instance; the time without a worker is reported."""
    async def scenario() -> None:
        inst = fake_instance(tmp_path, shm_dir)
        await inst.start()
        real_spawn = asyncio.create_subprocess_exec
        failures = {"left": 3}

        async def flaky_spawn(*args, **kwargs):
            if failures["left"] > 0:
                failures["left"] -= 1
                raise OSError(11, "Resource temporarily unavailable")
            return await real_spawn(*args, **kwargs)

        monkeypatch.setattr(asyncio, "create_subprocess_exec", flaky_spawn)
        try:
            os.kill(inst.pid, signal.SIGKILL)
            for _ in range(200):  # noticed
                if not inst.ready and inst.down_since is not None:
                    break
                await asyncio.sleep(0.01)
            assert inst.down_since is not None
            for _ in range(400):  # back, after three failed attempts
                if inst.ready:
                    break
                await asyncio.sleep(0.05)
            assert inst.ready and inst.restart_failures == 3 and inst.restarts == 1
            assert inst.down_for() == 0.0 and inst.down_since is None
            good = images_with_first_pixel(0.25, n=2)
            np.testing.assert_allclose(await inst.infer(good), good.mean(axis=(2, 3)), rtol=1e-6)
        finally:
            await inst.stop()

    run(scenario())


def test_a_late_reply_is_dropped_not_read_as_the_next_batchs(tmp_path: Path, shm_dir: Path) -> None:
    """A batch given up on (its caller cancelled) still gets a reply from the worker later; the request
    id in every reply keeps it from being taken for the next batch's."""
    async def scenario() -> None:
        inst = fake_instance(tmp_path, shm_dir)
        await inst.start()
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(inst.infer(images_with_first_pixel(SLOW, n=1)), 0.3)
            good = images_with_first_pixel(0.5, n=3)
            out = await inst.infer(good)  # queued behind the slow one in the worker, answered after it
            assert out.shape == (3, 3)
            np.testing.assert_allclose(out, good.mean(axis=(2, 3)), rtol=1e-6)
            assert inst.pid is not None and inst.restarts == 0
        finally:
            await inst.stop()

    run(scenario())


def test_stale_shared_memory_of_dead_servers_is_removed(tmp_path: Path) -> None:
    from inference import shm

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(gone.stdout)
    stale = tmp_path / f"ddrnet-{dead_pid}-0123456789ab"
    live = tmp_path / f"ddrnet-{os.getpid()}-0123456789ab"
    other = tmp_path / "ddrnet-notapid-x"
    for path in (stale, live, other):
        path.write_bytes(b"\0" * 16)
    assert shm.remove_stale(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.exists() and other.exists()


def test_reaping_a_worker_that_will_not_exit_is_bounded(tmp_path: Path, shm_dir: Path, monkeypatch) -> None:
    """A worker stuck in the kernel (it ignores SIGKILL until it leaves D state) must not hang a
    restart or a stop: the wait is bounded and logged, and the instance goes on."""
    import inference.worker_client as wc

    monkeypatch.setattr(wc, "REAP_TIMEOUT_S", 0.3)

    class Unkillable:
        pid, returncode = 999_999, None
        killed = False

        def kill(self) -> None:
            self.killed = True

        async def wait(self) -> int:
            await asyncio.sleep(3600)
            return 0

    async def scenario() -> None:
        inst = fake_instance(tmp_path, shm_dir)
        stuck = Unkillable()
        inst._proc = stuck
        await asyncio.wait_for(inst._reap(), 5.0)
        assert stuck.killed and inst._proc is None and not inst.ready

    run(scenario())
