"""The export stage: a checkpoint becomes a verified, atomically published model repository version.

Modules, in the order an export runs them:

- ``source``: where the facts come from (a training run's ``run.json``, a config, the options) and
  which wins;
- ``spec``: :class:`ExportSpec`, checked before any work starts;
- ``network``: the checkpoint as an eval network, its logits, the MindIR writer;
- ``onnx_writer`` (ONNX, in a child process), ``int8`` (quantisation and its calibration);
  MindSpore Lite conversion runs in the Lite interpreter (``inference.lite_tool``);
- ``verify`` (the comparison rule, running a file through the runtime layer) and ``checks`` (every
  file of a version);
- ``pipeline``: :func:`export_model`, the steps in order, then ``model.repository``'s atomic publish.

Imports below the stage: ``model`` (network, manifest, repository) and ``inference`` (the runtimes that
verify each file are the ones that serve it); never the server.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ExportError": "training.export.spec",
    "ExportSpec": "training.export.spec",
    "FORMATS": "training.export.spec",
    "ExportResult": "training.export.pipeline",
    "export_model": "training.export.pipeline",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'training.export' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
