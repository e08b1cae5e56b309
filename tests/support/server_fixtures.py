"""Helpers for the server tests: model repositories (a fake model and a real exported DDRNet-23-slim),
test images, an in-process service core on the fake runtime, and a real ``ddrnet serve`` process.

The fake model is ``tests.support.fake_runtimes:FakeRuntime`` in real worker processes: its logits are the
per-channel means of the (normalised) input, so a solid red image comes back as class ``red``. Its
version directories hold a manifest that passes the repository's completeness checks and a dummy
model file the fake runtime never reads; they start in well under a second.

``python server_fixtures.py build REPO`` exports a freshly initialised DDRNet-23-slim (10 classes,
64x64 input, ONNX) into ``REPO/slim/1`` with ``training.export`` in a fresh process (MindSpore's
process-wide state stays out of the test process); the ``slim_repository`` fixture
(``tests/conftest.py``) does it once per test session.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
FAKE_RUNTIME = "tests.support.fake_runtimes:FakeRuntime"
FAKE_LABELS = ["red", "green", "blue"]
COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}
SLIM_NAME = "slim"
SLIM_IMAGE_SIZE = 64
SLIM_CLASSES = 10


# -- images ---------------------------------------------------------------------------------------------


def solid_image(rgb: tuple[int, int, int], size: int = 24, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, format=fmt)
    return buf.getvalue()


def colour_image(name: str, fmt: str = "PNG") -> bytes:
    return solid_image(COLOURS[name], fmt=fmt)


def photo_paths() -> list[Path]:
    """Eight real photos shipped inside scikit-learn and scikit-image."""
    import skimage
    import sklearn

    sk = Path(sklearn.__file__).parent / "datasets" / "images"
    ski = Path(skimage.__file__).parent / "data"
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg"]
    return [sk / "china.jpg", sk / "flower.jpg", *(ski / n for n in names)]


def photos() -> list[bytes]:
    return [p.read_bytes() for p in photo_paths()]


# -- repositories ---------------------------------------------------------------------------------------


def make_fake_version(
    repository: Path,
    name: str = "fake",
    version: int = 1,
    *,
    image_size: int = 8,
    preprocess: dict[str, Any] | None = None,
    labels: Sequence[str] = FAKE_LABELS,
) -> Path:
    """Publish a version of the fake model (3 classes: the colour channels) and return its directory."""
    from model import manifest as mf
    from model import repository as repo

    staging = repo.create_staging_dir(repository, name)
    payload = f"fake model {name} v{version}".encode()
    (staging / "model.onnx").write_bytes(payload)
    pre = {"image_size": image_size, "crop_pct": 1.0, "interpolation": "bilinear", "resize_mode": "squash",
           "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    pre.update(preprocess or {})
    manifest = mf.ModelManifest(
        name=name,
        version=version,
        arch="fake",
        num_classes=len(labels),
        labels=list(labels),
        weight_variant="zoo",
        preprocess=pre,
        input=mf.TensorSpec("input", "float32", [-1, 3, image_size, image_size]),
        output=mf.TensorSpec("logits", "float32", [-1, len(labels)]),
        files={"onnx": "model.onnx", "fixed_batch": {}},
        checksums={"model.onnx": repo.checksum_entry(staging / "model.onnx")},
        source_checkpoint_sha256="0" * 64,
        created_at=mf.utc_now_iso(),
    )
    mf.write_manifest(staging, manifest)
    published = repo.publish_version(staging, repository, name, version)
    return repo.version_dir(repository, name, published)


def copy_version(source_dir: Path, repository: Path, name: str, version: int | None = None) -> int:
    """Publish a copy of the version at ``source_dir`` (files hard-linked) as ``name``/``version``
    (the next free version when None), the way an exporter publishes: staging dir, then rename."""
    from model import manifest as mf
    from model import repository as repo

    staging = repo.create_staging_dir(repository, name)
    for path in Path(source_dir).iterdir():
        if path.name != "model.json":
            os.link(path, staging / path.name)
    manifest = mf.load_manifest(source_dir)
    manifest.name = name
    manifest.version = version or repo.next_version(repository, name)
    mf.write_manifest(staging, manifest)
    return repo.publish_version(staging, repository, name, manifest.version)


def build_slim_repository(out: Path) -> Path:
    """Export the DDRNet-23-slim test model into ``out`` in a fresh process (see the module docstring)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), GLOG_v="3")
    proc = subprocess.run([sys.executable, "-m", "tests.support.server_fixtures", "build", str(out)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    if proc.returncode != 0:
        log = proc.stdout.decode(errors="replace")[-4000:]
        raise RuntimeError("exporting the DDRNet-23-slim test model failed:\n" + log)
    return out


def _build(out: str) -> None:
    import mindspore as ms

    import model
    from model.ms_device import use_device
    from training.export import ExportSpec, export_model

    ms.set_context(mode=ms.GRAPH_MODE)
    use_device("CPU", 0)
    ms.set_seed(3)
    net = model.create_model("ddrnet23_slim", num_classes=SLIM_CLASSES)
    os.makedirs(out, exist_ok=True)
    checkpoint = os.path.join(out, ".slim.ckpt")
    ms.save_checkpoint(net, checkpoint)
    spec = ExportSpec(
        checkpoint=Path(checkpoint),
        arch="ddrnet23_slim",
        repository=Path(out),
        name=SLIM_NAME,
        num_classes=SLIM_CLASSES,
        labels=[f"digit {i}" for i in range(SLIM_CLASSES)],
        preprocess={"image_size": SLIM_IMAGE_SIZE},
        formats=("onnx",),
    )
    result = export_model(spec)
    os.unlink(checkpoint)
    print(json.dumps({"version_dir": str(result.version_dir)}))


# -- settings and an in-process core --------------------------------------------------------------------


def settings_for(repository: Path, **overrides: Any) -> Any:
    """ServerSettings for tests: loopback, free ports, one instance, small thread counts."""
    from server.settings import ServerSettings

    values: dict[str, Any] = {
        "model_repository": repository, "http_port": 0, "grpc_port": 0, "instances": 1,
        "threads_per_instance": 1, "preprocess_workers": 2, "poll_interval_s": 0, "log_level": "warning",
    }
    values.update(overrides)
    return ServerSettings(**values)


@contextlib.asynccontextmanager
async def started_core(settings: Any, runtime: str | None = FAKE_RUNTIME) -> AsyncIterator[Any]:
    """A started DataPlane over a ModelManager whose workers run ``runtime`` (the fake by default)."""
    from prometheus_client import CollectorRegistry

    from server.core import DataPlane
    from server.metrics import ServerMetrics
    from server.model_manager import ModelManager
    from server.preprocessing import Preprocessor

    metrics = ServerMetrics(CollectorRegistry())
    manager = ModelManager(settings, metrics, runtime=runtime)
    preprocessor = Preprocessor(settings.preprocess_workers, settings.max_decode_memory_bytes)
    core = DataPlane(settings, manager, preprocessor, metrics)
    try:
        await manager.start()
        yield core
    finally:
        await manager.close()
        preprocessor.close()
        core.close()


def sample(metrics: Any, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# -- a real server process ------------------------------------------------------------------------------


class ServerProcess:
    """``ddrnet serve`` (``python -m cli.main serve``) in a subprocess on loopback with free ports.

    :meth:`start` waits (bounded) for the ``ready`` line and parses the bound ports from stdout;
    stderr goes to ``log_path``. Always call :meth:`kill` in teardown.
    """

    def __init__(self, repository: Path, log_path: Path, *args: str, env: dict[str, str] | None = None):
        self.repository = repository
        self.log_path = log_path
        self.args = list(args)
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.http_port = 0
        self.grpc_port = 0
        self._ready = threading.Event()
        self._log: Any = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "cli.main", "serve", "--model-repository", str(self.repository),
                "--http-port", "0", "--grpc-port", "0", "--poll-interval-s", "0", "--log-level", "info",
                *self.args]

    def start(self, timeout_s: float = 180.0) -> ServerProcess:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), GLOG_v="3", PYTHONUNBUFFERED="1")
        # Importing MindSpore in this test process (any earlier test) sets this for every child: the
        # server under test would parse gRPC in pure Python depending on test order. A test that
        # wants it sets it in ``env`` (tests/server/test_grpc_api.py covers that implementation).
        env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
        env.pop("ONEDNN_MAX_CPU_ISA", None)  # set by MindSpore's CPU kernels likewise: no bf16 in OpenVINO
        env.update(self.env or {})
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     cwd=str(REPO_ROOT), env=env)
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout_s) or not self.http_port:
            self.kill()
            raise RuntimeError(f"server did not become ready in {timeout_s:.0f} s:\n{self.log_tail()}")
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if m := re.search(r"HTTP on https?://[^:]+:(\d+)", line):
                self.http_port = int(m.group(1))
            if m := re.search(r"gRPC on [^ ]+:(\d+)", line):
                self.grpc_port = int(m.group(1))
            if "ddrnet serve: ready" in line:
                self._ready.set()
        self._ready.set()  # the process ended: unblock start()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return "\n".join(self.lines) + "\n" + self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        """Kill the server and its worker processes (each worker runs in its own session)."""
        if self.proc is not None and self.proc.poll() is None:
            workers = worker_pids(self.proc.pid)
            self.proc.kill()
            self.proc.wait(30)
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None


def worker_pids(server_pid: int) -> list[int]:
    """PIDs of the server's worker processes (its children running ``inference.worker_main``)."""
    import psutil

    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            if "inference.worker_main" in " ".join(child.cmdline()):
                out.append(child.pid)
    return out


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes (a bounded loop)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def copy_repository(source: Path, target: Path) -> Path:
    """A private copy of a repository (files hard-linked: fast, and the version dirs stay immutable)."""
    shutil.copytree(source, target, copy_function=os.link)
    return target


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "build":
        _build(sys.argv[2])
    else:
        sys.exit("usage: server_fixtures.py build REPOSITORY")
