"""Overload: a burst of many times the server's capacity against a real `ddrnet serve` with a small queue
and a slow model instance, then a bounded run to show it serves at full rate again.

What it does (every request bounded by a client timeout):

1. starts ``ddrnet serve`` on the synthetic model of ``tests/support/slow_runtime.py`` (each batch takes
   ``--delay-ms``; real worker processes, batcher, HTTP and gRPC front ends) or, with ``--repository``,
   the real server on a real exported model;
2. a warm-up, then a *before* run: ``--recovery`` requests at a concurrency the queue holds;
3. the burst: ``--burst`` requests released at once (threads behind a barrier), alternately HTTP
   classify and gRPC Classify, one image each, colours cycling so every answer is checkable;
4. the peak RSS (``VmHWM`` of the server and each worker process, from /proc) and /metrics;
5. the *after* run, the same as *before*.

Capacity = ``max_queue_size`` queued images + ``instances x max_batch_size`` in flight. Figures: offered,
accepted, rejected (503 + Retry-After / UNAVAILABLE + grpc-retry-pushback-ms), any other outcome,
latency percentiles of accepted and of rejected requests, the server's own counters (rejections,
requests preprocessed), peak RSS, and the before/after throughput.

``python -m benchmarks.overload`` (defaults: 100 ms batches of up to 2, queue 4, burst 60 = 10x
capacity); ``--json`` prints the figures as JSON. Runs from a checkout: it starts the server with
``tests/server/server_fixtures.ServerProcess``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.support import server_fixtures as sf
from tests.support import slow_runtime
from tests.support.reliability_fixtures import SlowServer

COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}
CLIENT_TIMEOUT_S = 120.0


@dataclass
class Outcome:
    protocol: str
    status: str  # "ok", "rejected" or what else happened
    seconds: float
    correct: bool = False
    retry_hint: str = ""  # Retry-After (s) or grpc-retry-pushback-ms
    message: str = ""


@dataclass
class Figures:
    offered: int
    accepted: int
    rejected: int
    other: int
    wrong_answers: int  # synthetic model only (a real model's labels are not the colours)
    accepted_p50_ms: float
    accepted_p99_ms: float
    rejected_p50_ms: float
    rejected_p99_ms: float
    rejections_with_retry_hint: int
    server_rejected_queue_full: float
    server_requests_preprocessed: float
    peak_rss_mib: dict[str, float]
    rss_growth_mib: float
    before_img_s: float
    after_img_s: float
    after_failures: int
    capacity: int
    settings: dict[str, Any] = field(default_factory=dict)
    other_outcomes: list[str] = field(default_factory=list)


def _image(colour: str) -> bytes:
    return sf.solid_image(COLOURS[colour], size=32)


def _metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def vm_kib(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Load:
    """Sends one-image classify requests over HTTP (httpx) or gRPC and records each outcome."""

    def __init__(self, http_url: str, grpc_target: str, model: str, connections: int,
                 check_labels: bool = True) -> None:
        import grpc
        import httpx

        from protos import classify_pb2_grpc

        self.model = model
        self.check_labels = check_labels  # the synthetic model's labels are the colours
        self.http = httpx.Client(base_url=http_url, timeout=CLIENT_TIMEOUT_S,
                                 limits=httpx.Limits(max_connections=connections + 4))
        self.channel = grpc.insecure_channel(grpc_target)
        self.stub = classify_pb2_grpc.ClassifyStub(self.channel)
        self.images = {c: _image(c) for c in COLOURS}

    def close(self) -> None:
        self.http.close()
        self.channel.close()

    def one(self, protocol: str, colour: str) -> Outcome:
        import grpc
        import httpx

        from protos import classify_pb2

        started = time.monotonic()
        if protocol == "http":
            try:
                response = self.http.post(f"/v1/models/{self.model}/classify", content=self.images[colour],
                                          headers={"content-type": "image/png"}, params={"top_k": 1})
            except httpx.HTTPError as exc:
                return Outcome(protocol, f"client error {type(exc).__name__}", time.monotonic() - started)
            elapsed = time.monotonic() - started
            if response.status_code == 200:
                label = response.json()["results"][0]["predictions"][0]["label"]
                return Outcome(protocol, "ok", elapsed, label == colour or not self.check_labels)
            message = response.text[:200]
            if response.status_code == 503 and "queue is full" in message:
                hint = response.headers.get("retry-after", "")
                return Outcome(protocol, "rejected", elapsed, retry_hint=hint, message=message)
            return Outcome(protocol, f"HTTP {response.status_code}", elapsed, message=message)
        request = classify_pb2.ClassifyRequest(model_name=self.model, images=[self.images[colour]], top_k=1)
        try:
            reply = self.stub.Classify(request, timeout=CLIENT_TIMEOUT_S)
        except grpc.RpcError as err:
            elapsed = time.monotonic() - started
            details = err.details() or ""
            if err.code() is grpc.StatusCode.UNAVAILABLE and "queue is full" in details:
                trailers = dict(err.trailing_metadata() or ())
                hint = trailers.get("grpc-retry-pushback-ms", "")
                return Outcome(protocol, "rejected", elapsed, retry_hint=hint, message=details)
            return Outcome(protocol, f"gRPC {err.code().name}", elapsed, message=details)
        label = reply.results[0].predictions[0].label
        return Outcome(protocol, "ok", time.monotonic() - started, label == colour or not self.check_labels)

    def burst(self, count: int, protocols: list[str]) -> list[Outcome]:
        """``count`` requests released together (one thread each, behind a barrier)."""
        colours = list(COLOURS)
        outcomes: list[Outcome | None] = [None] * count
        barrier = threading.Barrier(count)

        def send(i: int) -> None:
            barrier.wait(timeout=60)
            outcomes[i] = self.one(protocols[i % len(protocols)], colours[i % len(colours)])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(CLIENT_TIMEOUT_S + 60)
        return [o if o is not None else Outcome("?", "no answer", CLIENT_TIMEOUT_S) for o in outcomes]

    def steady(self, count: int, concurrency: int, protocols: list[str]) -> tuple[list[Outcome], float]:
        """``count`` requests from ``concurrency`` closed-loop clients; (outcomes, wall seconds)."""
        colours = list(COLOURS)
        outcomes: list[Outcome] = []
        lock = threading.Lock()
        counter = iter(range(count))

        def client() -> None:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                outcome = self.one(protocols[i % len(protocols)], colours[i % len(colours)])
                with lock:
                    outcomes.append(outcome)

        started = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(CLIENT_TIMEOUT_S * 4)
        return outcomes, time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def peak_rss(server_pid: int) -> dict[str, float]:
    """VmHWM (peak RSS) in MiB of the server and each of its worker processes."""
    out = {"server": vm_kib(server_pid, "VmHWM") / 1024}
    for i, pid in enumerate(sf.worker_pids(server_pid)):
        out[f"worker{i}"] = vm_kib(pid, "VmHWM") / 1024
    return out


def run(*, delay_ms: float = 100.0, max_batch_size: int = 2, max_queue_size: int = 4, instances: int = 1,
        burst: int = 60, recovery: int = 40, protocols: tuple[str, ...] = ("http", "grpc"),
        repository: Path | None = None, model: str = "slow", workdir: Path | None = None,
        server_args: tuple[str, ...] = (), model_log: Path | None = None) -> tuple[Figures, list[Outcome]]:
    """Run the scenario of the module docstring; returns the figures and the burst's outcomes.

    ``model_log``: where the synthetic model records every batch it ran (see slow_runtime.py).
    """
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir or tmp)
        args = ["--max-batch-size", str(max_batch_size), "--max-queue-size", str(max_queue_size),
                "--instances", str(instances), "--threads-per-instance", "1", "--preprocess-workers", "2",
                *server_args]
        if repository is None:
            repo = work / "repo"
            slow_runtime.publish(repo, model)
            server = SlowServer(repo, work / "server.log", *args, delay_ms=delay_ms, model_log=model_log,
                                log_level="warning", instances=None)
        else:
            server = sf.ServerProcess(repository, work / "server.log", *args)
        server.start()
        capacity = max_queue_size + instances * max_batch_size
        load = Load(server.http_url, server.grpc_target, model, connections=burst,
                    check_labels=repository is None)
        try:
            proto = list(protocols)
            load.steady(2 * capacity, 2, proto)  # warm-up (connections, code paths)
            rss_before = sum(peak_rss(server.pid).values())  # MiB, after the warm-up
            before, before_s = load.steady(recovery, max(1, max_queue_size), proto)
            metrics_before = load.http.get("/metrics").text
            outcomes = load.burst(burst, proto)
            rss = peak_rss(server.pid)
            metrics_after = load.http.get("/metrics").text
            after, after_s = load.steady(recovery, max(1, max_queue_size), proto)
        finally:
            load.close()
            server.kill()

    def delta(prefix: str) -> float:
        return _metric(metrics_after, prefix) - _metric(metrics_before, prefix)

    accepted = [o for o in outcomes if o.status == "ok"]
    rejected = [o for o in outcomes if o.status == "rejected"]
    other = [o for o in outcomes if o.status not in ("ok", "rejected")]
    figures = Figures(
        offered=len(outcomes), accepted=len(accepted), rejected=len(rejected), other=len(other),
        wrong_answers=sum(not o.correct for o in accepted),
        accepted_p50_ms=1000 * percentile([o.seconds for o in accepted], 50),
        accepted_p99_ms=1000 * percentile([o.seconds for o in accepted], 99),
        rejected_p50_ms=1000 * percentile([o.seconds for o in rejected], 50),
        rejected_p99_ms=1000 * percentile([o.seconds for o in rejected], 99),
        rejections_with_retry_hint=sum(bool(o.retry_hint) and float(o.retry_hint) > 0 for o in rejected),
        server_rejected_queue_full=delta(f'ddrnet_rejected_total{{model="{model}",reason="queue_full"}}'),
        server_requests_preprocessed=delta(f'ddrnet_preprocess_duration_seconds_count{{model="{model}"'),
        peak_rss_mib={k: round(v, 1) for k, v in rss.items()},
        rss_growth_mib=round(sum(rss.values()) - rss_before, 1),
        before_img_s=round(sum(o.status == "ok" for o in before) / before_s, 1),
        after_img_s=round(sum(o.status == "ok" for o in after) / after_s, 1),
        after_failures=sum(o.status != "ok" or not o.correct for o in after + before),
        capacity=capacity,
        settings={"delay_ms": delay_ms if repository is None else None, "max_batch_size": max_batch_size,
                  "max_queue_size": max_queue_size, "instances": instances, "burst": burst,
                  "recovery": recovery, "protocols": list(protocols),
                  "model": model if repository is None else f"{model} from {repository}"},
        other_outcomes=sorted({f"{o.protocol} {o.status} {o.message[:80]}" for o in other}),
    )
    return figures, outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=100.0, help="service time of one batch (synthetic)")
    parser.add_argument("--max-batch-size", type=int, default=2)
    parser.add_argument("--max-queue-size", type=int, default=4)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--burst", type=int, default=60, help="requests released at once")
    parser.add_argument("--recovery", type=int, default=40, help="requests in the before/after runs")
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--repository", type=Path, help="serve this repository (real runtime) instead")
    parser.add_argument("--model", default="slow", help="model name (with --repository)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    figures, _ = run(delay_ms=args.delay_ms, max_batch_size=args.max_batch_size,
                     max_queue_size=args.max_queue_size, instances=args.instances, burst=args.burst,
                     recovery=args.recovery, protocols=tuple(args.protocols.split(",")),
                     repository=args.repository, model=args.model)
    if args.json:
        print(json.dumps(asdict(figures), indent=2))
        return 0
    f = figures
    print(f"settings: {json.dumps(f.settings)}; capacity {f.capacity} (queue + instances x batch)")
    print(f"offered {f.offered}: accepted {f.accepted} (wrong answers {f.wrong_answers}), rejected "
          f"{f.rejected} ({f.rejections_with_retry_hint} with Retry-After / pushback), other {f.other} "
          f"{f.other_outcomes or ''}")
    print(f"accepted latency p50 {f.accepted_p50_ms:.0f} ms, p99 {f.accepted_p99_ms:.0f} ms; "
          f"rejected p50 {f.rejected_p50_ms:.1f} ms, p99 {f.rejected_p99_ms:.1f} ms")
    print(f"server counters during the burst: rejected queue_full {f.server_rejected_queue_full:.0f}, "
          f"requests preprocessed {f.server_requests_preprocessed:.0f}")
    print(f"peak RSS (VmHWM) MiB: {f.peak_rss_mib}; growth over the before-burst peak {f.rss_growth_mib} MiB")
    print(f"throughput before {f.before_img_s} img/s, after {f.after_img_s} img/s; failures in those runs "
          f"{f.after_failures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
