"""Test fixtures for the runtime and worker tests: a tiny exported model version and a runtime runner.

``python runtime_fixtures.py build OUT`` builds DDRNet-23-slim (``model.create_model``, 10 classes,
seeded weights, randomised BN statistics) at 64x64, exports it to a dynamic-batch MindIR, a batch-4
MindIR and a dynamic-batch ONNX (one ONNX export per process: a second one can fail), writes
``model.json`` and saves the network's own logits on a batch of real photos (scikit-learn and
scikit-image samples through ``model.preprocess``) as the reference.

``python runtime_fixtures.py run RUNTIME VERSION_DIR OUT.npz`` loads a runtime adapter in this
(fresh) process, runs the reference images at several batch sizes and saves the logits; it is
Python 3.7 compatible so the Lite adapter runs under the 3.7 venv, and a fresh process keeps
MindSpore's process-wide settings (device, thread pool) out of the test process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ARCH = "ddrnet23_slim"
IMAGE_SIZE = 64
NUM_CLASSES = 10
BATCH_SIZES = (1, 3, 8)
LITE_VENV_PYTHON = os.path.join(REPO, ".venv-lite37", "bin", "python")


def image_paths() -> list[str]:
    """Eight real photos shipped inside scikit-learn and scikit-image."""
    import skimage
    import sklearn

    sk = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images")
    ski = os.path.join(os.path.dirname(skimage.__file__), "data")
    photos = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg"]
    paths = [os.path.join(sk, "china.jpg"), os.path.join(sk, "flower.jpg")]
    return paths + [os.path.join(ski, n) for n in photos]


DEFAULT_FILES = {"mindir": "model.mindir", "onnx": "model.onnx", "fixed_batch": {}}


def write_version_manifest(out: str, files: dict | None = None) -> None:
    """A valid ``model.json`` in ``out`` listing ``files`` (default: the dynamic MindIR and ONNX),
    with their checksums computed from the files there."""
    from model.manifest import ModelManifest, TensorSpec, write_manifest
    from model.preprocess_config import PreprocessConfig
    from model.repository import checksum_entry

    files = dict(files or DEFAULT_FILES)
    files.setdefault("fixed_batch", {})
    listed = [v for k, v in files.items() if k != "fixed_batch" and v] + list(files["fixed_batch"].values())
    manifest = ModelManifest(
        name="tiny", version=1, arch=ARCH, num_classes=NUM_CLASSES,
        labels=[f"class{i}" for i in range(NUM_CLASSES)], weight_variant="zoo",
        preprocess=PreprocessConfig(image_size=IMAGE_SIZE),
        input=TensorSpec("input", "float32", [-1, 3, IMAGE_SIZE, IMAGE_SIZE]),
        output=TensorSpec("logits", "float32", [-1, NUM_CLASSES]),
        files=files, checksums={name: checksum_entry(os.path.join(out, name)) for name in listed},
        source_checkpoint_sha256="0" * 64, created_at="2026-01-01T00:00:00Z",
    )
    write_manifest(out, manifest)


def _build(out: str) -> None:
    from model.onednn import configure_onednn

    configure_onednn()  # before the first convolution (MindSpore 2.10 CPU, BENCHMARKS.md)
    import mindspore as ms

    from model import create_model
    from model.preprocess import EvalTransform, PreprocessConfig
    from training.export.onnx_writer import make_batch_symbolic

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(1)
    net = create_model(ARCH, num_classes=NUM_CLASSES)
    # Non-trivial BN statistics so the exported graphs must carry them correctly.
    rng = np.random.default_rng(0)
    for name, param in net.parameters_and_names():
        if name.endswith("moving_mean"):
            param.set_data(ms.Tensor(rng.normal(0, 0.1, param.shape).astype(np.float32)))
        elif name.endswith("moving_variance"):
            param.set_data(ms.Tensor(rng.uniform(0.5, 1.5, param.shape).astype(np.float32)))
    net.set_train(False)

    transform = EvalTransform(PreprocessConfig(image_size=IMAGE_SIZE))
    images = []
    for path in image_paths():
        with open(path, "rb") as f:
            images.append(f.read())
    batch = transform.batch(images)
    logits = net(ms.Tensor(batch)).asnumpy()

    os.makedirs(out, exist_ok=True)
    dynamic = ms.Tensor(shape=[None, 3, IMAGE_SIZE, IMAGE_SIZE], dtype=ms.float32)
    ms.export(net, dynamic, file_name=os.path.join(out, "model"), file_format="MINDIR")
    fixed = ms.Tensor(np.zeros((4, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32))  # a fixed-batch file too
    ms.export(net, fixed, file_name=os.path.join(out, "model_b4"), file_format="MINDIR")
    onnx_path = os.path.join(out, "model.onnx")
    sample = ms.Tensor(np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32))
    ms.onnx.export(net, sample, file_name=onnx_path, input_names=["input"], output_names=["logits"],
                   dynamic_axes={"input": {0: "batch"}})
    make_batch_symbolic(onnx_path)
    write_version_manifest(out)
    np.save(os.path.join(out, "images.npy"), batch)
    np.save(os.path.join(out, "reference.npy"), logits)


def build_version(out: str) -> str:
    """Build the fixture version into ``out`` in a fresh process (see the module docstring)."""
    env = dict(os.environ, PYTHONPATH=REPO, GLOG_v="3")
    proc = subprocess.run([sys.executable, "-m", "tests.support.runtime_fixtures", "build", out], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    if proc.returncode != 0:
        log = proc.stdout.decode(errors="replace")[-4000:]
        raise RuntimeError("building the fixture model failed:\n" + log)
    return out


def lite_python() -> tuple[str | None, str]:
    """(interpreter, "") when the Python 3.7 + mindspore-lite venv works, else (None, why not)."""
    if not os.path.exists(LITE_VENV_PYTHON):
        return None, f"no Python 3.7 MindSpore Lite venv at {LITE_VENV_PYTHON} (scripts/setup_lite_py37.sh)"
    proc = subprocess.run([LITE_VENV_PYTHON, "-c", "import mindspore_lite, numpy"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    if proc.returncode != 0:
        return None, f"{LITE_VENV_PYTHON} cannot import mindspore_lite: {proc.stdout.decode()[-300:]}"
    return LITE_VENV_PYTHON, ""


def run_runtime(python: str, runtime: str, version_dir: str, out: str, options: dict | None = None,
                sizes: tuple[int, ...] = BATCH_SIZES, device: str = "cpu") -> dict:
    """Run ``runtime`` under ``python`` in a fresh process; returns its describe() plus logits per size
    (``logits[n]``: the first n reference images run as one batch of n)."""
    env = dict(os.environ, PYTHONPATH=REPO, GLOG_v="3")
    cmd = [python, "-m", "tests.support.runtime_fixtures", "run", runtime, version_dir, out,
           "--options", json.dumps(options or {}), "--sizes", ",".join(str(s) for s in sizes),
           "--device", device]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    text = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{text[-4000:]}")
    with np.load(out) as data:
        logits = {int(k[1:]): data[k] for k in data.files}
    return {"describe": json.loads(text.strip().splitlines()[-1]), "logits": logits}


def _run(args: argparse.Namespace) -> None:
    from inference.runtimes import create_runtime, select_runtime
    from model.manifest import load_manifest

    man = load_manifest(args.version_dir)
    images = np.load(os.path.join(args.version_dir, "images.npy"))
    name = select_runtime(args.runtime, args.version_dir, man)
    runtime = create_runtime(name)
    start = time.perf_counter()
    runtime.load(args.version_dir, man, args.device, 0, json.loads(args.options))
    info = runtime.describe()
    info["load_s"] = time.perf_counter() - start
    out = {}
    for n in (int(s) for s in args.sizes.split(",")):
        out[f"n{n}"] = runtime.infer(np.ascontiguousarray(images[:n]))
    np.savez(args.out, **out)
    print(json.dumps(info))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    b = sub.add_parser("build")
    b.add_argument("out")
    r = sub.add_parser("run")
    r.add_argument("runtime")
    r.add_argument("version_dir")
    r.add_argument("out")
    r.add_argument("--options", default="{}")
    r.add_argument("--sizes", default="1,3,8")
    r.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.command == "build":
        _build(args.out)
    else:
        _run(args)


if __name__ == "__main__":
    main()
