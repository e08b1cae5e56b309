"""The load generator behind ``ddrnet bench`` (in the spirit of Triton's perf_analyzer).

One *level* is a closed loop at a concurrency (``C`` requests always in flight: each sender sends
its next request as soon as its last one is answered) or an open loop at a request rate (requests
start on a constant or Poisson schedule whatever the answers do, at most ``max_outstanding`` in
flight; a request the schedule cannot start is counted as ``client_backlog``). Each request carries
``batch_size`` real encoded images, taken round-robin from the payload.

A level runs a warm-up, then a fixed measurement window; a request counts in the window when it
*finishes* inside it. Reported: throughput (images answered per second), latency percentiles of the
successful requests, errors by kind (:mod:`clients.errors` kinds), the bench process's own CPU time
per request (it shares the machine with the server), and the server-side split from ``/metrics``
(:mod:`ops.bench_metrics`). Everything is bounded in time: after the window the level waits for
the requests still in flight at most their timeout.

Protocols: ``grpc`` and ``http`` (the classify APIs), ``oip-http`` and ``oip-grpc`` (Open Inference
Protocol v2 ``infer`` with the ``images`` BYTES input). Clients never retry here: a refusal is a
measured error.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clients.errors import ClientError
from ops import bench_metrics

log = logging.getLogger(__name__)

PROTOCOLS = ("grpc", "http", "oip-grpc", "oip-http")
PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class Level:
    """One load level: ``concurrency`` (closed loop) or ``rate`` requests/s (open loop)."""

    concurrency: int | None = None
    rate: float | None = None
    distribution: str = "constant"  # open loop: constant | poisson

    @property
    def label(self) -> str:
        return f"c={self.concurrency}" if self.concurrency is not None else f"r={self.rate:g}/s"


@dataclass
class _Record:
    end: float
    latency: float
    images: int
    error: str = ""


@dataclass
class LevelResult:
    protocol: str
    level: Level
    window_s: float
    requests: int
    images: int
    throughput: float  # images answered per second in the window
    request_rate: float
    latency_ms: dict[str, float]
    errors: dict[str, int]
    client_cpu_ms_per_request: float | None
    server: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "mode": "closed" if self.level.concurrency is not None else "open",
            "concurrency": self.level.concurrency,
            "request_rate_target": self.level.rate,
            "window_s": round(self.window_s, 3),
            "requests": self.requests,
            "images": self.images,
            "throughput_img_s": round(self.throughput, 3),
            "request_rate": round(self.request_rate, 3),
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms.items()},
            "errors": dict(self.errors),
            "client_cpu_ms_per_request": (
                None if self.client_cpu_ms_per_request is None else round(self.client_cpu_ms_per_request, 3)
            ),
            "server": self.server,
            **self.extra,
        }


Sender = Callable[[int], Awaitable[int]]


def make_sender(client: Any, protocol: str, payload: Sequence[bytes], batch_size: int) -> Sender:
    """``send(i)``: request ``i`` with ``batch_size`` payload images (round-robin); returns how many
    images were answered; raises ClientError."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if not payload:
        raise ValueError("no payload images")
    n = len(payload)
    batches = [[payload[(i * batch_size + j) % n] for j in range(batch_size)] for i in range(n)]

    if protocol.startswith("oip"):
        async def send(i: int) -> int:
            logits = await client.infer_images(batches[i % n])
            return int(logits.values.shape[0])
    else:
        async def send(i: int) -> int:
            return len(await client.classify_batch(batches[i % n]))

    return send


def _percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    values = np.asarray(latencies) * 1000.0
    out = {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}
    out["mean"] = float(values.mean())
    out["max"] = float(values.max())
    return out


