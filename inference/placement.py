"""Where model instances run on a CPU: how many worker processes, how many threads each, and how many
threads decode images, derived from the cores this process may use.

One rule for everyone who runs a model: ``ddrnet serve`` (``server.settings``), ``ddrnet bench
--raw`` (the server's placement, measured) and anything else that wants the server's behaviour.

Why one multi-threaded instance by default (measured on an idle 2-core machine, BENCHMARKS.md
"Performance targets", `ddrnet bench` gRPC on the sample photos as JPEGs): DDRNet-23-slim at 224 on
ONNX Runtime, 1 × 2 threads against 2 × 1: concurrency 1 p50 17.4 vs 28.6 ms (a lone request gets
both cores), concurrency 8 76.2 vs 73.7 img/s with p99/p50 1.30 vs 2.07 (every batch takes all
waiting requests, so every request waits about one batch; two instances alternate small uneven
batches); DDRNet-23 24.0 vs 23.9 img/s, p99/p50 1.10 vs 2.56; MindSpore slim 45.0 vs 39.9 img/s. On
a machine shared with other CPU-heavy jobs (load average 11-16) the ranking flips: 2 × 1 served 24.5
img/s against 10.4 for 1 × 2, because one descheduled intra-op thread stalls its sibling at every
operator; set the instances to the cores there.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

# Default instances are capped: each one is a worker process holding its own copy of the model
# (ONNX Runtime ~0.4 GiB, Lite ~1.1 GiB for DDRNet-23, BENCHMARKS.md "Runtimes").
MAX_DEFAULT_INSTANCES = 8
# Intra-op threads of one instance by default; a CPU with more cores gets more instances instead.
MAX_DEFAULT_THREADS = 8


def available_cores() -> int:
    """Cores this process may use: CPU affinity, capped by a cgroup v2 CPU limit (containers), >= 1.

    Kubernetes sets a CPU limit through ``cpu.max`` while affinity still shows every core of the
    node; sizing threads from affinity alone would oversubscribe the pod.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit visible
    return max(1, cores)


def memory_limit_bytes() -> int:
    """Memory this process may use: a cgroup v2 limit (``memory.max``, a container's) when one is set,
    else the machine's physical memory."""
    try:
        value = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if value != "max":
            return int(value)
    except (OSError, ValueError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class Placement:
    """Worker processes per model, runtime threads in each, and image decode threads."""

    instances: int
    threads_per_instance: int
    preprocess_workers: int

    @property
    def label(self) -> str:
        return f"{self.instances} x {self.threads_per_instance}"


def derive_placement(
    *,
    device: str = "cpu",
    single_threaded: bool = False,
    instances: int | None = None,
    threads_per_instance: int | None = None,
    preprocess_workers: int | None = None,
    cores: int | None = None,
) -> Placement:
    """Fill what is not given. On a CPU: one instance with every core as its threads (at most
    ``MAX_DEFAULT_THREADS`` a piece; beyond that, more instances, at most ``MAX_DEFAULT_INSTANCES``),
    and as many decode threads as cores. ``single_threaded`` runtimes (PyPI's MindSpore Lite 2.0 in a
    Python 3.7 worker, which must run one thread: more give wrong logits after a resize,
    ``inference.runtimes.lite_rt``) get one single-threaded instance per core instead. Accelerators
    (``device`` gpu/ascend) get one instance with every core. Any value given is kept and the others
    are derived from it (``instances=2`` alone on 2 cores gives 2 instances × 1 thread)."""
    cores = cores or available_cores()
    on_cpu = device == "cpu"
    if instances is None:
        if not on_cpu:
            instances = 1
        elif threads_per_instance is not None:
            instances = max(1, cores // threads_per_instance)
        elif single_threaded:
            instances = min(cores, MAX_DEFAULT_INSTANCES)
        else:
            instances = min(math.ceil(cores / MAX_DEFAULT_THREADS), MAX_DEFAULT_INSTANCES)
    if threads_per_instance is None:
        threads_per_instance = max(1, cores // instances)
    if preprocess_workers is None:
        preprocess_workers = cores
    return Placement(instances, threads_per_instance, preprocess_workers)
