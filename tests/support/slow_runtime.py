"""A synthetic model with a fixed service time, and `ddrnet serve` running it: for overload and fault
measurements (``python -m benchmarks.overload``) and the reliability tests (tests/reliability); a
test fake, so it lives with the tests.

:class:`SlowRuntime` is a real runtime adapter (``inference.runtimes.base.Runtime``) loaded by real
worker processes as ``tests.support.slow_runtime:SlowRuntime``. Its logits are the per-channel means of
each image, so a solid red image is class ``red`` (labels ``red``, ``green``, ``blue``) and any answer
can be checked by eye. Each batch sleeps ``DDRNET_SLOW_RUNTIME_MS`` (default 50) plus
``DDRNET_SLOW_RUNTIME_PER_IMAGE_MS`` (default 0) per image before answering, which gives the instance a
known capacity. With ``DDRNET_SLOW_RUNTIME_LOG`` set, every batch appends one JSON line (pid, size, each
image's three channel means) to that file: the proof of what the model saw. A batch whose first value is
:data:`FAIL` (-12345, which no image normalises to: only an FP32 tensor can carry it) raises, a runtime
failure in one batch; a version whose manifest says ``arch: broken`` fails to load.

``python -m tests.support.slow_runtime publish REPO [--name slow] [--version 1] [--arch slow]`` publishes
a version of the synthetic model; ``python -m tests.support.slow_runtime serve [ddrnet serve options]``
runs ``ddrnet serve`` (the same options, settings, front ends, batcher and worker processes; only
the runtime adapter is this one) and prints the same start-up lines.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from inference.runtimes.base import Runtime

RUNTIME_SPEC = "tests.support.slow_runtime:SlowRuntime"
LABELS = ["red", "green", "blue"]
FAIL = -12345.0
DELAY_ENV = "DDRNET_SLOW_RUNTIME_MS"
PER_IMAGE_ENV = "DDRNET_SLOW_RUNTIME_PER_IMAGE_MS"
LOG_ENV = "DDRNET_SLOW_RUNTIME_LOG"


class SlowRuntime(Runtime):
    """See the module docstring."""

    name = "slow"

    def load(self, version_dir, manifest, device="cpu", device_id=0, options=None):
        if manifest.arch == "broken":
            raise RuntimeError(f"synthetic load failure for {version_dir} (manifest arch 'broken')")
        self.device = device
        self.delay_s = float(os.environ.get(DELAY_ENV, "50")) / 1000.0
        self.per_image_s = float(os.environ.get(PER_IMAGE_ENV, "0")) / 1000.0
        self.log_path = os.environ.get(LOG_ENV) or None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if float(batch[0, 0, 0, 0]) == FAIL:
            raise RuntimeError("injected runtime failure")
        time.sleep(self.delay_s + self.per_image_s * batch.shape[0])
        logits = batch.mean(axis=(2, 3)).astype(np.float32)
        if self.log_path:
            line = json.dumps({"pid": os.getpid(), "size": int(batch.shape[0]),
                               "means": np.round(logits, 4).tolist()})
            with open(self.log_path, "a") as log:  # one short append per batch: atomic on POSIX
                log.write(line + "\n")
        return logits


def normalised_means(rgb: tuple[int, int, int]) -> list[float]:
    """What :class:`SlowRuntime` reports for a solid image of colour ``rgb`` (mean 0.5, std 0.5)."""
    return [round((c / 255.0 - 0.5) / 0.5, 4) for c in rgb]


def seen_means(log_path: Path) -> list[list[float]]:
    """Every image's channel means the model was given, from the ``DDRNET_SLOW_RUNTIME_LOG`` file."""
    if not Path(log_path).exists():
        return []
    out = []
    for line in Path(log_path).read_text().splitlines():
        out.extend(json.loads(line)["means"])
    return out


def publish(repository: Path, name: str = "slow", version: int = 1, *, image_size: int = 8,
            arch: str = "slow") -> Path:
    """Publish a version of the synthetic model (the way an exporter does); returns its directory."""
    from model import manifest as mf
    from model import repository as repo

    staging = repo.create_staging_dir(repository, name)
    (staging / "model.onnx").write_bytes(f"synthetic model {name} v{version}\n".encode())
    manifest = mf.ModelManifest(
        name=name, version=version, arch=arch, num_classes=len(LABELS), labels=list(LABELS),
        weight_variant="zoo",
        preprocess={"image_size": image_size, "crop_pct": 1.0, "interpolation": "bilinear",
                    "resize_mode": "squash", "mean": [0.5] * 3, "std": [0.5] * 3},
        input=mf.TensorSpec("input", "float32", [-1, 3, image_size, image_size]),
        output=mf.TensorSpec("logits", "float32", [-1, len(LABELS)]),
        files={"onnx": "model.onnx", "fixed_batch": {}},
        checksums={"model.onnx": repo.checksum_entry(staging / "model.onnx")},
        source_checkpoint_sha256="0" * 64, created_at=mf.utc_now_iso(),
    )
    mf.write_manifest(staging, manifest)
    published = repo.publish_version(staging, repository, name, version)
    return repo.version_dir(repository, name, published)


def serve(argv: list[str]) -> int:
    """``ddrnet serve`` with this runtime: the real option parsing, settings, logging and server."""
    import argparse
    import asyncio

    from cli import serve as serve_cli
    from cli.errors import CliError
    from server.app import serve as run_server
    from server.logs import configure_logging
    from server.model_manager import StartupError

    parser = argparse.ArgumentParser(prog="python -m tests.support.slow_runtime serve")
    serve_cli.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = serve_cli.settings_from_args(args)
        configure_logging(settings.log_level, settings.log_json)
        return asyncio.run(run_server(settings, runtime=RUNTIME_SPEC))
    except (CliError, StartupError) as exc:
        print(f"ddrnet serve: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="publish a version of the synthetic model")
    pub.add_argument("repository", type=Path)
    pub.add_argument("--name", default="slow")
    pub.add_argument("--version", type=int, default=1)
    pub.add_argument("--arch", default="slow", help="'broken' makes the version fail to load")
    sub.add_parser("serve", help="ddrnet serve with this runtime (takes every ddrnet serve option)")
    args: Any = parser.parse_args(argv)
    print(publish(args.repository, args.name, args.version, arch=args.arch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
