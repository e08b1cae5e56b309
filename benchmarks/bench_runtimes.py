"""Throughput, load time and peak memory of each inference runtime on DDRNet-23 and DDRNet-23-slim.

    python -m benchmarks.bench_runtimes [--archs ddrnet23,ddrnet23_slim] [--batch-sizes 1,4,8]
        [--threads 1,2] [--runtimes lite,onnxruntime,mindspore] [--repository DIR] [--seconds 3]

For each architecture it needs an exported version (``model.mindir``, ``model.onnx``, ``model.ms``):
the newest one in ``--repository`` (default ``.cache/bench-repo``), else it exports a freshly
initialised 1000-class network there with ``training.export`` (weights do not change speed).
Every (architecture, runtime, thread count) is measured in a fresh process, one after the other
(MindSpore Lite under the Python 3.7 venv, ``.venv-lite37``), running the same adapters the server's
workers run (``inference.runtimes``): import + load time, the first batch, then img/s at 224x224 per
batch size (one warm-up batch, then batches for at least ``--seconds``), and the process's peak
RSS. The table reports, per batch size, the best thread setting (the threads the runtime actually
used: MindSpore Lite 2.0.x always runs one, see ``inference/runtimes/lite_rt.py``). Prints Markdown;
``--json`` saves everything.

The child part of this file runs under Python 3.7 too, so the whole file keeps 3.7 syntax.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LITE_PYTHON = os.path.join(REPO, ".venv-lite37", "bin", "python")
LABELS = {"ddrnet23": "DDRNet-23", "ddrnet23_slim": "DDRNet-23-slim", "ddrnet39": "DDRNet-39"}


# -- child: one runtime, one thread setting, in its own process ------------------------------------------


def child(args: argparse.Namespace) -> None:
    import numpy as np

    from inference.runtimes import create_runtime
    from model.manifest import load_manifest

    manifest = load_manifest(args.version_dir)
    size = manifest.image_size
    start = time.perf_counter()
    runtime = create_runtime(args.runtime)
    runtime.load(args.version_dir, manifest, "cpu", 0, {"threads": args.threads, "cache_dir": args.cache_dir})
    load_s = time.perf_counter() - start
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    data = np.random.RandomState(0).standard_normal((max(sizes), 3, size, size)).astype(np.float32)
    start = time.perf_counter()
    runtime.infer(data[:1])
    first_s = time.perf_counter() - start
    throughput = {}
    for n in sizes:
        batch = np.ascontiguousarray(data[:n])
        runtime.infer(batch)  # warm-up (a new input shape may compile or allocate)
        iters, start = 0, time.perf_counter()
        while True:
            runtime.infer(batch)
            iters += 1
            elapsed = time.perf_counter() - start
            if elapsed >= args.seconds:
                break
        throughput[str(n)] = n * iters / elapsed
    info = runtime.describe()
    print(json.dumps({"describe": info, "load_s": load_s, "first_batch_s": first_s, "img_per_s": throughput,
                      "peak_rss_mib": peak_rss_mib(), "python": platform.python_version()}))


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM belongs to the address space, which exec replaces;
    ru_maxrss is not used because Linux carries it over from the forked parent across exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- parent: versions, the grid of child runs, the table ------------------------------------------------


def newest_version(repository: str, arch: str) -> str | None:
    mdir = os.path.join(repository, arch)
    if not os.path.isdir(mdir):
        return None
    versions = sorted(int(v) for v in os.listdir(mdir) if v.isdigit())
    for v in reversed(versions):
        vdir = os.path.join(mdir, str(v))
        if os.path.isfile(os.path.join(vdir, "model.json")):
            return vdir
    return None


def export_fresh(repository: str, arch: str, lite_python: str | None) -> str:
    from pathlib import Path

    import mindspore as ms

    from model import create_model
    from training.export import ExportSpec, export_model

    ms.set_context(mode=ms.GRAPH_MODE)
    os.makedirs(repository, exist_ok=True)
    ckpt = os.path.join(repository, f"{arch}-init.ckpt")
    ms.save_checkpoint(create_model(arch, num_classes=1000), ckpt)
    formats = ("mindir", "onnx", "lite") if lite_python else ("mindir", "onnx")
    spec = ExportSpec(checkpoint=Path(ckpt), arch=arch, repository=Path(repository), name=arch,
                      formats=formats, lite_python=lite_python)
    result = export_model(spec, progress=True)
    os.unlink(ckpt)
    return str(result.version_dir)


def run_child(python: str, runtime: str, version_dir: str, threads: int, args: argparse.Namespace) -> dict:
    cmd = [python, "-m", "benchmarks.bench_runtimes", "--child", "--runtime", runtime,
           "--version-dir", version_dir,
           "--threads", str(threads), "--batch-sizes", args.batch_sizes, "--seconds", str(args.seconds),
           "--cache-dir", os.path.join(args.repository, ".lite-cache")]
    env = dict(os.environ, PYTHONPATH=REPO, GLOG_v="3")
    proc = subprocess.run(cmd, env=env, capture_output=True, timeout=7200)
    lines = [ln for ln in proc.stdout.decode().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.decode()[-3000:]}")
    return json.loads(lines[-1])


def report(round_no: int, arch: str, runtime: str, res: dict, sizes: list) -> None:
    rates = ", ".join(f"b{n}: {res['img_per_s'][str(n)]:.1f}" for n in sizes)
    info = res["describe"]
    print(f"[round {round_no}] {arch} {runtime} threads={res['threads']} (runs {info.get('threads')}): "
          f"{rates} img/s, "
          f"load {res['load_s']:.2f} s, peak {res['peak_rss_mib']:.0f} MiB ({info.get('file')}, "
          f"{info.get('library_version')}, Python {res['python']}), load average {os.getloadavg()[0]:.1f}",
          file=sys.stderr)


def merge(old: dict | None, new: dict) -> dict:
    """Best of rounds: the highest img/s per batch size and the lowest load time (the least
    disturbed run on a shared machine), the highest peak memory."""
    if old is None:
        return new
    out = dict(new)
    out["img_per_s"] = {n: max(old["img_per_s"][n], new["img_per_s"][n]) for n in new["img_per_s"]}
    out["load_s"] = min(old["load_s"], new["load_s"])
    out["first_batch_s"] = min(old["first_batch_s"], new["first_batch_s"])
    out["peak_rss_mib"] = max(old["peak_rss_mib"], new["peak_rss_mib"])
    return out


def table(results: list, sizes: list) -> str:
    head = "| model | runtime | " + " | ".join(f"batch {n} img/s (threads)" for n in sizes)
    head += " | import + load s | first batch s | peak RSS MiB |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for (arch, runtime), runs in results:
        cells = []
        for n in sizes:
            best = max(runs, key=lambda r: r["img_per_s"][str(n)])
            cells.append(f"{best['img_per_s'][str(n)]:.3g} ({best['describe'].get('threads')})")
        load = min(r["load_s"] for r in runs)
        first = min(r["first_batch_s"] for r in runs)
        peak = max(r["peak_rss_mib"] for r in runs)
        rows.append(f"| {LABELS.get(arch, arch)} | {runtime} | " + " | ".join(cells)
                    + f" | {load:.2f} | {first:.3f} | {peak:.0f} |")
    return "\n".join(rows)


def parent(args: argparse.Namespace) -> None:
    lite_python = args.lite_python or (LITE_PYTHON if os.path.exists(LITE_PYTHON) else None)
    runtimes = args.runtimes.split(",")
    if "lite" in runtimes and lite_python is None:
        print("MindSpore Lite skipped: no .venv-lite37 (scripts/setup_lite_py37.sh) and no --lite-python",
              file=sys.stderr)
        runtimes.remove("lite")
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    versions = {}
    for arch in args.archs.split(","):
        found = newest_version(args.repository, arch)
        versions[arch] = found or export_fresh(args.repository, arch, lite_python)
    most = max(threads)
    grid = {}  # (arch, runtime) -> {threads: best-of-rounds result}
    for round_no in range(1, args.rounds + 1):
        for arch, vdir in versions.items():
            for runtime in runtimes:
                python = lite_python if runtime == "lite" else sys.executable
                merged = grid.setdefault((arch, runtime), {})
                for t in sorted(threads, reverse=True):
                    slow = most in merged and max(merged[most]["img_per_s"].values()) < args.slow_img_s
                    if slow and (t != most or round_no > 1):
                        continue  # hopelessly slow with the most threads: fewer or again will not win
                    res = run_child(python, runtime, vdir, t, args)
                    res["threads"] = t
                    report(round_no, arch, runtime, res, sizes)
                    merged[t] = merge(merged.get(t), res)
    results = [(key, list(by_threads.values())) for key, by_threads in grid.items()]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\n{platform.processor() or platform.machine()}, {cores} cores, 224x224 float32, "
          f"best of threads {threads} per batch size, best of {args.rounds} round(s)\n")
    print(table(results, sizes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"arch": a, "runtime": r, "runs": runs} for (a, r), runs in results], f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="ddrnet23,ddrnet23_slim")
    parser.add_argument("--runtimes", default="lite,onnxruntime,mindspore")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--threads", default="1,2", help="thread settings to try (comma list)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per batch size")
    parser.add_argument("--repository", default=os.path.join(REPO, ".cache", "bench-repo"))
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the whole grid, keeping each setting's best (for a shared machine)")
    parser.add_argument("--slow-img-s", type=float, default=1.0,
                        help="a runtime slower than this with the most threads is not tried with fewer")
    parser.add_argument("--lite-python", default=None, help="Python with mindspore_lite (.venv-lite37)")
    parser.add_argument("--json", default=None, help="also write all measurements here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", help=argparse.SUPPRESS)
    parser.add_argument("--version-dir", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.threads = int(args.threads)
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
