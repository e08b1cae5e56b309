"""Model registry: create a DDRNet classifier by name (timm's convention).

Entry functions are thin, decorated with :func:`register_model` in ``model.ddrnet``. That module is
imported explicitly the first time the registry is queried (not as a side effect of importing
``model``), so importing this module needs no MindSpore.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from model.archs import VARIANTS

if TYPE_CHECKING:
    from model.ddrnet import DDRNet

_ENTRY_MODULES = ("model.ddrnet",)
_REGISTRY: dict[str, Callable[..., Any]] = {}


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: register an entry function under its own name."""
    name = fn.__name__
    if name in _REGISTRY and _REGISTRY[name] is not fn:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = fn
    return fn


def _registry() -> dict[str, Callable[..., Any]]:
    for module in _ENTRY_MODULES:
        importlib.import_module(module)
    return _REGISTRY


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_registry())


def create_model(
    name: str,
    num_classes: int = 1000,
    drop_path_rate: float = 0.0,
    variant: str = "zoo",
    checkpoint_path: str | None = None,
    drop_path_mode: str = "zoo",
    drop_path_seed: int = 0,
) -> DDRNet:
    """Build a DDRNet classifier by name.

    Args:
        name: one of :func:`list_models` (``ddrnet23``, ``ddrnet23_slim``, ``ddrnet39``).
        num_classes: size of the classifier head.
        drop_path_rate: stochastic-depth rate of the deepest block (linear from 0), training only.
        drop_path_mode: ``"zoo"`` (drop the shortcut, the model zoo's schedule) or ``"branch"`` (drop
            the residual branch); see ``model.ddrnet``.
        drop_path_seed: seeds the drop-path masks (``model.layers.DropPath``; a training run uses its
            seed and rank).
        variant: ``"zoo"`` (MindSpore model zoo numerics) or ``"authors"`` (authors' PyTorch numerics,
            the variant ``ddrnet convert`` produces). The result carries it as ``net.variant``.
        checkpoint_path: optional MindSpore checkpoint loaded strictly with
            :func:`model.weights.load_checkpoint` (extra optimizer entries are ignored).

    Raises:
        ValueError: unknown name or variant, bad ``num_classes`` / ``drop_path_rate``.
        model.weights.WeightLoadError: the checkpoint lacks or mis-shapes a network parameter.
    """
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(registry))}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown weight variant {variant!r}; known variants: {', '.join(VARIANTS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not 0.0 <= float(drop_path_rate) < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
    net = registry[name](num_classes=num_classes, drop_path_rate=float(drop_path_rate), variant=variant,
                         drop_path_mode=drop_path_mode, drop_path_seed=drop_path_seed)
    if checkpoint_path is not None:
        from model.weights import load_checkpoint

        load_checkpoint(net, checkpoint_path)
    return net
