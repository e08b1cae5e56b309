"""The server process: HTTP (uvicorn) and gRPC (grpc.aio) in one event loop, around one DataPlane.

Lifecycle (:func:`serve`):

1. log the effective configuration (secrets masked); bind HTTP and gRPC (a port of 0 picks a free one;
   ``grpc_port`` -1 disables gRPC) and print the bound URLs on stdout; health answers from now on:
   live, not ready;
2. load and warm every model (:meth:`ModelManager.start`); a model that cannot be loaded at all (a
   missing device, a broken runtime) is a start-up error (:class:`StartupError`, which ``ddrnet
   serve`` prints as one line naming the model and the cause, exit status 2); then start polling
   the repository and print ``ready``;
3. on SIGTERM or SIGINT: stop accepting (readiness 503 / NOT_SERVING, new requests UNAVAILABLE) while
   the listeners stay open, finish everything queued and in flight (bounded by
   ``shutdown_timeout_s``), stop the workers, let the front ends send the last responses, exit 0.
   A second signal cuts the drain short (exit 1), unless it comes within ``SAME_STOP_WINDOW_S`` of
   the first (the same request delivered twice: to the process group and forwarded).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import uvicorn

from inference import shm
from server.core import DataPlane
from server.grpc_api import HealthReporter, create_server
from server.http_api import create_app
from server.metrics import ServerMetrics
from server.model_manager import ModelManager, StartupError
from server.preprocessing import Preprocessor
from server.settings import ServerSettings
from server.tracing import Tracing, TracingUnavailableError, tracing_config

log = logging.getLogger(__name__)

HEALTH_SYNC_S = 0.5
# Signals this close to the first are one stop request: Ctrl-C or systemd's SIGTERM reach every
# process of the group, so a server under `ddrnet quickstart` (which forwards SIGTERM) or a wrapper
# script gets the same request twice within milliseconds, and must still drain.
SAME_STOP_WINDOW_S = 1.0
FRONT_END_GRACE_S = 5.0  # after the drain: time for the front ends to send the last responses
SECRET_FIELDS = ("auth_token",)


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: this module owns SIGTERM/SIGINT for both front ends."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def describe_settings(settings: ServerSettings) -> dict[str, Any]:
    """The effective settings as JSON-ready values, secrets masked."""
    data = settings.model_dump(mode="json")
    for name in SECRET_FIELDS:
        if data.get(name):
            data[name] = "***"
    return data


def _bind_http(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise StartupError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror or exc}") from None
    # create_server() leaves the protocol number 0, so asyncio does not set TCP_NODELAY on accepted
    # connections; accepted sockets inherit it from the listener on Linux. Without it every
    # keep-alive response waits ~40 ms for the client's delayed ACK (measured: p50 84 -> 40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _warn_on_pure_python_protobuf() -> None:
    """gRPC messages parse several times slower in protobuf's pure-Python implementation than in
    upb. Importing MindSpore sets PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python in its process and so
    in every process it starts; a server launched from one inherits it without anyone asking."""
    from google.protobuf.internal import api_implementation

    if api_implementation.Type() == "python":
        log.warning("protobuf runs its pure-Python implementation (PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="
                    "python, which importing MindSpore sets for its child processes): gRPC parsing is "
                    "slower; unset the variable to use upb")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _start_tracing(settings: ServerSettings) -> Tracing | None:
    """The server's tracer provider when tracing is configured (server.tracing), else None."""
    try:
        config = tracing_config(settings.otel_endpoint, settings.otel_protocol)
        return Tracing.start(config) if config is not None else None
    except (ValueError, TracingUnavailableError) as exc:
        raise StartupError(f"tracing: {exc}") from None


