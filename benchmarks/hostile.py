"""Three hostile requests against a real `ddrnet serve`, measured: what the hardening issue found.

1. ``bytes_bomb``: one gRPC ``ModelInfer`` whose ``images`` input is a BYTES tensor of millions of empty
   elements, in a message just under ``--max-request-bytes``. Measured: time until it is answered, its
   status, and the latency of ``GET /v2/health/live`` polled every 10 ms meanwhile (max, p99).
2. ``png16``: one multipart classify request of several 16-bit greyscale PNGs of tens of megapixels
   (each compresses to a few hundred KB). Measured: the server's peak RSS growth over the request (its
   process and its workers, ``VmHWM``), status and time.
   ``png16_parallel``: ``--parallel`` such requests at once (what "a handful of concurrent requests"
   does to a pod); ``--server-arg --max-decode-memory-bytes=N`` shows the decode budget bounding it.
3. ``cut_uploads``: uploads that promise a large body and close after 1 kB. Measured: tracebacks in
   the server's log, and how many ``ddrnet_requests_total{code="499"}`` counted.

Each case runs against a fresh server started from ``--checkout`` (its own ``.venv``), so the same
script measures the code before and after a change:

    python -m benchmarks.hostile --repository REPO --model slim --checkout /path/to/old --json old.json
    python -m benchmarks.hostile --repository REPO --model slim --json new.json

Loopback only; every request and wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from PIL import Image

from protos import grpc_service_pb2, grpc_service_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[1]


class Server:
    """``ddrnet serve`` of a checkout on free loopback ports, with its log in a file."""

    def __init__(self, checkout: Path, repository: Path, log: Path, *args: str) -> None:
        self.checkout, self.repository, self.log_path, self.args = checkout, repository, log, args
        self.proc: subprocess.Popen | None = None
        self.http = self.grpc = ""

    def __enter__(self) -> Server:
        ddrnet = self.checkout / ".venv" / "bin" / "ddrnet"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(ddrnet), "serve", "--model-repository", str(self.repository), "--http-port", "0",
             "--grpc-port", "0", "--poll-interval-s", "0", "--runtime", "onnxruntime", *self.args],
            cwd=self.checkout, stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"server exited: see {self.log_path}")
            if m := re.search(r"HTTP on http://([\d.:]+)", line):
                self.http = m.group(1)
            if m := re.search(r"gRPC on ([\d.:]+)", line):
                self.grpc = m.group(1)
            if "ready" in line and self.http:
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                return self
        raise RuntimeError("server not ready within 180 s")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def pids(self) -> list[int]:
        import psutil

        root = psutil.Process(self.proc.pid)
        return [root.pid, *(c.pid for c in root.children(recursive=True))]

    def peak_rss_mib(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total / 1024

    def metrics(self) -> str:
        return httpx.get(f"http://{self.http}/metrics", timeout=30).text


def poll_live(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                client.get(url)
            out.append(time.perf_counter() - started)
            time.sleep(0.01)


def bytes_bomb(server: Server, model: str, limit_bytes: int) -> dict[str, Any]:
    count = (limit_bytes - (1 << 20)) // 4  # each empty element is its 4-byte length
    tensor = grpc_service_pb2.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES",
                                                                  shape=[count])
    request = grpc_service_pb2.ModelInferRequest(model_name=model, inputs=[tensor],
                                                 raw_input_contents=[struct.pack("<I", 0) * count])
    latencies: list[float] = []
    stop = threading.Event()
    live_url = f"http://{server.http}/v2/health/live"
    poller = threading.Thread(target=poll_live, args=(live_url, stop, latencies))
    poller.start()
    time.sleep(0.3)
    started = time.perf_counter()
    options = [("grpc.max_send_message_length", limit_bytes),
               ("grpc.max_receive_message_length", limit_bytes)]
    with grpc.insecure_channel(server.grpc, options=options) as channel:
        try:
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=120)
            status = "OK"
        except grpc.RpcError as exc:
            status = exc.code().name
    seconds = time.perf_counter() - started
    time.sleep(0.3)
    stop.set()
    poller.join()
    ms = sorted(1000 * x for x in latencies)
    return {"elements": count, "message_bytes": request.ByteSize(), "status": status,
            "seconds": round(seconds, 3), "live_polls": len(ms), "live_max_ms": round(ms[-1], 1),
            "live_p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 1),
            "live_median_ms": round(statistics.median(ms), 1)}


def png16(width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    values = ((x * 7 + y * 3) % 65536).astype(np.uint16)  # a smooth ramp: compresses to little
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def png16_request(server: Server, model: str, count: int, side: tuple[int, int],
                  parallel: int = 1) -> dict[str, Any]:
    image = png16(*side)
    files = [("file", (f"wide{i}.png", image, "image/png")) for i in range(count)]
    url = f"http://{server.http}/v1/models/{model}/classify"
    statuses: list[int] = []

    def send() -> None:
        statuses.append(httpx.post(url, files=files, timeout=300).status_code)

    before = server.peak_rss_mib()
    started = time.perf_counter()
    senders = [threading.Thread(target=send) for _ in range(parallel)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    seconds = time.perf_counter() - started
    time.sleep(0.5)
    after = server.peak_rss_mib()
    return {"requests": parallel, "images": count, "pixels_each": side[0] * side[1],
            "png_bytes_each": len(image), "status": statuses[0] if parallel == 1 else sorted(statuses),
            "seconds": round(seconds, 2), "peak_rss_before_mib": round(before, 1),
            "peak_rss_after_mib": round(after, 1), "peak_rss_growth_mib": round(after - before, 1)}


def cut_uploads(server: Server, model: str, count: int) -> dict[str, Any]:
    host, port = server.http.rsplit(":", 1)
    for _ in range(count):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            head = (f"POST /v1/models/{model}/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                    "Content-Length: 200000\r\n\r\n")
            sock.sendall(head.encode() + b"\x89PNG" + b"\0" * 1000)
    time.sleep(1.0)
    text = server.metrics()
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("ddrnet_requests_total{") and 'code="499"' in line)
    log = Path(server.log_path).read_text(errors="replace")
    return {"uploads": count, "tracebacks_in_log": log.count("Traceback"), "counted_499": counted}


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostile", description=summary)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkout", type=Path, default=REPO_ROOT,
                        help="checkout whose server runs (its own .venv)")
    parser.add_argument("--png-count", type=int, default=4)
    parser.add_argument("--png-side", default="6000x6000")
    parser.add_argument("--max-request-bytes", type=int, default=32 * 2**20)
    parser.add_argument("--parallel", type=int, default=4, help="concurrent requests of png16_parallel")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="an extra `ddrnet serve` option (repeatable), e.g. --server-arg=--instances=2")
    parser.add_argument("--cases", default="bytes_bomb,png16,png16_parallel,cut_uploads")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    side = tuple(int(v) for v in args.png_side.split("x"))
    out: dict[str, Any] = {"checkout": str(args.checkout.resolve()), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):  # a fresh server each: no case taints another
            log = Path(tmp) / f"{case}.log"
            with Server(args.checkout, args.repository, log, "--max-request-bytes",
                        str(args.max_request_bytes), *args.server_arg) as server:
                if case == "bytes_bomb":
                    out[case] = bytes_bomb(server, args.model, args.max_request_bytes)
                elif case == "png16":
                    out[case] = png16_request(server, args.model, args.png_count, side)
                elif case == "png16_parallel":
                    out[case] = png16_request(server, args.model, args.png_count, side, args.parallel)
                else:
                    out[case] = cut_uploads(server, args.model, 10)
            print(f"{case}: {json.dumps(out[case])}", file=sys.stderr, flush=True)
    out["load_after"] = os.getloadavg()
    text = json.dumps(out, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
