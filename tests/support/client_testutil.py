"""Shared pieces of the client tests: a small model repository and a real ``ddrnet serve`` process.

:func:`build_onnx_repository` publishes a tiny convolutional classifier as an ONNX model version
(built with ``onnx.helper``, seeded weights, 10 classes, 32x32 input) through ``model.repository``,
so the server loads it with ONNX Runtime in a fraction of a second, without MindSpore.
:class:`ServerProcess` starts ``python -m cli.main serve`` on 127.0.0.1 with free ports, waits
(bounded) for its ``ready`` line, and is always killed on exit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM_CLASSES = 10
IMAGE_SIZE = 32
LABELS = [f"digit {i}" for i in range(NUM_CLASSES)]


def package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing it (importing sklearn takes seconds)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


def sample_images() -> list[Path]:
    """Real photos shipped with scikit-learn and scikit-image."""
    sk = package_dir("sklearn") / "datasets" / "images"
    ski = package_dir("skimage") / "data"
    photos = [ski / "astronaut.png", ski / "coffee.png", ski / "chelsea.png"]
    return [sk / "china.jpg", sk / "flower.jpg", *photos]


def _onnx_model(channels: int, seed: int):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (channels, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, (channels,)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (NUM_CLASSES, channels)).astype(np.float32)
    b2 = rng.normal(0, 0.1, (NUM_CLASSES,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["p1"]),
        helper.make_node("Flatten", ["p1"], ["f1"]),
        helper.make_node("Gemm", ["f1", "w2", "b2"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_onnx_repository(root: Path, name: str = "tiny", channels: int = 8, seed: int = 0) -> Path:
    """Publish version 1 of model ``name`` into repository ``root``; returns the version directory."""
    import onnx

    from model import manifest as mf
    from model import repository as repo
    from model.preprocess import PreprocessConfig

    staging = repo.create_staging_dir(root, name)
    onnx.save(_onnx_model(channels, seed), str(staging / "model.onnx"))
    manifest = mf.ModelManifest(
        name=name,
        version=1,
        arch="tinycnn",
        num_classes=NUM_CLASSES,
        labels=list(LABELS),
        weight_variant="zoo",
        preprocess=PreprocessConfig(image_size=IMAGE_SIZE).to_dict(),
        input=mf.TensorSpec("input", "float32", [-1, 3, IMAGE_SIZE, IMAGE_SIZE]),
        output=mf.TensorSpec("logits", "float32", [-1, NUM_CLASSES]),
        files={"onnx": "model.onnx", "fixed_batch": {}},
        checksums={"model.onnx": repo.checksum_entry(staging / "model.onnx")},
        source_checkpoint_sha256="0" * 64,
        created_at=mf.utc_now_iso(),
    )
    mf.write_manifest(staging, manifest)
    version = repo.publish_version(staging, root, name, 1)
    return repo.version_dir(root, name, version)


def reference_logits(version_dir: Path, paths: list[Path]) -> np.ndarray:
    """What the model must answer for ``paths``: the eval transform + ONNX Runtime, in this process."""
    import onnxruntime as ort

    from model import manifest as mf
    from model.preprocess import EvalTransform

    manifest = mf.load_manifest(version_dir)
    transform = EvalTransform(manifest.preprocess)
    batch = transform.batch([p.read_bytes() for p in paths])
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": batch})[0]


class ServerProcess:
    """``ddrnet serve`` as a child process (see the module docstring). ``http`` and ``grpc`` are the
    ``127.0.0.1:PORT`` addresses once started."""

    READY_TIMEOUT_S = 90.0

    def __init__(self, repository: Path, *extra: str) -> None:
        self.repository = repository
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None
        self.http = ""
        self.grpc = ""
        self.lines: list[str] = []
        self._ready = threading.Event()

    def _reader(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            m = re.search(r"HTTP on https?://([\d.]+:\d+)", line)
            if m:
                self.http = m.group(1)
            m = re.search(r"gRPC on ([\d.]+:\d+)", line)
            if m:
                self.grpc = m.group(1)
            if "ddrnet serve: ready" in line:
                self._ready.set()
        self._ready.set()  # the process ended: stop waiting

    def start(self) -> ServerProcess:
        cmd = [
            sys.executable, "-m", "cli.main", "serve",
            "--model-repository", str(self.repository),
            "--http-host", "127.0.0.1", "--http-port", "0",
            "--grpc-host", "127.0.0.1", "--grpc-port", "0",
            "--runtime", "onnxruntime", "--poll-interval-s", "0",
            "--log-level", "warning", *self.extra,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        threading.Thread(target=self._reader, daemon=True).start()
        if not self._ready.wait(self.READY_TIMEOUT_S) or self.proc.poll() is not None:
            output = "\n".join(self.lines[-30:])
            self.stop()
            raise RuntimeError(f"ddrnet serve did not become ready:\n{output}")
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(predicate, timeout_s: float = 10.0, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