async def run_level(
    send: Sender,
    level: Level,
    *,
    protocol: str,
    warmup_s: float,
    measure_s: float,
    drain_s: float,
    scrape: Callable[[], Awaitable[str]] | None = None,
    model: str = "",
    max_outstanding: int = 1024,
    seed: int = 0,
) -> LevelResult:
    """Run one level and summarise its measurement window (see the module docstring)."""
    records: list[_Record] = []
    stop = asyncio.Event()
    counter = iter(range(1 << 62))
    tasks: set[asyncio.Task] = set()
    backlog_skips: list[float] = []

    async def one() -> None:
        started = time.perf_counter()
        try:
            images = await send(next(counter))
            records.append(_Record(time.perf_counter(), time.perf_counter() - started, images))
        except ClientError as exc:
            records.append(_Record(time.perf_counter(), time.perf_counter() - started, 0, exc.kind))
        except Exception as exc:  # a bug or an unreadable answer: count it, keep measuring
            log.debug("request failed unexpectedly", exc_info=True)
            records.append(_Record(time.perf_counter(), time.perf_counter() - started, 0, type(exc).__name__))

    async def closed_worker() -> None:
        while not stop.is_set():
            await one()

    async def open_scheduler() -> None:
        rng = random.Random(seed)
        assert level.rate is not None
        next_at = time.perf_counter()
        while not stop.is_set():
            now = time.perf_counter()
            if next_at > now:
                await asyncio.sleep(next_at - now)
                continue
            if len(tasks) < max_outstanding:
                task = asyncio.get_running_loop().create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            else:
                backlog_skips.append(now)
            next_at += rng.expovariate(level.rate) if level.distribution == "poisson" else 1.0 / level.rate

    loop = asyncio.get_running_loop()
    if level.concurrency is not None:
        drivers = [loop.create_task(closed_worker()) for _ in range(level.concurrency)]
    else:
        drivers = [loop.create_task(open_scheduler())]
    try:
        await asyncio.sleep(warmup_s)
        before = bench_metrics.parse(await scrape()) if scrape is not None else None
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(measure_s)
        t1, cpu1 = time.perf_counter(), time.process_time()
        after = bench_metrics.parse(await scrape()) if scrape is not None else None
        t_scraped = time.perf_counter()
    finally:
        stop.set()
        pending = [*drivers, *tasks]
        _, still = await asyncio.wait(pending, timeout=drain_s) if pending else (set(), set())
        for task in still:
            task.cancel()
        if still:
            await asyncio.gather(*still, return_exceptions=True)

    window = [r for r in records if t0 <= r.end <= t1]
    ok = [r for r in window if not r.error]
    errors = Counter(r.error for r in window if r.error)
    skipped = sum(t0 <= t <= t1 for t in backlog_skips)
    if skipped:
        errors["client_backlog"] = skipped
    window_s = t1 - t0
    server = None
    if before is not None and after is not None:
        # the scrape after the window took a moment: the server's counters saw a little more
        server = bench_metrics.split(before, after, model, t_scraped - t0)
    return LevelResult(
        protocol=protocol,
        level=level,
        window_s=window_s,
        requests=len(window),
        images=sum(r.images for r in ok),
        throughput=sum(r.images for r in ok) / window_s,
        request_rate=len(window) / window_s,
        latency_ms=_percentiles([r.latency for r in ok]),
        errors=dict(errors),
        client_cpu_ms_per_request=1000.0 * (cpu1 - cpu0) / len(window) if window else None,
        server=server,
    )


def parse_levels(concurrency: str | None, rate: str | None, distribution: str = "constant") -> list[Level]:
    """Levels from ``--concurrency 1,4,16`` or ``--request-rate 50,100`` (ValueError naming a bad value)."""
    if concurrency and rate:
        raise ValueError("give --concurrency (closed loop) or --request-rate (open loop), not both")
    if rate:
        levels = []
        for part in rate.split(","):
            try:
                value = float(part)
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"--request-rate values must be positive numbers, got {part!r}")
            levels.append(Level(rate=value, distribution=distribution))
        return levels
    levels = []
    for part in (concurrency or "1").split(","):
        if not part.strip().isdigit() or int(part) < 1:
            raise ValueError(f"--concurrency values must be positive integers, got {part!r}")
        levels.append(Level(concurrency=int(part)))
    return levels
