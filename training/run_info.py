"""``run.json``: what a training run says about itself, written by ``ddrnet train`` and read by
``ddrnet export --run-dir``.

The run directory's ``run.json`` holds what export needs to turn the run into a model version without
restating it (architecture, class count, labels, weight variant, eval preprocessing, the best and
latest checkpoints, the training images for int8 calibration) and the run's progress (status, epochs
and steps done, best top-1, world size, global batch, ...). :class:`RunInfo` is the one reader and
writer; a missing or malformed file is a :class:`RunInfoError` naming the field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.preprocess_config import RECORDED_KEYS, PreprocessConfig

RUN_FILE = "run.json"
_TYPED = ("arch", "num_classes", "labels", "model_variant", "preprocess", "checkpoint_best",
          "checkpoint_latest", "train_dir")


class RunInfoError(ValueError):
    """``run.json`` is missing, unreadable or lacks what is asked of it; the message names the run."""


@dataclass
class RunInfo:
    """The content of ``run.json``: the typed fields below, and ``stats`` (status, progress, figures)."""

    arch: str
    num_classes: int
    labels: list[str]
    model_variant: str
    preprocess: PreprocessConfig
    checkpoint_best: str | None = None  # relative to the run directory
    checkpoint_latest: str | None = None
    train_dir: str | None = None  # absolute path of the training split (int8 calibration images)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        head = {"status": self.stats.get("status", "unknown")}
        typed = {
            "arch": self.arch, "num_classes": self.num_classes, "labels": list(self.labels),
            "model_variant": self.model_variant, "preprocess": self.preprocess.to_dict(),
            "checkpoint_best": self.checkpoint_best, "checkpoint_latest": self.checkpoint_latest,
            "train_dir": self.train_dir,
        }
        return {**head, **typed, **{k: v for k, v in self.stats.items() if k != "status"}}

    @classmethod
    def from_dict(cls, data: Any, where: str = RUN_FILE) -> RunInfo:
        if not isinstance(data, dict):
            raise RunInfoError(f"{where}: must hold a JSON object")
        for key in ("arch", "num_classes", "labels", "model_variant", "preprocess"):
            if key not in data:
                raise RunInfoError(f"{where}: '{key}' is missing")
        labels = data["labels"]
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise RunInfoError(f"{where}: 'labels' must be a list of strings")
        num_classes = data["num_classes"]
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise RunInfoError(f"{where}: 'num_classes' must be a positive integer, got {num_classes!r}")
        try:
            preprocess = PreprocessConfig.from_dict(data["preprocess"], required=RECORDED_KEYS)
        except ValueError as exc:
            raise RunInfoError(f"{where}: {exc}") from None
        for key in ("arch", "model_variant"):
            if not isinstance(data[key], str) or not data[key]:
                raise RunInfoError(f"{where}: '{key}' must be a non-empty string, got {data[key]!r}")
        optional = {}
        for key in ("checkpoint_best", "checkpoint_latest", "train_dir"):
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise RunInfoError(f"{where}: '{key}' must be a path or null, got {value!r}")
            optional[key] = value
        stats = {k: v for k, v in data.items() if k not in _TYPED}
        return cls(data["arch"], num_classes, list(labels), data["model_variant"], preprocess, **optional,
                   stats=stats)


def read_run_info(run_dir: str | os.PathLike[str]) -> RunInfo:
    """``<run_dir>/run.json``, validated; RunInfoError naming the file when it is missing or malformed."""
    path = Path(run_dir) / RUN_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunInfoError(f"{path} does not exist: {run_dir} is not a training run directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunInfoError(f"{path}: cannot read ({exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RunInfoError(f"{path}: not valid JSON ({exc})") from None
    return RunInfo.from_dict(data, where=str(path))


def write_run_info(run_dir: str | os.PathLike[str], info: RunInfo) -> Path:
    """Write ``<run_dir>/run.json`` atomically (a reader never sees half a file)."""
    path = Path(run_dir) / RUN_FILE
    tmp = path.with_name(f".partial-{os.getpid()}-{RUN_FILE}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(info.to_dict(), indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path
