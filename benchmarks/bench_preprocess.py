"""Cost of decode + eval transform per image on the sample photos (model.preprocess), with a
breakdown by step, the same work done the plain way (a mindspore.dataset.vision PIL pipeline), and
throughput with several threads (Pillow releases the GIL while decoding and resampling).

    python -m benchmarks.bench_preprocess [--repeat 50] [--threads 2] [--no-mindspore] [--json]

Prints a markdown table (milliseconds per image, median of --repeat runs) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
import skimage
import sklearn

from model.preprocess import EvalTransform, _to_rgb_or_gray, decode_image

PHOTOS = {
    "china.jpg": Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
    "flower.jpg": Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg",
    "astronaut.png": Path(skimage.__file__).parent / "data" / "astronaut.png",
    "coffee.png": Path(skimage.__file__).parent / "data" / "coffee.png",
    "chelsea.png": Path(skimage.__file__).parent / "data" / "chelsea.png",
    "hubble_deep_field.jpg": Path(skimage.__file__).parent / "data" / "hubble_deep_field.jpg",
    "retina.jpg": Path(skimage.__file__).parent / "data" / "retina.jpg",
}


def median_ms(fns: dict, repeat: int) -> dict[str, float]:
    """Median milliseconds of each function, timed round-robin so load drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm up
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    out = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    out["total_min_ms"] = min(times["total_ms"]) * 1e3  # least disturbed by other processes
    return out


def mindspore_pipeline():
    import mindspore.dataset.vision as vision

    ops = [
        vision.Decode(to_pil=True),
        vision.Resize((256, 256), vision.Inter.BICUBIC),
        vision.CenterCrop(224),
        vision.ToTensor(),
        vision.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], is_hwc=False),
    ]

    def run(data: bytes) -> np.ndarray:
        out = np.frombuffer(data, dtype=np.uint8)
        for op in ops:
            out = op(out)
        return out

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-mindspore", action="store_true", help="skip the mindspore.dataset column")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = parser.parse_args()

    transform = EvalTransform()
    reference = None if args.no_mindspore else mindspore_pipeline()
    out = np.empty(transform.output_shape, dtype=np.float32)
    rows = []
    for name, path in PHOTOS.items():
        data = path.read_bytes()
        img = decode_image(data)
        rgb = _to_rgb_or_gray(img)
        fns = {
            "decode_ms": lambda d=data: decode_image(d),
            "resize_ms": lambda r=rgb: r.resize((256, 256), 3),
            "from_pil_ms": lambda i=img: transform.transform_into(i, out),
            "total_ms": lambda d=data: transform.transform_into(d, out),
        }
        if reference is not None:
            np.testing.assert_array_equal(transform(data), reference(data))
            fns["mindspore_ms"] = lambda d=data: reference(d)
        size = f"{img.size[0]}x{img.size[1]} {img.mode}"
        row = {"image": name, "size": size, "kib": round(len(data) / 1024)}
        row.update(median_ms(fns, args.repeat))
        rows.append(row)

    # Threads: all photos round-robin, total images / wall time.
    datas = [p.read_bytes() for p in PHOTOS.values()] * max(4, args.repeat // 4)

    def throughput(threads: int) -> float:
        outs = np.empty((threads, *transform.output_shape), dtype=np.float32)

        def work(k: int) -> None:
            for data in datas[k::threads]:
                transform.transform_into(data, outs[k])

        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, range(threads)))
        return len(datas) / (time.perf_counter() - start)

    scaling = {n: throughput(n) for n in sorted({1, args.threads})}
    result = {
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "repeat": args.repeat,
        "rows": rows,
        "threads_img_per_s": scaling,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    cols = ["image", "size", "kib", "decode_ms", "resize_ms", "from_pil_ms", "total_ms", "total_min_ms"]
    if reference is not None:
        cols.append("mindspore_ms")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"Pillow {PIL.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
        f"load average {load:.1f}, median of {args.repeat} (min where marked)"
    )
    print()
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for row in rows:
        cells = [f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        print("| " + " | ".join(cells) + " |")
    mean_total = statistics.mean(r["total_ms"] for r in rows)
    print()
    print(f"mean decode + transform: {mean_total:.2f} ms/image")
    for n, rate in scaling.items():
        print(f"{n} thread(s): {rate:.0f} img/s (all photos round-robin)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
