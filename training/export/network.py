"""The checkpoint as an eval-mode network, its logits, and the MindIR writer (the formats written from
the network in this process; ONNX is written in a child process by ``onnx_writer``).

A checkpoint that holds weights the network would silently drop (e.g. the authors' stem conv biases
loaded into a zoo-variant network) is refused, naming them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.export.spec import ExportError, ExportSpec


def build_network(spec: ExportSpec) -> Any:
    """``spec.arch`` built with ``spec.variant`` numerics, the checkpoint loaded strictly, eval mode, on
    the CPU in graph mode. ExportError naming the file for an unloadable or mismatched checkpoint."""
    import mindspore as ms

    import model as models
    from model.ms_device import use_device
    from model.onednn import configure_onednn

    configure_onednn()  # before the first CPU convolution (50x slower without it, BENCHMARKS.md)
    ms.set_context(mode=ms.GRAPH_MODE)
    use_device("CPU", 0)
    net = models.create_model(spec.arch, num_classes=spec.num_classes, variant=spec.variant)
    try:
        ignored = models.load_checkpoint(net, str(spec.checkpoint))
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError/OSError for bad files
        raise ExportError(f"cannot load checkpoint {spec.checkpoint} into {spec.arch}: {exc}") from None
    # Optimizer state (moments.*, global_step, ...) is ignored by the loader; an ignored entry under one
    # of the network's own modules is a weight this network would silently drop. Drop-path step
    # counters are training state (the eval network has no drop-path), not weights.
    from model.layers import is_drop_path_clock

    modules = {p.name.split(".")[0] for p in net.get_parameters()}
    stray = [n for n in ignored if n.split(".")[0] in modules and not is_drop_path_clock(n)]
    if stray:
        shown = ", ".join(stray[:6]) + (" ..." if len(stray) > 6 else "")
        from model.weights import AUTHORS_ONLY

        hint = ("the authors' variant (ddrnet convert writes it): drop --variant or give --variant authors"
                if any(n in AUTHORS_ONLY for n in stray) else "another variant or architecture?")
        raise ExportError(
            f"cannot load checkpoint {spec.checkpoint} into {spec.arch} ({spec.variant} variant): it holds "
            f"weights this network does not use: {shown} ({hint})"
        )
    net.set_train(False)
    return net


def logits(net: Any, batch: np.ndarray) -> np.ndarray:
    """The network's float32 logits for a float32 ``[N, 3, S, S]`` batch."""
    from mindspore import Tensor

    return np.asarray(net(Tensor(batch)).asnumpy(), dtype=np.float32)


def export_mindir(net: Any, staging: Path, image_size: int, batch: int | None) -> str:
    """Write ``model.mindir`` (``batch`` None: dynamic batch dimension) or ``model_b<batch>.mindir`` into
    ``staging``; returns the file name."""
    import mindspore as ms
    from mindspore import Tensor
    from mindspore import dtype as mstype

    stem = "model" if batch is None else f"model_b{batch}"
    if batch is None:
        sample = Tensor(shape=[None, 3, image_size, image_size], dtype=mstype.float32)
    else:
        sample = Tensor(np.zeros((batch, 3, image_size, image_size), np.float32))
    ms.export(net, sample, file_name=str(staging / stem), file_format="MINDIR")
    path = staging / f"{stem}.mindir"
    if not path.is_file():
        raise ExportError(f"mindspore.export wrote no {path.name}")
    return path.name
