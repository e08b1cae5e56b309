"""What a ``ddrnet bench`` run shows: the table of served levels and raw placements, L, and the plot of
throughput against p99 latency (matplotlib, PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def best_raw(raws: list[Any], precision: str | None = None) -> Any:
    """The placement with the highest L (the machine's limit), among those of ``precision`` when given."""
    raws = [r for r in raws if precision is None or r.precision == precision]
    return max(raws, key=lambda r: r.limit_img_s) if raws else None


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def format_report(
    results: list[Any], raws: list[Any], info: dict[str, Any], precision: str = "fp32"
) -> str:
    """The human-readable table of a bench run; ÷L is against the served ``precision``'s L."""
    raw = best_raw(raws, precision)
    lines = [f"model {info.get('model')} v{info.get('version')} ({info.get('platform')}), "
             f"window {results[0].window_s:.1f} s per level" if results else "no levels"]
    head = ("protocol", "load", "img/s", "p50", "p90", "p95", "p99", "errors", "queue", "pre/req",
            "infer/b", "batch", "busy", "cpu/req", "÷L")
    rows = [head]
    limit = raw.limit_img_s if raw is not None else None
    for r in results:
        s = r.server or {}
        lat = r.latency_ms
        errors = ",".join(f"{k}={v}" for k, v in sorted(r.errors.items())) or "0"
        rows.append((
            r.protocol, r.level.label, _fmt(r.throughput), _fmt(lat.get("p50")), _fmt(lat.get("p90")),
            _fmt(lat.get("p95")), _fmt(lat.get("p99")), errors, _fmt(s.get("queue_ms_per_image")),
            _fmt(s.get("preprocess_ms_per_request")), _fmt(s.get("inference_ms_per_batch")),
            _fmt(s.get("mean_batch_size"), ".2f"), _fmt(s.get("instance_busy"), ".2f"),
            _fmt(r.client_cpu_ms_per_request, ".2f"), _fmt(r.throughput / limit if limit else None, ".2f"),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        cells = zip(row, widths, strict=True)
        lines.append("  ".join(f"{c:>{w}}" if i > 1 else f"{c:<{w}}" for i, (c, w) in enumerate(cells)))
    lines.append("latency ms (client, successful requests); queue = ms/image in the batch queue; pre/req = "
                 "server decode+transform ms per request; infer/b = model ms per batch; busy = instance "
                 "time share; cpu/req = this bench's CPU ms per request")
    precisions = list(dict.fromkeys(r.precision for r in raws))
    for r in raws:
        lines.append("")
        best = " (fastest: L)" if r is best_raw(raws, r.precision) and len(raws) > 1 else ""
        lines.append(f"raw: {r.runtime} {r.precision} v{r.version}, {r.instances} instance(s) x {r.threads} "
                     f"threads, {r.where}{best}")
        for b, ms in sorted(r.batch_ms.items()):
            lines.append(f"  batch {b:>3}: {ms:8.2f} ms/batch  {r.img_s(b):8.1f} img/s")
        lines.append(f"  model: {r.model_ms_per_image:.2f} ms/image at batch {r.best_batch}")
    if raws:
        pre = raws[0].preprocess_ms_per_image
        lines.append(f"preprocessing (decode + eval transform, 1 thread): {pre:.2f} ms/image")
    for name in precisions:
        top = best_raw(raws, name)
        served = " (served: ÷L above)" if name == precision and len(precisions) > 1 else ""
        lines.append(f"L[{name}] = 1 / ({top.model_ms_per_image:.2f} ms model ({top.runtime}, "
                     f"{top.placement}, batch {top.best_batch}) + {top.preprocess_ms_per_image:.2f} ms "
                     f"preprocessing) = {top.limit_img_s:.1f} img/s{served}")
    return "\n".join(lines)


def write_plot(path: Path, results: list[Any], raw: Any) -> None:  # raw: the fastest placement
    """Throughput vs p99 latency, one line per protocol, each point labelled with its load level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for protocol in dict.fromkeys(r.protocol for r in results):
        points = [(r.latency_ms.get("p99"), r.throughput, r.level.label) for r in results
                  if r.protocol == protocol and r.latency_ms]
        if not points:
            continue
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=protocol)
        for x, y, label in points:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    top = max([r.throughput for r in results] + [1.0])
    if raw is not None:
        top = max(top, raw.limit_img_s)
        ax.axhline(raw.limit_img_s, color="black", linestyle="--", linewidth=1,
                   label=f"L = {raw.limit_img_s:.1f} img/s (model + preprocessing)")
        model_only = 1000.0 / raw.model_ms_per_image
        label = f"model only, batch {raw.best_batch}: {model_only:.1f} img/s"
        if model_only <= 1.5 * top:
            top = max(top, model_only)
            ax.axhline(model_only, color="grey", linestyle=":", linewidth=1, label=label)
        else:  # far off the scale of the served points: named in the legend only
            ax.plot([], [], color="grey", linestyle=":", label=label + " (off scale)")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (images/s)")
    ax.set_title("ddrnet bench: throughput vs p99 latency")
    ax.set_ylim(0, 1.15 * top)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
