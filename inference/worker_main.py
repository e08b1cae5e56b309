"""A runtime worker process: one model instance, driven by the server over ``inference.worker_protocol``.

Started by ``inference.worker_client.WorkerInstance`` as ``PYTHON -m inference.worker_main`` with
PYTHONPATH at the repository root, possibly under another interpreter (Python 3.7 for PyPI's
mindspore-lite), so this module and its imports are Python 3.7 compatible and need only numpy plus the
runtime's own library. The model's ``model.json`` arrives in the ``load`` message and is read with the
one typed reader (``model.manifest``) before a runtime sees it. It reads requests from stdin and answers
on the original stdout; before anything else it points file descriptor 1 at stderr, so whatever a
runtime library prints (Lite's converter prints its result) cannot corrupt the protocol.

A runtime exception in one batch is answered as an ``internal`` error for that batch and the worker
carries on. The worker exits when told to (``shutdown``) or when its stdin closes (server gone).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from inference import runtimes
from inference.errors import ErrorKind
from inference.precision import runtimes_for
from inference.runtimes.base import ModelFileError, Runtime, RuntimeUnavailableError
from inference.shm import ShmArray
from inference.worker_protocol import (
    InferRequest,
    LoadRequest,
    ProtocolError,
    ShutdownRequest,
    WarmupRequest,
    error,
    ok,
    parse_request,
    read_message,
    write_message,
)
from model.manifest import ModelManifest

LOG = logging.getLogger("inference.worker")
MAX_ERROR_CHARS = 2000


def _kind_of(exc: BaseException, op: Any) -> str:
    """The error kind of a failed request. Anything that fails while running a batch (``infer``,
    ``warmup``) is the server's fault, whatever the exception type: INTERNAL, never the client's
    INVALID_ARGUMENT. At ``load``, a missing library, device or file is UNAVAILABLE and a bad option
    or manifest INVALID_ARGUMENT."""
    if op in ("infer", "warmup"):
        return ErrorKind.INTERNAL.value
    if isinstance(exc, (RuntimeUnavailableError, ModelFileError)):
        return ErrorKind.UNAVAILABLE.value
    if isinstance(exc, (ValueError, ProtocolError)):
        return ErrorKind.INVALID_ARGUMENT.value
    return ErrorKind.INTERNAL.value


def _message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


class Worker:
    """The state of one worker: its runtime and its two shared-memory arrays."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.inputs: ShmArray | None = None
        self.outputs: ShmArray | None = None

    # -- requests ------------------------------------------------------------------------------------
    def load(self, req: LoadRequest) -> dict[str, Any]:
        if self.runtime is not None:
            raise ValueError("this worker already holds a model")
        logging.getLogger().setLevel(req.log_level.upper())
        self.inputs = ShmArray.from_spec(req.input)
        self.outputs = ShmArray.from_spec(req.output)
        options = dict(req.options)
        if req.threads is not None:
            options["threads"] = req.threads
        manifest = ModelManifest.from_dict(req.manifest)  # ManifestError (a ValueError) names the field
        start = time.perf_counter()
        precision = str(options.get("precision") or "fp32")
        names = (
            runtimes.auto_candidates(req.version_dir, manifest, precision, req.device)
            if req.runtime == "auto"
            else [runtimes.select_runtime(req.runtime, req.version_dir, manifest, precision, req.device)]
        )
        if not names:
            served = ", ".join(runtimes_for(precision, req.device)) or "none"
            raise RuntimeUnavailableError(
                f"runtime auto found no runtime for precision {precision} on {req.device} in Python "
                f"{sys.version.split()[0]} (served by {served}; each needs its library, its file and, "
                "below fp32, the export's verification)"
            )
        failures = []
        for name in names:
            runtime = runtimes.create_runtime(name)
            try:
                runtime.load(req.version_dir, manifest, req.device, req.device_id, options)
            except (RuntimeUnavailableError, ModelFileError) as exc:
                if req.runtime != "auto" or name == names[-1]:
                    if failures:
                        raise type(exc)(f"{exc} (after: {'; '.join(failures)})") from None
                    raise
                failures.append(f"{name}: {exc}")
                LOG.warning("runtime auto: %s cannot load this model (%s); trying the next one", name, exc)
                continue
            self.runtime = runtime
            break
        assert self.runtime is not None
        load_s = time.perf_counter() - start
        info = self.runtime.describe()
        info["python"] = sys.version.split()[0]
        if req.runtime == "auto":
            info["chosen_by"] = "auto"
        LOG.info("loaded %s in %.2f s: %s", req.version_dir, load_s, info)
        return ok(op="ready", describe=info, batch_sizes=self.runtime.supported_batch_sizes,
                  load_s=load_s, pid=os.getpid())

    def _run(self, n: int) -> tuple[int, ...]:
        assert self.runtime is not None and self.inputs is not None and self.outputs is not None
        logits = self.runtime.infer(self.inputs.array[:n])
        expected = (n, *self.outputs.shape[1:])
        if tuple(logits.shape) != expected:
            raise RuntimeError(f"runtime returned logits of shape {logits.shape}, expected {expected}")
        self.outputs.array[:n] = logits
        return tuple(logits.shape)

    def _check_n(self, n: Any) -> int:
        if self.runtime is None or self.inputs is None:
            raise ValueError("no model loaded: send load first")
        limit = self.inputs.shape[0]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
            raise ValueError(f"batch size must be an integer in 1..{limit}, got {n!r}")
        sizes = self.runtime.supported_batch_sizes
        if sizes is not None and n not in sizes:
            raise ValueError(f"batch size {n} is not one of this model's fixed sizes {sizes}")
        return n

    def infer(self, req: InferRequest) -> dict[str, Any]:
        n = self._check_n(req.n)
        start = time.perf_counter()
        shape = self._run(n)
        return ok(shape=list(shape), infer_s=time.perf_counter() - start)

    def warmup(self, req: WarmupRequest) -> dict[str, Any]:
        timings = {}
        for size in req.batch_sizes:
            n = self._check_n(size)
            self.inputs.array[:n] = 0.0  # type: ignore[union-attr]
            start = time.perf_counter()
            self._run(n)
            timings[str(n)] = time.perf_counter() - start
        return ok(timings=timings)

    def shutdown(self) -> dict[str, Any]:
        if self.runtime is not None:
            self.runtime.close()
        for arr in (self.inputs, self.outputs):
            if arr is not None:
                arr.close()
        return ok(op="bye")

    def handle(self, message: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The reply to one message (carrying the request's ``id``) and whether to exit afterwards."""
        reply, done = self._handle(message)
        if "id" in message:
            reply["id"] = message["id"]
        return reply, done

    def _handle(self, message: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        try:
            req = parse_request(message)
            if isinstance(req, ShutdownRequest):
                return self.shutdown(), True
            if isinstance(req, LoadRequest):
                return self.load(req), False
            if isinstance(req, InferRequest):
                return self.infer(req), False
            return self.warmup(req), False
        except Exception as exc:  # one bad request or batch must not take the worker down
            LOG.warning("%s failed: %s", message.get("op"), _message(exc), exc_info=LOG.isEnabledFor(10))
            return error(_kind_of(exc, message.get("op")), _message(exc)), False


def main() -> int:
    # Keep the real stdout for the protocol and send fd 1 (C libraries' printf too) to stderr.
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    proto_in = sys.stdin.buffer
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING,
        format="worker[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    worker = Worker()
    while True:
        try:
            message = read_message(proto_in)
        except ProtocolError as exc:
            LOG.error("bad frame from the server, exiting: %s", exc)
            return 2
        if message is None:  # the server closed our stdin: it is gone or done with us
            worker.shutdown()
            return 0
        reply, done = worker.handle(message)
        try:
            write_message(proto_out, reply)
        except BrokenPipeError:
            return 0
        if done:
            return 0


if __name__ == "__main__":
    sys.exit(main())
