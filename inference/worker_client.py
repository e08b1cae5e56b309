"""The server's handle on one model instance running in its own worker process.

:class:`WorkerInstance` starts ``PYTHON -m inference.worker_main`` (``python`` is the configured
runtime interpreter, by default this one), hands it the model to load, and then runs batches on it:
the batch is written into a shared-memory input array (``inference.shm``), a small ``infer`` message
goes over the worker's stdin, and the logits are read back from the shared-memory output array.
Control messages follow ``inference.worker_protocol``.

Faults stay inside the instance:

- a runtime exception in one batch fails that batch only (ServingError INTERNAL); the worker goes on;
- a worker that dies (SIGKILL, a native crash, an exit) is noticed at once by the end of its stdout:
  the batch in flight fails with ServingError UNAVAILABLE (reason ``worker_died``: the batcher runs
  it once more), and the instance restarts the worker in the background with a bounded exponential
  backoff, loading and warming the model again; until it is back, :attr:`ready` is False and
  ``infer`` fails fast with UNAVAILABLE. Any exception of a restart attempt (an ``OSError`` from
  spawning, a load that fails) is logged, counted (:attr:`restart_failures`) and retried with the
  backoff; :meth:`down_for` says how long the instance has been without a worker, which the server
  turns into failing liveness past a bound;
- a batch that takes longer than ``infer_timeout_s`` means a hung worker: it is killed, the batch
  fails with UNAVAILABLE (``worker_timeout``) and the worker is restarted likewise;
- every request carries an id its reply repeats, so a late reply to a request given up on is
  dropped, never read as the next batch's; reaping a killed worker is bounded (``REAP_TIMEOUT_S``).

One batch runs at a time per instance (the worker is single-threaded); the batcher runs one
instance per worker process and gives each a batch when it is free.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inference.errors import ErrorKind, ServingError
from inference.shm import ShmArray
from inference.worker_protocol import (
    HEADER,
    InferRequest,
    LoadRequest,
    ShutdownRequest,
    WarmupRequest,
    decode_body,
    decode_length,
    encode,
    to_dict,
)
from model.manifest import ModelManifest

LOG = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
STABLE_AFTER_S = 60.0  # a worker that lived this long resets the restart backoff
REAP_TIMEOUT_S = 10.0  # how long to wait for a SIGKILLed worker to be gone


def _exit_reason(returncode: int | None) -> str:
    if returncode is None:
        return "closed its pipe"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _io_shapes(manifest: ModelManifest, max_batch_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return (max_batch_size, *manifest.item_shape), (max_batch_size, manifest.num_classes)


MINDSPORE_ONEDNN_ISA = "AVX2"


class WorkerInstance:
    """One model instance in a worker process. Create, ``await start()``, ``await infer(...)``,
    ``await stop()``.

    ``runtime``: ``auto``, ``lite``, ``onnxruntime``, ``mindspore`` or ``module:Class``;
    ``options``: runtime options (``inter_op_threads``, ``cache_dir``, ``lite_source``,
    ``fixed_batch``); ``python``: the worker's interpreter; ``warmup_batch_sizes``: batch sizes run
    once at start and after every restart (default 1 and ``max_batch_size``, or the model's fixed
    sizes); ``extra_pythonpath``: directories added after the repository root (custom runtimes).
    """

    def __init__(
        self,
        version_dir: str | os.PathLike[str],
        manifest: ModelManifest,
        *,
        runtime: str = "auto",
        device: str = "cpu",
        device_id: int = 0,
        threads: int | None = None,
        options: dict[str, Any] | None = None,
        max_batch_size: int = 8,
        python: str | os.PathLike[str] | None = None,
        name: str = "",
        warmup_batch_sizes: Sequence[int] | None = None,
        load_timeout_s: float = 600.0,
        infer_timeout_s: float = 120.0,
        restart: bool = True,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        shm_dir: str | None = None,
        log_level: str = "warning",
        extra_pythonpath: Sequence[str] = (),
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be positive, got {max_batch_size}")
        self.python = str(python or sys.executable)
        if not (os.path.isfile(self.python) and os.access(self.python, os.X_OK)):
            raise ValueError(f"runtime python {self.python} is not an executable file")
        # absolute: the worker starts in the repository root, not in this process's directory
        self.version_dir = os.path.abspath(str(version_dir))
        self.manifest = manifest
        self.name = name or f"{manifest.name}/{manifest.version}"
        self.input_shape, self.output_shape = _io_shapes(manifest, max_batch_size)
        self.max_batch_size = max_batch_size
        self._load = LoadRequest(
            version_dir=self.version_dir, manifest=manifest.to_dict(), runtime=runtime, input={}, output={},
            device=device, device_id=device_id, threads=threads, options=dict(options or {}),
            log_level=log_level,
        )
        self._warmup_sizes = list(warmup_batch_sizes) if warmup_batch_sizes else None
        self.load_timeout_s = load_timeout_s
        self.infer_timeout_s = infer_timeout_s
        self.restart_enabled = restart
        self.backoff_s = backoff_s
        self.shm_dir = shm_dir
        self.extra_pythonpath = list(extra_pythonpath)

        self.restarts = 0
        self.ready = False
        self._info: dict[str, Any] = {}
        self._fixed: list[int] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}  # request id -> its reply
        self._ids = itertools.count(1)
        self.restart_failures = 0  # restart attempts that failed (spawn, load or warm-up)
        self.down_since: float | None = None  # monotonic time the serving worker was lost
        self._inputs: ShmArray | None = None
        self._outputs: ShmArray | None = None
        self._lock = asyncio.Lock()
        self._stopping = False
        self._serving = False  # started successfully once and not stopped: restart what dies
        self._restart_task: asyncio.Task[None] | None = None
        self._backoff = backoff_s[0]
        self._started_at = 0.0
        self._lost_reason = "is not running"

    # -- public API ----------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def fixed_batch_sizes(self) -> list[int] | None:
        """The batch sizes the runtime accepts, or None for any size up to ``max_batch_size``.
        ``infer`` pads a smaller batch up to the next fixed size itself."""
        return self._fixed

    def down_for(self, now: float | None = None) -> float:
        """Seconds this serving instance has been without a working worker (0 while it has one)."""
        if self.down_since is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self.down_since

    def describe(self) -> dict[str, Any]:
        """The worker runtime's ``describe()`` plus pid, restarts and load time."""
        info = dict(self._info)
        info.update(pid=self.pid, restarts=self.restarts, ready=self.ready, instance=self.name)
        return info

    async def start(self) -> None:
        """Start the worker, load and warm up the model. Raises ServingError (UNAVAILABLE when the
        runtime, device or model file is missing; INVALID_ARGUMENT for a bad device or option)."""
        self._stopping = False
        await self._spawn_and_load()
        self._serving = True
        LOG.info("instance %s ready: %s", self.name, self._info)

    def batch_buffer(self, size: int, item_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A ``(size, *item_shape)`` array for the batcher to fill: a view on the shared input memory
        when possible (the batch then reaches the worker with no further copy), else a fresh array.
        Valid for the next ``infer`` call only."""
        inputs = self._inputs
        if (
            self.ready
            and inputs is not None
            and 1 <= size <= inputs.shape[0]
            and tuple(item_shape) == inputs.shape[1:]
            and np.dtype(dtype) == inputs.dtype
        ):
            return inputs.array[:size]
        return np.empty((size, *item_shape), dtype=dtype)

    async def infer(self, batch: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Logits ``[N, num_classes]`` (a new array the caller owns) for a ``[N, C, H, W]`` array or a
        sequence of N ``[C, H, W]`` arrays. Each image is copied once into its slot of the shared input
        array, or not at all when ``batch`` came from :meth:`batch_buffer`. A batch smaller than the
        model's next fixed batch size is zero-padded here, and only its own rows are returned."""
        n = len(batch)
        if not 1 <= n <= self.max_batch_size:
            raise ServingError(
                ErrorKind.INVALID_ARGUMENT, f"batch of {n} images: an instance takes 1..{self.max_batch_size}"
            )
        if not self.ready:
            raise self._not_ready()
        async with self._lock:
            if not self.ready or self._inputs is None or self._outputs is None:
                raise self._not_ready()
            inputs, outputs = self._inputs, self._outputs
            self._write_batch(inputs.array, batch, n)
            size = self._padded_size(n)
            if size > n:
                inputs.array[n:size] = 0.0
            reply = await self._call(to_dict(InferRequest(size)), self.infer_timeout_s, during="a batch")
            if not reply.get("ok"):
                raise self._error(reply, "batch failed")
            return outputs.array[:n].copy()

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batch in flight (up to ``timeout_s``), then shut the worker down, killing it if
        it does not exit in time; unlinks the shared memory. Idempotent."""
        self._stopping = True
        self._serving = False
        self.ready = False
        self.down_since = None
        if self._restart_task is not None:
            self._restart_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._restart_task
            self._restart_task = None
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                async with asyncio.timeout(timeout_s):
                    async with self._lock:
                        await self._call(to_dict(ShutdownRequest()), timeout_s, during="shutdown")
                    await proc.wait()
            except (TimeoutError, ServingError, ConnectionError):
                LOG.warning("instance %s: worker %s did not stop in time, killing it", self.name, proc.pid)
        await self._reap()

    # -- process management --------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONHOME", None)
        # Only the repository (and explicit extras) on the path: the worker's interpreter may be
        # another Python whose site-packages must not mix with this one's.
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *self.extra_pythonpath])
        env.setdefault("GLOG_v", "3")  # MindSpore / Lite C++ logging: errors only unless asked
        if "mindspore" in sys.modules and env.get("ONEDNN_MAX_CPU_ISA") == MINDSPORE_ONEDNN_ISA:
            # MindSpore's CPU kernels set this in their own process when it is unset (measured: once a
            # network has run, e.g. in the exporter), and every child would inherit it: it caps
            # OpenVINO's oneDNN at AVX2, where bf16 convolutions cannot be built. The server's own
            # process never loads MindSpore, so an operator's setting always reaches its workers.
            env.pop("ONEDNN_MAX_CPU_ISA")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def _spawn_and_load(self) -> None:
        await self._reap()
        try:
            self._inputs = ShmArray.create(self.input_shape, "float32", self.shm_dir)
            self._outputs = ShmArray.create(self.output_shape, "float32", self.shm_dir)
        except OSError as exc:
            await self._reap()
            raise ServingError(ErrorKind.UNAVAILABLE, f"instance {self.name}: shared memory: {exc}") from None
        self._load.input = self._inputs.spec()
        self._load.output = self._outputs.spec()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.python, "-m", "inference.worker_main",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                env=self._env(), cwd=str(REPO_ROOT), start_new_session=True,
            )
            self._reader = asyncio.get_running_loop().create_task(self._read_loop(self._proc))
            reply = await self._call(to_dict(self._load), self.load_timeout_s, during="loading")
            # Mapped by the worker now: drop the names so nothing is left behind in /dev/shm even if
            # both processes are killed later.
            self._inputs.unlink()
            self._outputs.unlink()
            if not reply.get("ok"):
                raise self._error(reply, f"worker could not load {self.version_dir}")
            self._info = dict(reply.get("describe") or {})
            self._info["load_s"] = reply.get("load_s")
            self._fixed = self._usable_fixed_sizes(reply.get("batch_sizes"))
            if self._fixed and self._fixed[-1] < self.max_batch_size:
                LOG.warning("instance %s: model has fixed batch sizes %s, so batches are capped at %d",
                            self.name, self._fixed, self._fixed[-1])
                self.max_batch_size = self._fixed[-1]
            warm = self._warmup_list()
            reply = await self._call(to_dict(WarmupRequest(warm)), self.load_timeout_s, during="warm-up")
            if not reply.get("ok"):
                raise self._error(reply, "warm-up failed")
            self._info["warmup_s"] = reply.get("timings")
        except BaseException:
            await self._reap()
            raise
        self._started_at = time.monotonic()
        self.ready = True

    def _usable_fixed_sizes(self, sizes: Sequence[int] | None) -> list[int] | None:
        """The model's fixed batch sizes that fit the shared input array (``max_batch_size`` rows); a
        larger one would be padded past what the worker accepts. ServingError when none fits."""
        if not sizes:
            return None
        fixed = sorted(int(s) for s in sizes)
        usable = [s for s in fixed if s <= self.max_batch_size]
        if not usable:
            raise ServingError(
                ErrorKind.INVALID_ARGUMENT,
                f"instance {self.name}: the model's fixed batch sizes {fixed} are all above the maximum "
                f"batch size {self.max_batch_size}; raise --max-batch-size to at least {fixed[0]}",
            )
        if len(usable) < len(fixed):
            LOG.warning("instance %s: fixed batch sizes %s exceed the maximum batch size %d and are not used",
                        self.name, [s for s in fixed if s > self.max_batch_size], self.max_batch_size)
        return usable

    def _warmup_list(self) -> list[int]:
        if self._fixed:
            sizes = [s for s in self._fixed if s <= self.max_batch_size]
        elif self._warmup_sizes:
            sizes = [s for s in self._warmup_sizes if 1 <= s <= self.max_batch_size]
        else:
            sizes = [1, self.max_batch_size]
        return sorted(set(sizes))

    async def _reap(self) -> None:
        """Kill and wait for the current worker (if any) and release its shared memory."""
        self.ready = False
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            try:  # bounded: a process stuck in the kernel (D state) must not hang a restart or a stop
                await asyncio.wait_for(proc.wait(), REAP_TIMEOUT_S)
            except TimeoutError:
                LOG.error("instance %s: worker %s has not exited %.0f s after SIGKILL; going on without it",
                          self.name, proc.pid, REAP_TIMEOUT_S)
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        for arr in (self._inputs, self._outputs):
            if arr is not None:
                arr.close()
        self._inputs = self._outputs = None

    async def _read_loop(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while True:
                header = await proc.stdout.readexactly(HEADER.size)
                body = await proc.stdout.readexactly(decode_length(header))
                message = decode_body(body)
                fut = self._pending.pop(message.pop("id", None), None)
                if fut is not None and not fut.done():
                    fut.set_result(message)
                else:  # a reply to a request given up on (cancelled, timed out): never the next one's
                    LOG.warning("instance %s: dropped a late reply from the worker (%s)", self.name,
                                message.get("op") or message.get("error") or "ok")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # EOF (worker gone) or a broken frame
            await self._on_worker_lost(proc, exc)

    async def _on_worker_lost(self, proc: asyncio.subprocess.Process, exc: BaseException) -> None:
        self.ready = False
        try:
            returncode = await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:  # stdout closed or garbled but the process lives on: end it
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            returncode = await proc.wait()
        reason = _exit_reason(returncode)
        if not isinstance(exc, asyncio.IncompleteReadError):
            reason += f" ({type(exc).__name__}: {exc})"
        self._lost_reason = reason
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(
                    ServingError(ErrorKind.UNAVAILABLE, f"worker {proc.pid} of {self.name} {reason}",
                                 reason="worker_died")
                )
        if self._stopping or proc is not self._proc:
            return
        if self._serving and self.down_since is None:
            self.down_since = time.monotonic()
        LOG.error("instance %s: worker %s %s", self.name, proc.pid, reason)
        if self._serving and self.restart_enabled and self._restart_task is None:
            self._restart_task = asyncio.get_running_loop().create_task(self._restart_loop())

    async def _restart_loop(self) -> None:
        try:
            if time.monotonic() - self._started_at > STABLE_AFTER_S:
                self._backoff = self.backoff_s[0]
            while not self._stopping:
                LOG.warning("instance %s: restarting its worker in %.1f s", self.name, self._backoff)
                await asyncio.sleep(self._backoff)
                self._backoff = min(self.backoff_s[1], self._backoff * 2)
                try:
                    async with self._lock:
                        await self._spawn_and_load()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # any failure (OSError from spawning too) is retried, counted
                    self.restart_failures += 1
                    why = exc.message if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
                    LOG.error("instance %s: restart failed (%d so far, down for %.0f s): %s", self.name,
                              self.restart_failures, self.down_for(), why)
                    continue
                self.down_since = None
                self.restarts += 1
                LOG.warning("instance %s: worker restarted (pid %s, restart %d)", self.name, self.pid,
                            self.restarts)
                return
        finally:
            self._restart_task = None

    # -- messaging -----------------------------------------------------------------------------------
    async def _call(self, message: dict[str, Any], timeout_s: float, during: str) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            state = "is not running" if proc is None else _exit_reason(proc.returncode)
            raise ServingError(ErrorKind.UNAVAILABLE, f"worker of {self.name} {state}", reason="worker_died")
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        request_id = next(self._ids)
        message = {**message, "id": request_id}
        self._pending[request_id] = fut
        try:
            proc.stdin.write(encode(message))
            await proc.stdin.drain()
        except (ConnectionError, RuntimeError):
            pass  # the worker is gone: the read loop fails ``fut`` with the exit reason
        reader = self._reader
        if not fut.done() and (reader is None or reader.done()):  # it is gone and nobody will answer
            self._pending.pop(request_id, None)
            raise ServingError(ErrorKind.UNAVAILABLE, f"worker of {self.name} {self._lost_reason}",
                               reason="worker_died")
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            LOG.error("instance %s: worker %s hung for %.0f s during %s, killing it",
                      self.name, proc.pid, timeout_s, during)
            self.ready = False
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise ServingError(
                ErrorKind.UNAVAILABLE,
                f"worker of {self.name} did not answer within {timeout_s:.0f} s during {during}",
                reason="worker_timeout",
            ) from None
        finally:
            self._pending.pop(request_id, None)

    def _error(self, reply: dict[str, Any], context: str) -> ServingError:
        try:
            kind = ErrorKind(reply.get("error"))
        except ValueError:
            kind = ErrorKind.INTERNAL
        reason = "runtime_error" if kind is ErrorKind.INTERNAL else None
        return ServingError(kind, f"{context}: {reply.get('message', 'no message')}", reason=reason)

    def _not_ready(self) -> ServingError:
        return ServingError(ErrorKind.UNAVAILABLE, f"instance {self.name} is not ready", reason="not_ready")

    def _padded_size(self, n: int) -> int:
        if not self._fixed:
            return n
        for size in self._fixed:
            if size >= n:
                return size
        raise ServingError(
            ErrorKind.INVALID_ARGUMENT, f"batch of {n} exceeds the model's fixed sizes {self._fixed}"
        )

    def _write_batch(self, dest: np.ndarray, batch: np.ndarray | Sequence[np.ndarray], n: int) -> None:
        item_shape = dest.shape[1:]
        if isinstance(batch, np.ndarray):
            if (
                batch.ctypes.data == dest.ctypes.data
                and batch.shape[1:] == item_shape
                and batch.dtype == dest.dtype
                and batch.flags.c_contiguous
            ):
                return  # filled in place through batch_buffer()
            if batch.shape[1:] != item_shape:
                raise ServingError(
                    ErrorKind.INVALID_ARGUMENT,
                    f"batch shape {batch.shape} does not match the model input [N, *{item_shape}]",
                )
            np.copyto(dest[:n], batch, casting="same_kind")
            return
        for i, item in enumerate(batch):
            arr = np.asarray(item)
            if arr.shape != item_shape:
                raise ServingError(ErrorKind.INVALID_ARGUMENT,
                                   f"image {i} has shape {arr.shape}, the model takes {item_shape}")
            np.copyto(dest[i], arr, casting="same_kind")
