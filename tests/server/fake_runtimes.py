"""A fake runtime for worker-process tests (loaded by the worker as ``fake_runtimes:FakeRuntime``).

Its logits are the per-channel means of each image (``[N, 3]``), so results are checkable by eye.
The first pixel of a batch steers it: ``-1`` raises (a runtime failure in one batch), ``-2`` sleeps
for a minute (a batch in flight to kill, or a hung worker). ``options["fixed"]`` declares fixed batch
sizes; ``options["noisy"]`` prints to stdout at load. Python 3.7 compatible like every worker-side module.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from server.runtimes.base import Runtime

FAIL = -1.0
HANG = -2.0


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
        fixed = self.supported_batch_sizes
        if fixed is not None and batch.shape[0] not in fixed:
            raise ValueError(f"fake runtime got batch {batch.shape[0]}, fixed sizes {fixed}")
        return batch.mean(axis=(2, 3)).astype(np.float32)
