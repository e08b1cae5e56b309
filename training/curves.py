"""Training curves from a run's ``log.jsonl``: one figure of loss, learning rate, train img/s and val
top-1/top-5 against the epoch, for one run (``curves.png``, redrawn by the trainer after every epoch) or
several on the same axes (``ddrnet runs compare``), and the summary table of each run.

The log is the trainer's own (``training.progress``): ``step`` records (loss, lr, img/s every
``log_every_steps``), ``epoch`` records (mean loss, lr, img/s, ``val`` metrics) and a ``start`` record
per start or resume. Lines that do not parse (a run killed mid-write) are skipped. Drawn with
matplotlib's Agg backend (no display needed), written aside and renamed, so a reader never sees half
a file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.progress import LOG_FILE

CURVES_FILE = "curves.png"


class CurvesError(ValueError):
    """A run directory without a readable log; the message names it."""


@dataclass
class RunLog:
    """The records of one run, in log order."""

    name: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    steps_per_epoch: int | None = None
    started: float | None = None

    def step_epochs(self) -> list[float]:
        """Each step record's position in epochs (fractional), for plotting against the epoch axis."""
        per = self.steps_per_epoch or 0
        return [r["step"] / per if per else float(r["epoch"]) for r in self.steps]


def read_log(run_dir: str | os.PathLike[str]) -> RunLog:
    """The run's ``log.jsonl``; a resumed run's repeated epochs keep the last record of each."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        raise CurvesError(f"{run_dir} has no {LOG_FILE} (not a training run directory?)")
    run = RunLog(Path(run_dir).resolve().name)
    epochs: dict[int, dict[str, Any]] = {}
    steps: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            kind = record.get("type")
            if kind == "start":
                run.steps_per_epoch = record.get("steps_per_epoch") or run.steps_per_epoch
                run.started = run.started or record.get("time")
            elif kind == "step" and isinstance(record.get("step"), int):
                steps[record["step"]] = record
            elif kind == "epoch" and isinstance(record.get("epoch"), int):
                epochs[record["epoch"]] = record
    run.steps = [steps[k] for k in sorted(steps)]
    run.epochs = [epochs[k] for k in sorted(epochs)]
    return run


def summary(run: RunLog) -> dict[str, Any]:
    """Epochs done, best and last val top-1 (and top-5), last loss, median train img/s, wall time."""
    vals = [(e["epoch"], e["val"]) for e in run.epochs if isinstance(e.get("val"), dict) and e["val"]]
    best = max(vals, key=lambda v: v[1].get("top1", -1.0), default=None)
    speeds = sorted(e["img_per_s"] for e in run.epochs if _number(e.get("img_per_s")))
    ended = run.epochs[-1]["time"] if run.epochs else None
    return {
        "run": run.name,
        "epochs": run.epochs[-1]["epoch"] if run.epochs else 0,
        "best_top1": best[1].get("top1") if best else None,
        "best_epoch": best[0] if best else None,
        "last_top1": vals[-1][1].get("top1") if vals else None,
        "last_top5": vals[-1][1].get("top5") if vals else None,
        "last_loss": run.epochs[-1].get("loss") if run.epochs else None,
        "img_per_s": speeds[len(speeds) // 2] if speeds else None,
        "minutes": (ended - run.started) / 60.0 if ended and run.started else None,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """The summaries as an aligned text table (``-`` for what a run has not logged)."""
    head = ("run", "epochs", "best top-1", "at epoch", "last top-1", "last top-5", "last loss", "img/s",
            "minutes")
    keys = ("run", "epochs", "best_top1", "best_epoch", "last_top1", "last_top5", "last_loss", "img_per_s",
            "minutes")
    cells = [head] + [tuple(_cell(row[k]) for k in keys) for row in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ("  ".join(c[i].rjust(widths[i]) if i else c[i].ljust(widths[i]) for i in range(len(head)))
             for c in cells)
    return "\n".join(lines)


def draw(runs: list[RunLog], output: str | os.PathLike[str], title: str | None = None) -> Path:
    """Write the figure of ``runs`` (one colour each) to ``output`` (PNG); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    (ax_loss, ax_lr), (ax_speed, ax_val) = axes
    for index, run in enumerate(runs):
        colour = f"C{index % 10}"
        label = run.name
        if run.steps:
            ax_loss.plot(run.step_epochs(), [r["loss"] for r in run.steps], color=colour, alpha=0.3, lw=0.8)
            ax_lr.plot(run.step_epochs(), [r["lr"] for r in run.steps], color=colour, label=label)
        epochs = [e["epoch"] for e in run.epochs]
        ax_loss.plot(epochs, [e.get("loss") for e in run.epochs], color=colour, marker="o", ms=3, label=label)
        ax_speed.plot(epochs, [e.get("img_per_s") for e in run.epochs], color=colour, marker="o", ms=3,
                      label=label)
        vals = [(e["epoch"], e["val"]) for e in run.epochs if isinstance(e.get("val"), dict) and e["val"]]
        if vals:
            ax_val.plot([v[0] for v in vals], [v[1].get("top1") for v in vals], color=colour, marker="o",
                        ms=3, label=f"{label} top-1")
            ax_val.plot([v[0] for v in vals], [v[1].get("top5") for v in vals], color=colour, ls="--",
                        label=f"{label} top-5")
    for ax, name, unit in ((ax_loss, "train loss (line: per step; dots: epoch mean)", ""),
                           (ax_lr, "learning rate", ""), (ax_speed, "train throughput", "img/s"),
                           (ax_val, "validation accuracy", "%")):
        ax.set_title(name)
        ax.set_xlabel("epoch")
        if unit:
            ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title or ", ".join(run.name for run in runs))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial.png")
    fig.savefig(partial, dpi=90)
    plt.close(fig)
    os.replace(partial, output)
    return output


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2e}"
    return str(value)
