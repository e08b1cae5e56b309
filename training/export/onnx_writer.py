"""ONNX export of a checkpoint, in a fresh process, with a dynamic batch on input AND output.

Two facts measured here (``../shared/ARCHITECTURE.md``) shape this module:

- a second ``mindspore.onnx.export`` of a network with BatchNorm in one process once failed
  ("i: 6 out of range … BatchNorm"), so :func:`export_onnx` runs the export in a child process
  (``python -m training.export.onnx_writer``) that builds the network, loads the checkpoint, exports and
  exits;
- ``dynamic_axes`` marks inputs only, so the exported graph declares its output with a fixed batch of
  1 and onnxruntime warns on every other batch size; :func:`make_batch_symbolic` rewrites the graph
  outputs' first dimension to the same symbolic name as the input's (``batch``), with the ``onnx``
  package, and runs ``onnx.checker`` on the result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BATCH_DIM = "batch"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class OnnxExportError(RuntimeError):
    """The child process failed to export; the message carries the tail of its output."""


def make_batch_symbolic(path: str | os.PathLike[str], dim_name: str = BATCH_DIM) -> dict[str, list]:
    """Set the first dimension of every graph input and output of the ONNX file at ``path`` to the
    symbolic ``dim_name`` (in place), drop stale intermediate shape annotations, check the model, and
    return ``{"inputs": [[name, shape]...], "outputs": [...]}`` with shapes as ``-1``/int lists."""
    import onnx

    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = dim_name
    # value_info entries recorded at batch 1 would contradict the symbolic batch.
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(path))

    def describe(values) -> list:
        out = []
        for v in values:
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
            out.append([v.name, shape])
        return out

    return {
        "inputs": describe(model.graph.input),
        "outputs": describe(model.graph.output),
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
    }


def export_onnx(
    checkpoint: str | os.PathLike[str],
    arch: str,
    num_classes: int,
    variant: str,
    image_size: int,
    output: str | os.PathLike[str],
    input_name: str,
    output_name: str,
    timeout_s: float = 600.0,
) -> dict:
    """Export ``checkpoint`` to ``output`` in a child process; returns the graph description of
    :func:`make_batch_symbolic` plus ``seconds``. Raises :class:`OnnxExportError`."""
    cmd = [
        sys.executable,
        "-m",
        "training.export.onnx_writer",
        "--checkpoint", str(checkpoint),
        "--arch", arch,
        "--num-classes", str(num_classes),
        "--variant", variant,
        "--image-size", str(image_size),
        "--output", str(output),
        "--input-name", input_name,
        "--output-name", output_name,
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise OnnxExportError(f"ONNX export did not finish within {timeout_s:.0f} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise OnnxExportError(f"ONNX export failed (exit {proc.returncode}):\n{tail}")
    info = json.loads(lines[-1])
    info["seconds"] = round(time.monotonic() - start, 3)
    return info


def _child(args: argparse.Namespace) -> int:
    import mindspore as ms
    import numpy as np

    import model as models
    from model.ms_device import use_device

    ms.set_context(mode=ms.GRAPH_MODE)
    use_device("CPU", 0)
    net = models.create_model(args.arch, num_classes=args.num_classes, variant=args.variant)
    models.load_checkpoint(net, args.checkpoint)
    net.set_train(False)
    sample = ms.Tensor(np.zeros((1, 3, args.image_size, args.image_size), np.float32))
    ms.onnx.export(
        net,
        sample,
        file_name=args.output,
        input_names=[args.input_name],
        output_names=[args.output_name],
        dynamic_axes={args.input_name: {0: BATCH_DIM}},
    )
    if not os.path.isfile(args.output) or os.path.getsize(args.output) == 0:
        # mindspore.onnx.export logs write errors instead of raising them
        print(f"mindspore.onnx.export wrote no file at {args.output}", file=sys.stderr)
        return 1
    info = make_batch_symbolic(args.output)
    info["mindspore"] = ms.__version__
    print(json.dumps(info))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.export.onnx_writer", description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--variant", default="zoo")
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--input-name", default="input")
    parser.add_argument("--output-name", default="logits")
    return _child(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
