"""ONNX export of the DDRNet cells (``mindspore.onnx.export``, dynamic batch) and onnxruntime agreement.

The export runs in a child process: a second ONNX export of a BatchNorm network in one MindSpore
process has failed on this machine (ARCHITECTURE.md). The child writes the model plus MindSpore's
own logits for a few inputs; this process checks onnxruntime against them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import sys
    import mindspore as ms
    import numpy as np
    from model import create_model

    variant, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ms.set_context(mode=ms.GRAPH_MODE)
    net = create_model("ddrnet23_slim", variant=variant, num_classes=10)
    rng = np.random.default_rng(0)
    for p in net.get_parameters():  # BN statistics away from identity
        if p.name.endswith(("moving_variance", "gamma")):
            p.set_data(ms.Tensor((0.5 + rng.random(p.shape)).astype(np.float32)))
        elif p.name.endswith(("moving_mean", "beta")):
            p.set_data(ms.Tensor((0.1 * rng.standard_normal(p.shape)).astype(np.float32)))
    net.set_train(False)
    x = rng.standard_normal((3, 3, size, size)).astype(np.float32)
    ms.onnx.export(net, ms.Tensor(x[:1]), file_name=out + ".onnx", input_names=["image"],
                   output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    np.savez(out + ".npz", x=x, logits=net(ms.Tensor(x)).asnumpy())
    """
)


@pytest.mark.parametrize("variant", ["zoo", "authors"])
def test_onnx_export_runs_in_onnxruntime_with_a_dynamic_batch(tmp_path, variant):
    out = str(tmp_path / f"slim_{variant}")
    cmd = [sys.executable, "-c", CHILD, variant, "64", out]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = onnx.load(out + ".onnx")
    ops = {node.op_type for node in model.graph.node}
    assert not any("Resize" in op or "Upsample" in op for op in ops), ops
    assert "MatMul" in ops
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # dynamic_axes marks inputs only; make the output's batch symbolic too, as an exporter should.
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    data = np.load(out + ".npz")
    for batch in (1, 3):
        (logits,) = session.run(None, {"image": data["x"][:batch]})
        expected = data["logits"][:batch]
        assert logits.shape == expected.shape
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