async def serve(
    settings: ServerSettings,
    *,
    runtime: str | None = None,
    extra_pythonpath: Sequence[str] = (),
    out: TextIO = sys.stdout,
) -> int:
    """Run the server until a signal; returns the process exit status (see the module docstring).

    ``runtime``/``extra_pythonpath``: a custom ``module:Class`` runtime for the workers (tests).
    Raises StartupError when the server cannot start (port in use, a model that cannot load).
    """
    log.info("effective configuration: %s", json.dumps(describe_settings(settings), sort_keys=True))
    _warn_on_pure_python_protobuf()
    for path in shm.remove_stale():
        log.warning("removed shared memory left by a server that is gone: %s", path)
    tracing = _start_tracing(settings)
    metrics = ServerMetrics(process_collectors=True)
    manager = ModelManager(settings, metrics, runtime=runtime, extra_pythonpath=extra_pythonpath,
                           tracing=tracing)
    preprocessor = Preprocessor(settings.preprocess_workers or 1, settings.max_decode_memory_bytes)
    core = DataPlane(settings, manager, preprocessor, metrics, tracing=tracing)
    health = HealthReporter(core)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    force = asyncio.Event()

    first_signal_at = 0.0

    def on_signal(signum: int) -> None:
        nonlocal first_signal_at
        name = signal.Signals(signum).name
        if not stop.is_set():
            log.warning("%s received: draining", name)
            first_signal_at = time.monotonic()
            stop.set()
        elif time.monotonic() - first_signal_at < SAME_STOP_WINDOW_S:
            log.info("%s again within %.0f s of the first signal: one stop request", name, SAME_STOP_WINDOW_S)
        else:
            log.warning("second %s: stopping without waiting for the drain", name)
            force.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    http_socket = _bind_http(settings.http_host, settings.http_port)
    http_port = http_socket.getsockname()[1]
    tls = settings.tls_cert is not None
    config = uvicorn.Config(
        create_app(core),
        log_config=None,
        access_log=settings.access_log or settings.log_level == "debug",
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=int(FRONT_END_GRACE_S),
        ssl_certfile=str(settings.tls_cert) if tls else None,
        ssl_keyfile=str(settings.tls_key) if tls else None,
    )
    http = _UvicornServer(config)
    http_task = loop.create_task(http.serve(sockets=[http_socket]))
    grpc_server = None
    sync_task: asyncio.Task | None = None
    exit_code = 0
    try:
        for _ in range(500):  # uvicorn starts listening on the bound socket within milliseconds
            if http.started or http_task.done():
                break
            await asyncio.sleep(0.01)
        if http_task.done():
            http_task.result()
            raise StartupError("the HTTP server stopped during start-up")
        scheme = "https" if tls else "http"
        print(f"ddrnet serve: HTTP on {scheme}://{_url_host(settings.http_host)}:{http_port} "
              "(docs /docs, metrics /metrics)", file=out, flush=True)
        if settings.grpc_port >= 0:
            try:
                grpc_server, grpc_port = create_server(core, health)
            except (OSError, RuntimeError) as exc:
                raise StartupError(
                    f"cannot listen for gRPC on {settings.grpc_host}:{settings.grpc_port}: {exc}"
                ) from None
            await grpc_server.start()
            print(f"ddrnet serve: gRPC on {_url_host(settings.grpc_host)}:{grpc_port}"
                  f"{' (TLS)' if tls else ''}", file=out, flush=True)
        sync_task = loop.create_task(_keep_health(health, manager))

        loading = loop.create_task(manager.start())
        stopping = loop.create_task(stop.wait())
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not loading.done():  # a signal during loading: stop at once
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, StartupError):
                await loading
        else:
            stopping.cancel()
            loading.result()  # StartupError propagates
            manager.start_polling()
            await health.sync()
            models = ", ".join(f"{m['model']} v{m['version']} ({m['runtime']})" for m in manager.describe())
            print(f"ddrnet serve: ready (models: {models or 'none yet'})", file=out, flush=True)
            await stop.wait()

        core.begin_shutdown()
        await health.shutdown()
        drain = loop.create_task(manager.drain(settings.shutdown_timeout_s))
        forced = loop.create_task(force.wait())
        await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
        if drain.done():
            forced.cancel()
            if not drain.result():
                log.warning("shutdown timeout (%.0f s) passed: unfinished requests were failed",
                            settings.shutdown_timeout_s)
        else:
            exit_code = 1
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
        log.info("drained; closing the front ends")
    finally:
        if sync_task is not None:
            sync_task.cancel()
        await manager.close()
        http.should_exit = True
        if grpc_server is not None:
            await grpc_server.stop(FRONT_END_GRACE_S)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(http_task, FRONT_END_GRACE_S + 5)
        preprocessor.close()
        core.close()
        if tracing is not None:  # flush the spans still buffered (bounded by the exporter's timeout)
            await asyncio.to_thread(tracing.shutdown)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    print("ddrnet serve: stopped", file=out, flush=True)
    return exit_code


async def _keep_health(health: HealthReporter, manager: ModelManager) -> None:
    """Keep the gRPC health statuses and the worker-restart counter current."""
    while True:
        try:
            await health.sync()
            manager.refresh_metrics()
        except Exception:  # bookkeeping must never end the server
            log.exception("health sync failed")
        await asyncio.sleep(HEALTH_SYNC_S)
