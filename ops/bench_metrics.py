"""The server-side split of a benchmark window, from two scrapes of the server's ``/metrics``.

Histogram ``_sum``/``_count`` deltas between the start and the end of the window give, for one model
(all its versions): mean time an image waited in the batch queue, mean decode + transform time per
request, mean model time per batch, the mean batch size, and how busy the model instances were
(inference seconds per second of window). Parsing uses ``prometheus_client``'s own text parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NAMESPACE = "ddrnet_"


@dataclass(frozen=True)
class Snapshot:
    """``{(metric sample name, model): value}`` summed over the other labels, at one moment."""

    values: dict[tuple[str, str], float]

    def get(self, name: str, model: str) -> float:
        return self.values.get((name, model), 0.0)


def parse(text: str) -> Snapshot:
    """Sum every ``ddrnet_*`` sample by (sample name, ``model`` label)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(NAMESPACE):
            continue
        for sample in family.samples:
            model = sample.labels.get("model")
            if model is None or "le" in sample.labels:
                continue
            key = (sample.name, model)
            values[key] = values.get(key, 0.0) + float(sample.value)
    return Snapshot(values)


def _mean_ms(before: Snapshot, after: Snapshot, metric: str, model: str) -> tuple[float | None, float]:
    total = after.get(f"{metric}_sum", model) - before.get(f"{metric}_sum", model)
    count = after.get(f"{metric}_count", model) - before.get(f"{metric}_count", model)
    return (1000.0 * total / count if count > 0 else None), count


def split(before: Snapshot, after: Snapshot, model: str, window_s: float) -> dict[str, Any]:
    """The server-side figures of one window (None where nothing was observed)."""
    queue_ms, _ = _mean_ms(before, after, NAMESPACE + "queue_duration_seconds", model)
    pre_ms, _ = _mean_ms(before, after, NAMESPACE + "preprocess_duration_seconds", model)
    infer_ms, batches = _mean_ms(before, after, NAMESPACE + "inference_duration_seconds", model)
    request_ms, requests = _mean_ms(before, after, NAMESPACE + "request_duration_seconds", model)

    def delta(sample: str) -> float:
        return after.get(NAMESPACE + sample, model) - before.get(NAMESPACE + sample, model)

    images = delta("batch_size_sum")
    batch_count = delta("batch_size_count")
    infer_s = delta("inference_duration_seconds_sum")
    rejected = delta("rejected_total")
    return {
        "requests": int(requests),
        "batches": int(batches),
        "mean_batch_size": images / batch_count if batch_count > 0 else None,
        "queue_ms_per_image": queue_ms,
        "preprocess_ms_per_request": pre_ms,
        "inference_ms_per_batch": infer_ms,
        "inference_ms_per_image": 1000.0 * infer_s / images if images > 0 else None,
        "request_ms": request_ms,
        "instance_busy": infer_s / window_s if window_s > 0 else None,
        "rejected": int(rejected),
    }
