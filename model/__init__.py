"""DDRNet ImageNet classifiers (MindSpore) and the one eval preprocessing.

Importing ``model`` is cheap and pulls in no MindSpore: the network names below are resolved lazily,
so the server process can use ``model.preprocess``, ``model.manifest`` and ``model.repository`` without
loading MindSpore (``model.manifest`` and ``model.repository`` also stay importable by the Python 3.7
Lite worker).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "create_model": "model.registry",
    "list_models": "model.registry",
    "load_zoo_checkpoint": "model.weights",
    "load_checkpoint": "model.weights",
    "WeightLoadError": "model.weights",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
