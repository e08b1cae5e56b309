"""Soak: minutes of mixed, partly hostile traffic against a real `ddrnet serve` while its model is
hot-swapped, its workers are killed and a broken version appears, with everything checked.

The server is the real one (option parsing, settings, HTTP and gRPC front ends, decode pools, batcher,
model manager, worker processes, shared memory) on the synthetic model of
``tests/support/slow_runtime.py`` (``--delay-ms`` per batch): its answer to a solid colour is that
colour, so every answer is checked. Traffic, from parallel clients until the end:

- valid requests, their answers checked: HTTP classify (PNG, JPEG, multipart, JSON base64), gRPC
  Classify and ClassifyStream, OIP v2 infer over HTTP (binary) and gRPC;
- the bad-input corpus (garbage, truncated and unsupported images, bad JSON and base64, wrong
  types, too many images, oversized and gzip-bomb bodies, tensors declaring millions of elements),
  each expecting its documented 4xx / gRPC status;
- uploads cut off mid-body (counted as 499), slow readers (a ClassifyStream read slowly),
  cancelled gRPC calls, and calls whose deadline is too short (504 / DEADLINE_EXCEEDED);
- ``GET /v2/health/live`` every 100 ms, timed.

Chaos, on a schedule: a new version is published every ``--swap-every-s`` (a hot swap), a worker
process is SIGKILLed every ``--kill-every-s``, and once a half-written version (its ``model.json``
cut in half) appears. At the end: SIGTERM and the exit status.

Reported (JSON on stdout, a summary on stderr): requests by kind and outcome; wrong answers; 5xx other
than the documented ones (503 with Retry-After or a known reason, 504 for deadlines); lost requests
(accepted and never answered: client timeouts); RSS and open-file drift of the server between the
end of the warm-up and the end; shared-memory files left; the slowest liveness answer; the exit code.

    python -m benchmarks.soak --minutes 10 --json soak.json

Loopback only, every loop and request bounded in time.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import gzip
import io
import json
import os
import random
import signal
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
from PIL import Image

from protos import classify_pb2, classify_pb2_grpc, grpc_service_pb2, grpc_service_pb2_grpc
from tests.support import slow_runtime
from tests.support.reliability_fixtures import COLOURS, SlowServer
from tests.support.server_fixtures import worker_pids

MODEL = "slow"
LABELS = slow_runtime.LABELS
CLIENT_TIMEOUT_S = 60.0
MAX_REQUEST_BYTES = 1 << 20
MAX_IMAGES = 8
#: Documented refusals of valid requests under chaos: the server says why and when to come back.
DOCUMENTED_503 = (
    "queue_full",
    "not ready",
    "restarting",
    "shutting down",
    "lost its worker",
    "was killed",
    "decode memory",
    "is not running",
    "did not answer",
)


@dataclass
class Tally:
    """Outcomes by request kind; the violations the soak looks for."""

    outcomes: collections.Counter = field(default_factory=collections.Counter)
    wrong: list[str] = field(default_factory=list)
    undocumented_5xx: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(
        self, kind: str, outcome: str, problem: str | None = None, where: list[str] | None = None
    ) -> None:
        with self.lock:
            self.outcomes[f"{kind}: {outcome}"] += 1
            if problem is not None and where is not None and len(where) < 50:
                where.append(f"{kind}: {problem}")


def image(colour: str, fmt: str = "PNG", size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), COLOURS[colour]).save(buf, format=fmt)
    return buf.getvalue()


# -- valid traffic --------------------------------------------------------------------------------------


def http_valid(server: SlowServer, tally: Tally, end: float, seed: int) -> None:
    rng = random.Random(seed)
    url = f"{server.http_url}/v1/models/{MODEL}/classify"
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        while time.monotonic() < end:
            colours = [rng.choice(LABELS) for _ in range(rng.randint(1, 3))]
            form = rng.choice(["raw", "jpeg", "multipart", "json", "oip"])
            try:
                if form in ("raw", "jpeg"):
                    colours = colours[:1]
                    body = image(colours[0], "JPEG" if form == "jpeg" else "PNG")
                    r = client.post(url, content=body, headers={"content-type": "image/png"})
                elif form == "multipart":
                    r = client.post(
                        url, files=[("f", (f"{i}.png", image(c), "image/png")) for i, c in enumerate(colours)]
                    )
                elif form == "json":
                    r = client.post(
                        url, json={"images": [base64.b64encode(image(c)).decode() for c in colours]}
                    )
                else:
                    r = oip_http(client, server, colours)
            except httpx.TimeoutException:
                tally.add(f"http {form}", "lost", str(colours), tally.lost)
                continue
            except httpx.HTTPError as exc:
                tally.add(f"http {form}", "transport error", repr(exc), tally.unexpected)
                continue
            judge_http(tally, f"http {form}", r, colours)


def oip_http(client: httpx.Client, server: SlowServer, colours: list[str]) -> httpx.Response:
    raw = b"".join(struct.pack("<I", len(b)) + b for b in (image(c) for c in colours))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "BYTES",
                    "shape": [len(colours)],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": False},
        }
    ).encode()
    return client.post(
        f"{server.http_url}/v2/models/{MODEL}/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def judge_http(tally: Tally, kind: str, r: httpx.Response, colours: list[str]) -> None:
    if r.status_code == 200:
        body = r.json()
        if "results" in body:
            got = [x["predictions"][0]["label"] for x in body["results"]]
        else:
            logits = body["outputs"][0]["data"]
            got = [LABELS[max(range(3), key=lambda j, i=i: logits[3 * i + j])] for i in range(len(colours))]
        if got == colours:
            tally.add(kind, "ok")
        else:
            tally.add(kind, "WRONG", f"sent {colours} got {got}", tally.wrong)
    elif r.status_code == 503 and (r.headers.get("retry-after") or _documented(r.text)):
        tally.add(kind, "503 documented")
    elif r.status_code >= 500:
        tally.add(
            kind, f"{r.status_code} UNDOCUMENTED", f"{r.status_code} {r.text[:200]}", tally.undocumented_5xx
        )
    else:
        tally.add(kind, f"{r.status_code} unexpected", f"{r.status_code} {r.text[:200]}", tally.unexpected)


def _documented(text: str) -> bool:
    return any(reason in text for reason in DOCUMENTED_503)


def grpc_valid(server: SlowServer, tally: Tally, end: float, seed: int) -> None:
    rng = random.Random(seed)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = classify_pb2_grpc.ClassifyStub(channel)
        oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < end:
            colours = [rng.choice(LABELS) for _ in range(rng.randint(1, 3))]
            form = rng.choice(["classify", "stream", "oip"])
            kind = f"grpc {form}"
            try:
                if form == "classify":
                    reply = stub.Classify(
                        classify_pb2.ClassifyRequest(model_name=MODEL, images=[image(c) for c in colours]),
                        timeout=CLIENT_TIMEOUT_S,
                    )
                    got = [x.predictions[0].label for x in reply.results]
                elif form == "stream":
                    requests = [
                        classify_pb2.ClassifyRequest(model_name=MODEL, images=[image(c)], id=str(i))
                        for i, c in enumerate(colours)
                    ]
                    got = [None] * len(colours)
                    for answer in stub.ClassifyStream(iter(requests), timeout=CLIENT_TIMEOUT_S):
                        if answer.HasField("error"):
                            raise _StreamError(answer.error.code, answer.error.message)
                        got[int(answer.id)] = answer.results[0].predictions[0].label
                else:
                    tensor = grpc_service_pb2.ModelInferRequest.InferInputTensor(
                        name="images", datatype="BYTES", shape=[len(colours)]
                    )
                    reply = oip.ModelInfer(
                        grpc_service_pb2.ModelInferRequest(
                            model_name=MODEL,
                            inputs=[tensor],
                            raw_input_contents=[
                                b"".join(struct.pack("<I", len(b)) + b for b in (image(c) for c in colours))
                            ],
                        ),
                        timeout=CLIENT_TIMEOUT_S,
                    )
                    values = struct.unpack(f"<{3 * len(colours)}f", reply.raw_output_contents[0])
                    got = [
                        LABELS[max(range(3), key=lambda j, i=i: values[3 * i + j])]
                        for i in range(len(colours))
                    ]
            except grpc.RpcError as exc:
                judge_grpc_error(tally, kind, exc.code(), exc.details() or "", exc.trailing_metadata())
                continue
            except _StreamError as exc:
                status = grpc.StatusCode.UNAVAILABLE if exc.code == 14 else grpc.StatusCode.INTERNAL
                judge_grpc_error(tally, kind, status, exc.message, ())
                continue
            if got == colours:
                tally.add(kind, "ok")
            else:
                tally.add(kind, "WRONG", f"sent {colours} got {got}", tally.wrong)


class _StreamError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def judge_grpc_error(tally: Tally, kind: str, code: grpc.StatusCode, details: str, trailers: Any) -> None:
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and "deadline" not in details.lower():
        tally.add(kind, "lost", details, tally.lost)  # the client's own 60 s timeout ran out
    elif code == grpc.StatusCode.UNAVAILABLE and (
        _documented(details) or any(k == "grpc-retry-pushback-ms" for k, _ in (trailers or ()))
    ):
        tally.add(kind, "UNAVAILABLE documented")
    elif code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE):
        tally.add(kind, f"{code.name} UNDOCUMENTED", f"{code.name} {details[:200]}", tally.undocumented_5xx)
    else:
        tally.add(kind, f"{code.name} unexpected", f"{code.name} {details[:200]}", tally.unexpected)


# -- hostile traffic ------------------------------------------------------------------------------------


def bad_requests(server: SlowServer) -> list[tuple[str, str, dict[str, Any], set[int]]]:
    """(name, path, httpx request arguments, acceptable statuses): the bad-input corpus."""
    classify = f"/v1/models/{MODEL}/classify"
    infer = f"/v2/models/{MODEL}/infer"
    png = {"content-type": "image/png"}
    truncated = image("red")[:40]
    bomb = gzip.compress(b"\0" * (8 * MAX_REQUEST_BYTES))
    huge_bytes = json.dumps(
        {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [10_000_000], "data": []}]}
    )
    return [
        ("garbage", classify, {"content": os.urandom(500), "headers": png}, {400}),
        ("truncated png", classify, {"content": truncated, "headers": png}, {400}),
        ("empty body", classify, {"content": b"", "headers": png}, {400}),
        (
            "unsupported format",
            classify,
            {"content": b"%PDF-1.4\n" + os.urandom(200), "headers": png},
            {400, 415},
        ),
        ("wrong content type", classify, {"content": b"x", "headers": {"content-type": "text/plain"}}, {415}),
        (
            "bad json",
            classify,
            {"content": b"{images", "headers": {"content-type": "application/json"}},
            {400},
        ),
        ("bad base64", classify, {"json": {"images": ["%%%"]}}, {400}),
        (
            "too many images",
            classify,
            {"json": {"images": [base64.b64encode(image("red")).decode()] * 20}},
            {413},
        ),
        ("oversized body", classify, {"content": b"\0" * (MAX_REQUEST_BYTES + 10), "headers": png}, {413}),
        ("gzip bomb", classify, {"content": bomb, "headers": {**png, "content-encoding": "gzip"}}, {413}),
        (
            "truncated gzip",
            classify,
            {"content": gzip.compress(image("red"))[:30], "headers": {**png, "content-encoding": "gzip"}},
            {400},
        ),
        (
            "declared 10M images",
            infer,
            {"content": huge_bytes.encode(), "headers": {"content-type": "application/json"}},
            {413},
        ),
        (
            "wrong tensor shape",
            infer,
            {
                "json": {
                    "inputs": [
                        {"name": "input", "datatype": "FP32", "shape": [1, 3, 4, 4], "data": [0.0] * 48}
                    ]
                }
            },
            {400},
        ),
        ("unknown model", "/v1/models/nope/classify", {"content": image("red"), "headers": png}, {404}),
        ("huge pixel count", classify, {"content": _huge_header_png(), "headers": png}, {413}),
    ]


def _huge_header_png() -> bytes:
    """A real 1 x 1 PNG whose IHDR (CRC fixed) declares 60000 x 60000 pixels: refused from its header."""
    import zlib

    png = image("red", size=1)
    ihdr = b"IHDR" + struct.pack(">II", 60000, 60000) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def hostile(server: SlowServer, tally: Tally, end: float, seed: int) -> None:
    rng = random.Random(seed)
    corpus = bad_requests(server)
    with httpx.Client(base_url=server.http_url, timeout=CLIENT_TIMEOUT_S) as client:
        while time.monotonic() < end:
            choice = rng.random()
            if choice < 0.55:
                name, path, kwargs, allowed = rng.choice(corpus)
                try:
                    r = client.post(path, **kwargs)
                except httpx.TimeoutException:
                    tally.add(f"bad {name}", "lost", name, tally.lost)
                    continue
                except httpx.HTTPError as exc:
                    tally.add(f"bad {name}", "transport error", repr(exc), tally.unexpected)
                    continue
                if r.status_code in allowed:
                    tally.add(f"bad {name}", "documented 4xx")
                elif r.status_code == 503 and r.headers.get("retry-after"):
                    tally.add(f"bad {name}", "503 documented")
                elif r.status_code >= 500:
                    tally.add(
                        f"bad {name}",
                        f"{r.status_code} UNDOCUMENTED",
                        f"{r.status_code} {r.text[:200]}",
                        tally.undocumented_5xx,
                    )
                else:
                    tally.add(
                        f"bad {name}",
                        f"{r.status_code} unexpected",
                        f"{r.status_code} {r.text[:200]}",
                        tally.unexpected,
                    )
            elif choice < 0.65:
                cut_upload(server)
                tally.add("cut-off upload", "sent")
            elif choice < 0.8:
                deadline_call(server, tally)
            elif choice < 0.9:
                cancelled_call(server, tally)
            else:
                slow_reader(server, tally)


def cut_upload(server: SlowServer) -> None:
    host, port = server.http_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST /v1/models/{MODEL}/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            "Content-Length: 500000\r\n\r\n"
        )
        sock.sendall(head.encode() + image("red")[:500])


def deadline_call(server: SlowServer, tally: Tally) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = classify_pb2_grpc.ClassifyStub(channel)
        try:
            stub.Classify(
                classify_pb2.ClassifyRequest(model_name=MODEL, images=[image("blue")]), timeout=0.002
            )
            tally.add("grpc 2 ms deadline", "ok (fast enough)")
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                tally.add("grpc 2 ms deadline", "DEADLINE_EXCEEDED")
            else:
                judge_grpc_error(tally, "grpc 2 ms deadline", exc.code(), exc.details() or "", ())
    r = httpx.post(
        f"{server.http_url}/v1/models/{MODEL}/classify",
        content=image("green"),
        headers={"content-type": "image/png", "x-request-timeout-ms": "1"},
        timeout=CLIENT_TIMEOUT_S,
    )
    if r.status_code in (200, 504):
        tally.add("http 1 ms deadline", str(r.status_code))
    else:
        judge_http(tally, "http 1 ms deadline", r, ["green"])


def cancelled_call(server: SlowServer, tally: Tally) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = classify_pb2_grpc.ClassifyStub(channel)
        future = stub.Classify.future(
            classify_pb2.ClassifyRequest(model_name=MODEL, images=[image("red")] * 3),
            timeout=CLIENT_TIMEOUT_S,
        )
        time.sleep(0.01)
        future.cancel()
        tally.add("grpc cancelled", "cancelled")


def slow_reader(server: SlowServer, tally: Tally) -> None:
    """A ClassifyStream of 20 requests whose answers are read one every 50 ms."""
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = classify_pb2_grpc.ClassifyStub(channel)
        requests = (
            classify_pb2.ClassifyRequest(model_name=MODEL, images=[image("green")], id=str(i))
            for i in range(20)
        )
        answered = 0
        try:
            for answer in stub.ClassifyStream(requests, timeout=CLIENT_TIMEOUT_S):
                time.sleep(0.05)
                if not answer.HasField("error") and answer.results[0].predictions[0].label != "green":
                    tally.add(
                        "grpc slow reader", "WRONG", answer.results[0].predictions[0].label, tally.wrong
                    )
                answered += 1
        except grpc.RpcError as exc:
            judge_grpc_error(tally, "grpc slow reader", exc.code(), exc.details() or "", ())
            return
        tally.add("grpc slow reader", "ok" if answered == 20 else f"{answered}/20 answered")


def poll_live(server: SlowServer, end: float, out: list[float]) -> None:
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < end:
            started = time.perf_counter()
            try:
                ok = client.get(f"{server.http_url}/v2/health/live").status_code == 200
            except httpx.HTTPError:
                ok = False
            out.append(time.perf_counter() - started if ok else float("inf"))
            time.sleep(0.1)


# -- chaos and measurement ------------------------------------------------------------------------------


def resources(server: SlowServer) -> dict[str, float]:
    proc = psutil.Process(server.proc.pid)
    rss = proc.memory_info().rss
    for pid in worker_pids(server.proc.pid):
        with contextlib.suppress(psutil.Error):
            rss += psutil.Process(pid).memory_info().rss
    return {"rss_mib": rss / 2**20, "server_fds": proc.num_fds()}


def served_versions(server: SlowServer, expected: str, within_s: float = 30.0) -> list[str] | None:
    """The versions the server reports, once they are ``[expected]`` or after ``within_s`` (a version
    published just before the end takes a poll and a load to be served)."""
    give_up = time.monotonic() + within_s
    while True:
        versions = httpx.get(f"{server.http_url}/v2/models/{MODEL}", timeout=30).json().get("versions")
        if versions == [expected] or time.monotonic() > give_up:
            return versions
        time.sleep(0.5)


def half_written(repository: Path, version: int) -> None:
    """A version directory whose model.json stops halfway (an exporter killed mid-write, by hand)."""
    source = slow_runtime.publish(repository, MODEL, version)
    text = (source / "model.json").read_text()
    (source / "model.json").write_text(text[: len(text) // 2])


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ddrnet-soak-"))
    repository = work / "repo"
    slow_runtime.publish(repository, MODEL, 1)
    server = SlowServer(
        repository,
        work / "server.log",
        "--max-request-bytes",
        str(MAX_REQUEST_BYTES),
        "--max-images-per-request",
        str(MAX_IMAGES),
        "--poll-interval-s",
        "1",
        "--max-queue-size",
        "64",
        "--max-batch-size",
        "8",
        delay_ms=args.delay_ms,
        log_level="warning",
        instances=args.instances,
    )
    server.start()
    tally = Tally()
    live: list[float] = []
    started = time.monotonic()
    end = started + 60 * args.minutes
    threads = [threading.Thread(target=poll_live, args=(server, end, live))]
    threads += [
        threading.Thread(target=http_valid, args=(server, tally, end, i)) for i in range(args.clients)
    ]
    threads += [
        threading.Thread(target=grpc_valid, args=(server, tally, end, 100 + i)) for i in range(args.clients)
    ]
    threads += [threading.Thread(target=hostile, args=(server, tally, end, 200 + i)) for i in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(min(args.warmup_s, 60 * args.minutes / 4))
    baseline = resources(server)
    events: list[str] = []
    version = last_good = 1
    next_swap = time.monotonic() + args.swap_every_s
    # Kills are offset from swaps (by a quarter of the swap interval) so each kill hits a serving worker,
    # not one of a version being retired.
    next_kill = time.monotonic() + args.kill_every_s + args.swap_every_s / 4
    corrupt_at = started + 60 * args.minutes / 3
    corrupted = False
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_swap:
            version += 1
            slow_runtime.publish(repository, MODEL, version)
            last_good = version
            events.append(f"{now - started:6.1f} s: published version {version} (hot swap)")
            next_swap += args.swap_every_s
        if now >= next_kill:
            pids = worker_pids(server.proc.pid)
            if pids:
                os.kill(random.choice(pids), signal.SIGKILL)
                events.append(f"{now - started:6.1f} s: SIGKILLed a worker of {len(pids)}")
            next_kill += args.kill_every_s
        if not corrupted and now >= corrupt_at:
            version += 1
            half_written(repository, version)
            events.append(f"{now - started:6.1f} s: version {version} half written (model.json cut in half)")
            corrupted = True
        time.sleep(0.2)
    for thread in threads:
        thread.join(CLIENT_TIMEOUT_S + 30)
    final = resources(server)
    metrics = httpx.get(f"{server.http_url}/metrics", timeout=30).text
    served = served_versions(server, str(last_good))
    pids = [server.proc.pid, *worker_pids(server.proc.pid)]
    server.proc.send_signal(signal.SIGTERM)
    try:
        exit_code = server.proc.wait(120)
    except Exception:
        server.kill()
        exit_code = None
    shm_left = (
        [n for n in os.listdir("/dev/shm") if any(n.startswith(f"ddrnet-{pid}-") for pid in pids)]
        if os.path.isdir("/dev/shm")
        else []
    )
    finite = [x for x in live if x != float("inf")]
    log = server.stderr()
    counted = {
        name: sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefix))
        for name, prefix in (
            ("batch_retries", "ddrnet_batch_retries_total"),
            ("worker_restarts", "ddrnet_worker_restarts_total"),
            ("load_failures", "ddrnet_model_load_failures_total"),
            ("answered_499", 'ddrnet_requests_total{code="499"'),
        )
    }
    return {
        "minutes": args.minutes,
        "clients": 2 * args.clients + 2,
        "delay_ms": args.delay_ms,
        "requests": sum(tally.outcomes.values()),
        "outcomes": dict(sorted(tally.outcomes.items())),
        "wrong_answers": tally.wrong,
        "undocumented_5xx": tally.undocumented_5xx,
        "lost": tally.lost,
        "unexpected": tally.unexpected,
        "events": events,
        "server_counters": counted,
        "last_good_version": last_good,
        "served_versions_at_end": served,
        "rss_mib": {
            "after_warmup": round(baseline["rss_mib"], 1),
            "end": round(final["rss_mib"], 1),
            "drift_pct": round(100 * (final["rss_mib"] / baseline["rss_mib"] - 1), 1),
        },
        "server_fds": {"after_warmup": baseline["server_fds"], "end": final["server_fds"]},
        "shm_files_left": shm_left,
        "liveness": {
            "polls": len(live),
            "failed": len(live) - len(finite),
            "max_ms": round(1000 * max(finite), 1) if finite else None,
            "median_ms": round(1000 * statistics.median(finite), 1) if finite else None,
        },
        "tracebacks_in_log": log.count("Traceback"),
        "exit_code": exit_code,
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=3, help="valid-traffic clients per protocol")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="the synthetic model's time per batch")
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--swap-every-s", type=float, default=60.0)
    parser.add_argument("--kill-every-s", type=float, default=90.0)
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    bad = (
        len(report["wrong_answers"])
        + len(report["undocumented_5xx"])
        + len(report["lost"])
        + len(report["unexpected"])
        + len(report["shm_files_left"])
        + report["tracebacks_in_log"]
        + (report["exit_code"] != 0)
        + (report["served_versions_at_end"] != [str(report["last_good_version"])])
    )
    print(
        f"soak: {report['requests']} requests, {len(report['wrong_answers'])} wrong, "
        f"{len(report['undocumented_5xx'])} undocumented 5xx, {len(report['lost'])} lost, "
        f"{len(report['unexpected'])} unexpected, "
        f"RSS drift {report['rss_mib']['drift_pct']} %, liveness max {report['liveness']['max_ms']} ms, "
        f"exit {report['exit_code']}",
        file=sys.stderr,
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
