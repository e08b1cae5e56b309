"""Fixtures of the export tests: a randomly initialised 10-class DDRNet-23-slim checkpoint and a training
folder of real digit images (scikit-learn's), shared by the int8 and the precision tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.ms_device import use_device

NUM_CLASSES = 10
IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised DDRNet-23-slim with 10 classes, saved as a MindSpore checkpoint."""
    import mindspore as ms

    import model

    ms.set_context(mode=ms.GRAPH_MODE)
    use_device("CPU", 0)
    ms.set_seed(0)
    net = model.create_model("ddrnet23_slim", num_classes=NUM_CLASSES)
    path = tmp_path_factory.mktemp("ckpt") / "slim10.ckpt"
    ms.save_checkpoint(net, str(path))
    return path


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory) -> Path:
    """A training folder of real images: scikit-learn digits as PNGs in class folders (3 per class)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("digits") / "train"
    for label in range(NUM_CLASSES):
        (root / str(label)).mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(digits.target == label)[:3]):
            pixels = (digits.images[index] * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels).convert("RGB").resize((32, 32)).save(root / str(label) / f"{i}.png")
    return root
