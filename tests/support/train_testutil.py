"""Helpers for the training tests: tiny real-image folders, small configs, running `ddrnet`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "training" / "configs"


def make_image_folder(root: Path, classes: int = 3, train_per_class: int = 8, val_per_class: int = 4,
                      size: int = 64) -> Path:
    """An ImageNet-style folder of real scikit-learn digits (class k = digit k), upscaled JPEGs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for k in range(classes):
        picks = np.flatnonzero(digits.target == k)[: train_per_class + val_per_class]
        for j, idx in enumerate(picks):
            split = "train" if j < train_per_class else "val"
            folder = root / split / str(k)
            folder.mkdir(parents=True, exist_ok=True)
            ink = (digits.images[idx] / 16.0 * 255).astype(np.uint8)
            img = Image.fromarray(255 - ink).resize((size, size), Image.BICUBIC).convert("RGB")
            img.save(folder / f"{idx:04d}.jpg", quality=95)
    return root


def tiny_config(tmp_path: Path, data: Path, name: str = "config.yaml", **overrides) -> Path:
    """The digits demo config scaled down to seconds: tiny data, 2 epochs, batch 8."""
    cfg = yaml.safe_load((CONFIGS / "digits_demo.yaml").read_text())
    cfg.update(data_url=str(data), output_dir=str(tmp_path / "run"), num_classes=3, epochs=2, batch_size=8,
               warmup_length=1, num_parallel_workers=1, log_every_steps=1)
    cfg.update(overrides)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli_env() -> dict[str, str]:
    """Environment for subprocesses: the venv's bin first on PATH (msrun starts `python` from PATH)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.pop("MS_ROLE", None)
    env.pop("MS_WORKER_NUM", None)
    return env


def ddrnet(*args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `ddrnet ARGS` (as `python -m cli.main`) and capture its output."""
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=cli_env(), cwd=cwd or REPO)


def ddrnet_popen(*args: str, cwd: Path | None = None, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], stdout=out, stderr=subprocess.STDOUT,
                            env=cli_env(), cwd=cwd or REPO)


def pipeline_config(folder: Path, **overrides):
    """A validated TrainConfig over ``folder`` for pipeline tests: 3 classes at 64 px on CPU, batch 4,
    every augmentation on (mixup/cutmix, erasing 0.5), seed 5."""
    from training.config import validate_config

    data = {"data_url": str(folder), "num_classes": 3, "epochs": 2, "warmup_length": 0, "image_size": 64,
            "batch_size": 4, "num_parallel_workers": 2, "mix_up": 0.8, "cutmix": 1.0, "label_smoothing": 0.1,
            "re_prob": 0.5, "seed": 5, "device_target": "CPU"}
    data.update(overrides)
    return validate_config(data)


def dataset_rows(dataset) -> list[tuple]:
    """Every row of a mindspore.dataset pipeline as numpy arrays (one epoch; the iterator is stopped)."""
    it = dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)
    try:
        return [tuple(np.array(c) for c in row) for row in it]
    finally:
        it.stop()
