"""Where the time goes, from a py-spy ``--format raw`` profile of ``ddrnet serve`` and its workers.

    py-spy record --pid SERVER --subprocesses --idle --rate 50 --duration 10 --format raw -o prof.txt
    python -m benchmarks.profile_summary prof.txt

Each sample is one thread at one moment (``--idle`` keeps the waiting ones), so a process's share of
samples in a category is the share of its threads' wall time spent there. Categories are matched on
the innermost frames, first match wins; the rest is "other".
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

# (category, pattern on the stack text); first match wins. Waiting is matched on the innermost frame
# (a pool thread with no work, the child watcher, the event loop in epoll, a thread parked in C).
_WAITING = (r"(_worker \(concurrent/futures/thread\.py:\d+\)|_do_waitpid \([^)]*\)"
            r"|Thread\.run \(threading\.py:\d+\)|[Ss]elect(or\.select)? \([^)]*\)"
            r"|wait \(threading\.py:\d+\))$")
CATEGORIES = [
    ("waiting (idle pool threads, epoll, child watcher)", _WAITING),
    ("inference (runtime call)",
     r"InferenceSession\.run|Session\.run|GraphCell|predict \(|\.infer \(server/runtimes"),
    ("decode + eval transform (Pillow/numpy)", r"model/preprocess\.py|PIL/"),
    ("softmax / top-k", r"server/postprocess\.py"),
    ("worker hand-over, or a worker waiting for its next batch (shared memory, pipe)",
     r"server/shm\.py|server/worker_protocol\.py|server/worker_client\.py"),
    ("batch assembly", r"server/batch_assembly\.py"),
    ("gRPC handlers / protobuf", r"server/grpc_api\.py|grpc/_cython|grpc/aio"),
    ("HTTP handlers (FastAPI/uvicorn)", r"server/http_api\.py|uvicorn/|starlette/|fastapi/|h11/|httptools"),
]

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_PROCESS = re.compile(r'process (\d+):"([^"]*)"')


def summarize(path: Path) -> str:
    by_process: dict[str, Counter] = defaultdict(Counter)
    for line in path.read_text(errors="replace").splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        stack, count = match["stack"], int(match["count"])
        processes = _PROCESS.findall(stack)
        pid, command = processes[-1] if processes else ("?", "?")
        kind = "worker" if "worker_main" in command else "server"
        name = f"{kind} {pid}"
        frames = _PROCESS.sub("", stack)
        category = next((c for c, pattern in CATEGORIES if re.search(pattern, frames)), "other")
        by_process[name][category] += count
    lines = []
    for name, counts in sorted(by_process.items()):
        total = sum(counts.values())
        lines.append(f"{name}: {total} samples")
        for category, n in counts.most_common():
            lines.append(f"  {100.0 * n / total:5.1f} %  {n:6d}  {category}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_file():
        sys.exit("usage: python -m benchmarks.profile_summary PROFILE  (py-spy --format raw output)")
    print(summarize(Path(sys.argv[1])))
