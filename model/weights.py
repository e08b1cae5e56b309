"""Load MindSpore checkpoints into a DDRNet, checking every network parameter by name and shape.

A checkpoint written during training holds more than the network: optimizer moments
(``moments.*``, ``accum.*``), ``global_step``, ``learning_rate``, the loss scale
(``scale_sense``, ``current_iterator_step``, ...). Those extra entries are ignored. A network
parameter that is missing from the file or has another shape is an error naming it.

Checkpoints are read with ``mindspore.load_checkpoint`` (protobuf or safetensors; nothing is
unpickled).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import nn

from model.layers import is_drop_path_clock

log = logging.getLogger(__name__)

_MAX_NAMED = 8  # how many offending names an error message lists


class WeightLoadError(ValueError):
    """A checkpoint cannot be loaded into the network; the message names the file and parameters."""


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All tensor entries of a MindSpore checkpoint (``.ckpt`` or ``.safetensors``) as numpy arrays.

    Raises:
        WeightLoadError: the file is missing or is not a readable checkpoint.
    """
    raw = _load_raw(path)
    entries: dict[str, np.ndarray] = {}
    for name, value in raw.items():
        if isinstance(value, str):  # append_info strings saved beside the tensors
            continue
        entries[name] = value.asnumpy()
    return entries


#: parameters only the ``authors`` variant has (the stem convolutions' biases of the authors' code)
AUTHORS_ONLY = ("conv1.0.bias", "conv1.3.bias")


@dataclass(frozen=True)
class CheckpointFacts:
    """What a checkpoint says about the network it fits: its weight variant, and its architecture and
    class count where the tensors tell them apart (None where they do not)."""

    variant: str
    arch: str | None
    num_classes: int | None
    evidence: str  # the tensors' shapes the answer comes from, for messages

    def describe(self) -> str:
        what = self.arch or "an unrecognised DDRNet"
        classes = f", {self.num_classes} classes" if self.num_classes else ""
        return f"{what} ({self.variant} variant{classes}; {self.evidence})"


def checkpoint_facts(path: str | os.PathLike[str]) -> CheckpointFacts:
    """Read only the tensors that tell variant, architecture and class count apart: the stem
    convolution (width p), layer1's blocks, the classifier (classes x last_planes) and the authors'
    stem biases. WeightLoadError as :func:`read_checkpoint`."""
    from model.archs import ARCHS

    def wanted(name: str) -> bool:
        return (name in ("conv1.0.weight", "linear.weight") or name in AUTHORS_ONLY
                or (name.startswith("layer1.") and name.endswith(".conv1.weight")))

    found = _load_raw(path, choice_func=wanted)
    if not found:
        raise WeightLoadError(f"{path} holds no DDRNet classifier weights (no conv1.0.weight, "
                              "linear.weight)")
    variant = "authors" if any(name in found for name in AUTHORS_ONLY) else "zoo"
    stem = found.get("conv1.0.weight")
    linear = found.get("linear.weight")
    planes = int(stem.shape[0]) if stem is not None else None
    blocks = len({name.split(".")[1] for name in found if name.startswith("layer1.")}) or None
    num_classes, features = (None, None) if linear is None else (int(linear.shape[0]), int(linear.shape[1]))
    matches = [name for name, spec in ARCHS.items()
               if planes == spec.planes and blocks == spec.layers[0] and features == spec.last_planes]
    evidence = f"stem width {planes}, {blocks} blocks in layer1, {features} features into the classifier"
    return CheckpointFacts(variant, matches[0] if len(matches) == 1 else None, num_classes, evidence)


def checkpoint_variant(path: str | os.PathLike[str]) -> str:
    """The weight variant a checkpoint holds: ``authors`` when it has the authors' stem biases (what
    ``ddrnet convert`` writes), else ``zoo``. WeightLoadError as :func:`read_checkpoint`."""
    return checkpoint_facts(path).variant


