"""A fake runtime for worker-process tests (loaded by the worker as
``tests.support.fake_runtimes:FakeRuntime``).

Its logits are the per-channel means of each image (``[N, 3]``), so results are checkable by eye. The
first pixel of a batch steers it: ``-1`` raises (a runtime failure in one batch), ``-2`` sleeps for a
minute (a hung worker), ``-3`` raises ValueError, ``-4`` returns NaN logits, ``-5`` takes two seconds (a
batch in flight to kill). :class:`NanRuntime` answers NaN for everything. ``options["fixed"]`` declares
fixed batch sizes; ``options["noisy"]`` prints to stdout at load. Python 3.7 compatible like every
worker-side module."""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from inference.runtimes.base import Runtime
from model.manifest import FileChecksum, ModelManifest, TensorSpec

FAIL = -1.0
HANG = -2.0
BAD_VALUE = -3.0  # the runtime raises ValueError (a server fault, whatever the exception type)
NAN = -4.0  # the runtime returns NaN logits
SLOW = -5.0  # the batch takes 2 s (a batch in flight to kill; its retry takes 2 s again)


class FakeRuntime(Runtime):
    name = "fake"

    def load(self, version_dir, manifest, device="cpu", device_id=0, options=None):
        self.device = device
        self.options = dict(options or {})
        self.model_file = None
        self.calls = 0
        if self.options.get("noisy"):  # like Lite's converter: output on stdout, from Python and from C
            print("noise from python on stdout")
            sys.stdout.flush()
            os.write(1, b"noise written to fd 1\n")

    @property
    def supported_batch_sizes(self):
        fixed = self.options.get("fixed")
        return sorted(fixed) if fixed else None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        first = float(batch[0, 0, 0, 0])
        if first == FAIL:
            raise RuntimeError("injected runtime failure")
        if first == HANG:
            time.sleep(60)
        if first == SLOW:
            time.sleep(2.0)
        if first == BAD_VALUE:
            raise ValueError("injected ValueError from the runtime")
        if first == NAN:
            return np.full((batch.shape[0], batch.shape[1]), np.nan, np.float32)
        fixed = self.supported_batch_sizes
        if fixed is not None and batch.shape[0] not in fixed:
            raise ValueError(f"fake runtime got batch {batch.shape[0]}, fixed sizes {fixed}")
        return batch.mean(axis=(2, 3)).astype(np.float32)


class NanRuntime(FakeRuntime):
    """The fake model that answers NaN logits for every image (a broken model)."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.full((batch.shape[0], batch.shape[1]), np.nan, np.float32)


def fake_manifest(name: str = "fake", num_classes: int = 3, image_size: int = 4) -> ModelManifest:
    """A valid manifest for the fake model (its one listed file is never read by FakeRuntime)."""
    return ModelManifest(
        name=name, version=1, arch="fake", num_classes=num_classes,
        labels=[f"class {i}" for i in range(num_classes)], weight_variant="zoo",
        preprocess={"image_size": image_size, "crop_pct": 1.0, "interpolation": "bilinear",
                    "resize_mode": "squash", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        input=TensorSpec("input", "float32", [-1, 3, image_size, image_size]),
        output=TensorSpec("logits", "float32", [-1, num_classes]),
        files={"onnx": "model.onnx", "fixed_batch": {}},
        checksums={"model.onnx": FileChecksum("0" * 64, 0)},
        source_checkpoint_sha256="0" * 64, created_at="2026-01-01T00:00:00Z",
    )
