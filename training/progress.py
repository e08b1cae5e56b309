"""Training progress for people and machines: a tqdm bar, a summary line per epoch, JSON lines.

The bar shows loss (running mean), LR, img/s (global, all workers) and tqdm's ETA for the epoch;
after each epoch one line summarises it (also printed when the bar is off, e.g. not a terminal).
The JSON-lines log (``log.jsonl`` in the run directory) gets a ``step`` record every
``log_every_steps`` steps and an ``epoch`` record per epoch with the same figures, plus ``event``
records (start, resume, checkpoint, skipped images). Only rank 0 reports.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

LOG_FILE = "log.jsonl"  # in the run directory


class JsonlLog:
    """Append-only JSON-lines file (line-buffered, so a killed run keeps what it logged)."""

    def __init__(self, path: str | Path | None) -> None:
        self._fh: TextIO | None = open(path, "a", encoding="utf-8", buffering=1) if path else None  # noqa: SIM115

    def write(self, kind: str, **fields: Any) -> None:
        if self._fh is not None:
            record = {"type": kind, "time": round(time.time(), 3), **fields}
            self._fh.write(json.dumps(record, default=float) + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class EpochProgress:
    """One epoch's bar and running figures. ``enabled=False`` (non-main ranks) does nothing."""

    def __init__(self, epoch: int, epochs: int, total_steps: int, global_batch: int, *, enabled: bool,
                 show_bar: bool, log: JsonlLog, log_every: int, initial: int = 0) -> None:
        self.epoch, self.epochs = epoch, epochs
        self.global_batch = global_batch
        self.enabled = enabled
        self.log, self.log_every = log, log_every
        self.loss_sum = 0.0
        self.steps = 0
        self.start = time.perf_counter()
        self.bar = None
        if enabled and show_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=initial, desc=f"epoch {epoch + 1}/{epochs}",
                            unit="step", dynamic_ncols=True, leave=False, file=sys.stderr)

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)

    @property
    def images_per_second(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.steps * self.global_batch / elapsed if elapsed > 0 else 0.0

    def update(self, step: int, loss: float, lr: float, loss_scale: float, overflow: bool) -> None:
        self.loss_sum += loss
        self.steps += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if self.steps % max(1, min(self.log_every, 10)) == 0 or self.steps == 1:
                self.bar.set_postfix(loss=f"{self.mean_loss:.4f}", lr=f"{lr:.3g}",
                                     img_s=f"{self.images_per_second:.1f}", refresh=False)
        if step % self.log_every == 0:
            self.log.write("step", epoch=self.epoch + 1, step=step, loss=round(loss, 6),
                           mean_loss=round(self.mean_loss, 6), lr=lr,
                           img_per_s=round(self.images_per_second, 2), loss_scale=loss_scale,
                           overflow=overflow)

    def close(self) -> float:
        """Close the bar; returns the epoch's train seconds."""
        if self.bar is not None:
            self.bar.close()
        return time.perf_counter() - self.start


def epoch_summary(epoch: int, epochs: int, *, loss: float, lr: float, img_per_s: float, seconds: float,
                  metrics: dict[str, float] | None, skipped: int) -> str:
    """The per-epoch line: ``epoch 3/10  loss 0.8123  lr 1.2e-02  412.3 img/s  41.2s  val top1 ...``."""
    parts = [f"epoch {epoch}/{epochs}", f"loss {loss:.4f}", f"lr {lr:.3e}", f"{img_per_s:.1f} img/s",
             f"{seconds:.1f}s"]
    if metrics:
        parts.append(f"val top1 {metrics['top1']:.2f}% top5 {metrics['top5']:.2f}% "
                     f"loss {metrics['loss']:.4f}")
    if skipped:
        parts.append(f"skipped images {skipped}")
    return "  ".join(parts)
