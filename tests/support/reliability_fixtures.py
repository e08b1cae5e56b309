"""Shared pieces of the reliability tests: a real ``ddrnet serve`` process whose workers run the
synthetic model of ``tests/support/slow_runtime.py`` (fast by default, slow on request), test images, and
readers for /metrics and /proc.

:class:`SlowServer` is ``tests.support.server_fixtures.ServerProcess`` (loopback, free ports, bounded
wait for ``ready``, always killed) started through ``slow_runtime.py serve``: the real option parsing,
settings, HTTP and gRPC front ends, batcher, worker processes and shared memory; only the runtime
adapter is the synthetic one, whose service time (``delay_ms``) is known and whose log file records
every image the model was given (``model_log``).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

from tests.support import server_fixtures as sf
from tests.support import slow_runtime

REPO_ROOT = sf.REPO_ROOT

wait_until = sf.wait_until

MODEL = "slow"
LABELS = slow_runtime.LABELS
COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}


class SlowServer(sf.ServerProcess):
    """``ddrnet serve`` on the synthetic model (see the module docstring). ``delay_ms`` is the service
    time of one batch; ``model_log`` (when given) receives one JSON line per batch the model ran."""

    def __init__(self, repository: Path, log_path: Path, *args: str, delay_ms: float = 0.0,
                 model_log: Path | None = None, env: dict[str, str] | None = None,
                 log_level: str = "info", instances: int | None = 1) -> None:
        extra = {slow_runtime.DELAY_ENV: str(delay_ms)}
        if model_log is not None:
            extra[slow_runtime.LOG_ENV] = str(model_log)
        super().__init__(repository, log_path, *args, env={**extra, **(env or {})})
        self.model_log = model_log
        self.log_level = log_level
        self.instances = instances

    def command(self) -> list[str]:
        # One instance unless asked for more (the server's default is derived from the cores): the
        # tests count worker processes and batches.
        fixed = ["--instances", str(self.instances)] if self.instances is not None else []
        return [sys.executable, "-m", "tests.support.slow_runtime", "serve",
                "--model-repository", str(self.repository), "--http-port", "0", "--grpc-port", "0",
                "--poll-interval-s", "0", "--log-level", self.log_level, *fixed, *self.args]

    def seen_means(self) -> list[list[float]]:
        assert self.model_log is not None, "start the server with model_log= to record what it saw"
        return slow_runtime.seen_means(self.model_log)

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace")


def publish(repository: Path, version: int = 1, **kw: Any) -> Path:
    return slow_runtime.publish(repository, MODEL, version, **kw)


# -- images ---------------------------------------------------------------------------------------------


def encode(img: Any, fmt: str = "PNG", **save: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def solid(colour: str | tuple[int, int, int], size: int = 24, fmt: str = "PNG") -> bytes:
    from PIL import Image

    rgb = COLOURS[colour] if isinstance(colour, str) else colour
    return encode(Image.new("RGB", (size, size), rgb), fmt)


# -- metrics and processes ------------------------------------------------------------------------------


def metric(text: str, prefix: str) -> float:
    """Sum of the samples of a Prometheus text exposition whose line starts with ``prefix``."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def vm_kib(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field in KiB (``VmHWM`` peak RSS, ``VmRSS``); 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- an in-process core ---------------------------------------------------------------------------------


class LoopCore:
    """A started :class:`~server.core.DataPlane` on the synthetic model (real worker processes) with its
    own event loop, for synchronous tests (hypothesis) to drive: ``run(coro)`` runs on that loop."""

    def __init__(self, repository: Path, **overrides: Any) -> None:
        import asyncio

        from prometheus_client import CollectorRegistry

        from server.core import DataPlane
        from server.metrics import ServerMetrics
        from server.model_manager import ModelManager
        from server.preprocessing import Preprocessor

        self.loop = asyncio.new_event_loop()
        settings = sf.settings_for(repository, **overrides)
        metrics = ServerMetrics(CollectorRegistry())
        self.manager = ModelManager(settings, metrics, runtime=slow_runtime.RUNTIME_SPEC)
        self.preprocessor = Preprocessor(settings.preprocess_workers, settings.max_decode_memory_bytes)
        self.core = DataPlane(settings, self.manager, self.preprocessor, metrics)
        self.run(self.manager.start())

    def run(self, coro: Any, timeout_s: float = 60.0) -> Any:
        import asyncio

        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout_s))

    def close(self) -> None:
        import asyncio

        try:
            self.run(self.manager.close())
        finally:
            self.preprocessor.close()
            leftovers = asyncio.all_tasks(self.loop)  # what asyncio.run would cancel at its end
            for task in leftovers:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            self.loop.close()


# -- steady traffic -------------------------------------------------------------------------------------


class Traffic:
    """Background clients (alternately HTTP classify and gRPC Classify, one image each, colours cycling)
    recording every answer as ``(protocol, status, model_version, correct)`` until :meth:`stop`.
    Each client's loop is bounded (``max_requests``)."""

    def __init__(self, server: sf.ServerProcess, clients: int = 2, max_requests: int = 5000) -> None:
        import threading

        self.server = server
        self.answers: list[tuple[str, str, str, bool]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i, max_requests), daemon=True)
                         for i in range(clients)]
        for thread in self._threads:
            thread.start()

    def _client(self, index: int, max_requests: int) -> None:
        import grpc
        import httpx

        from protos import classify_pb2, classify_pb2_grpc

        colours = list(COLOURS)
        with httpx.Client(base_url=self.server.http_url, timeout=60) as http, \
                grpc.insecure_channel(self.server.grpc_target) as channel:
            stub = classify_pb2_grpc.ClassifyStub(channel)
            for n in range(max_requests):
                if self._stop.is_set():
                    return
                colour = colours[(index + n) % len(colours)]
                image = solid(colour)
                if (index + n) % 2 == 0:
                    try:
                        r = http.post(f"/v1/models/{MODEL}/classify", content=image,
                                      headers={"content-type": "image/png"})
                    except httpx.HTTPError as exc:
                        self.answers.append(("http", type(exc).__name__, "", False))
                        continue
                    if r.status_code != 200:
                        self.answers.append(("http", str(r.status_code), r.text[:200], False))
                        continue
                    body = r.json()
                    label = body["results"][0]["predictions"][0]["label"]
                    self.answers.append(("http", "200", body["model_version"], label == colour))
                else:
                    request = classify_pb2.ClassifyRequest(model_name=MODEL, images=[image])
                    try:
                        reply = stub.Classify(request, timeout=60)
                    except grpc.RpcError as err:
                        self.answers.append(("grpc", err.code().name, err.details() or "", False))
                        continue
                    label = reply.results[0].predictions[0].label
                    self.answers.append(("grpc", "OK", reply.model_version, label == colour))

    def count(self) -> int:
        return len(self.answers)

    def wait_for(self, more: int, timeout_s: float = 60.0) -> bool:
        """Wait (bounded) until ``more`` answers beyond the current count have arrived."""
        target = self.count() + more
        return sf.wait_until(lambda: self.count() >= target, timeout_s, 0.02)

    def stop(self) -> list[tuple[str, str, str, bool]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)
        return list(self.answers)

    def failures(self) -> list[tuple[str, str, str, bool]]:
        return [a for a in self.answers if a[1] not in ("200", "OK") or not a[3]]