def _load_raw(path: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
    """``mindspore.load_checkpoint`` of a ``.ckpt`` or ``.safetensors`` file (``options``: its keyword
    arguments); WeightLoadError for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise WeightLoadError(f"checkpoint not found: {path}")
    fmt = "safetensors" if path.suffix == ".safetensors" else "ckpt"
    try:
        return ms.load_checkpoint(str(path), format=fmt, **options)
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError/TypeError for bad files
        raise WeightLoadError(f"cannot read checkpoint {path}: {exc}".splitlines()[0]) from exc


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p if p.endswith(".") else p + ".") for p in prefixes)


def load_state_into_net(
    net: nn.Cell,
    state: dict[str, np.ndarray],
    *,
    strict: bool = True,
    exclude: Iterable[str] = (),
    source: str = "checkpoint",
) -> list[str]:
    """Copy ``state`` (name → array) into ``net``'s parameters after checking all of them.

    Args:
        strict: a network parameter absent from ``state`` is an error; with ``strict=False`` it keeps
            its initial value (logged). A shape mismatch is always an error.
        exclude: parameter names or name prefixes (``"linear"``) left at their initial values, e.g. a
            classifier head being replaced for fine-tuning.
        source: how error messages refer to ``state``.

    Returns:
        The names of the entries of ``state`` that are not network parameters (ignored).

    Raises:
        WeightLoadError: naming the missing or mis-shaped parameters.
    """
    excluded = tuple(exclude)
    params = {p.name: p for p in net.get_parameters()}
    # drop-path step counters are training state, not weights (model.layers.DropPath): never required
    missing = [n for n in params if n not in state and not _matches(n, excluded)
               and not is_drop_path_clock(n)]
    misshaped = [
        f"{n} (network {tuple(p.shape)}, {source} {tuple(state[n].shape)})"
        for n, p in params.items()
        if n in state and not _matches(n, excluded) and tuple(state[n].shape) != tuple(p.shape)
    ]
    if misshaped:
        raise WeightLoadError(f"{source}: {len(misshaped)} parameter(s) of wrong shape: {_list(misshaped)}")
    if missing and strict:
        raise WeightLoadError(f"{source}: {len(missing)} network parameter(s) missing: " + _list(missing))
    if missing:
        log.info("%s: %d parameter(s) left at their initial values: %s", source, len(missing), _list(missing))
    # Names and shapes are checked above; set_data (rather than load_param_into_net) keeps excluded
    # parameters out of MindSpore's "not loaded" warnings and casts to the parameter's dtype.
    for n, p in params.items():
        if n in state and not _matches(n, excluded):
            p.set_data(ms.Tensor(state[n], dtype=p.dtype))
    extra = sorted(n for n in state if n not in params)
    if extra:
        log.debug("%s: ignored %d non-network entries (e.g. %s)", source, len(extra), _list(extra))
    return extra


def load_checkpoint(
    net: nn.Cell,
    path: str | os.PathLike[str],
    strict: bool = True,
    exclude: Iterable[str] = (),
) -> list[str]:
    """Load a MindSpore checkpoint into ``net``; returns the ignored non-network entry names.

    Raises:
        WeightLoadError: unreadable file, or a network parameter missing (when ``strict``) or
            mis-shaped, named in the message.
    """
    state = read_checkpoint(path)
    return load_state_into_net(net, state, strict=strict, exclude=exclude, source=str(path))


def load_zoo_checkpoint(net: nn.Cell, path: str | os.PathLike[str]) -> list[str]:
    """Load a MindSpore model-zoo DDRNet-23 checkpoint (as published: names of
    ``reference/ddrnet23_zoo_parameters.json`` plus optimizer state) into a ``variant="zoo"`` network.

    Raises:
        WeightLoadError: ``net`` is not a zoo-variant network, or as :func:`load_checkpoint`.
    """
    variant = getattr(net, "variant", None)
    if variant is not None and variant != "zoo":
        raise WeightLoadError(
            f"a model-zoo checkpoint needs a network built with variant='zoo' (this one is {variant!r}): "
            "the zoo network has no stem conv bias and uses legacy bilinear upsampling"
        )
    return load_checkpoint(net, path, strict=True)


def _list(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMED])
    return shown + (f", ... ({len(names) - _MAX_NAMED} more)" if len(names) > _MAX_NAMED else "")
