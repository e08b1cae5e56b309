"""Convert the DDRNet authors' PyTorch ImageNet checkpoints (``DDRNet23s_imagenet.pth``,
``DDRNet23_imagenet.pth``, ``DDRNet39_imagenet.pth``) into MindSpore checkpoints of the
``variant="authors"`` network.

The ``.pth`` is read with ``torch.load(weights_only=True)`` (no arbitrary unpickling); torch is the
optional ``ddrnet-serve[torch]`` extra. The state dict may be wrapped under ``"state_dict"`` (or
``"model"``) and may carry DataParallel's ``module.`` prefixes. Names map as

    <bn>.weight → gamma, <bn>.bias → beta, running_mean → moving_mean, running_var → moving_variance,
    num_batches_tracked → dropped, fc.* → linear.*, conv/linear weight and bias unchanged,

and every network parameter must come out of the file with its exact shape; anything left over is
an error too (it means the file is another architecture).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.archs import ARCHS

TORCH_HINT = "pip install 'ddrnet-serve[torch]' (or: pip install torch==2.13.0)"
_MAX_NAMED = 8
_BN_RENAMES = {"running_mean": "moving_mean", "running_var": "moving_variance"}


class ConvertError(ValueError):
    """The source cannot be converted; the message names the file, key or parameter at fault."""


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion wrote."""

    output: Path
    arch: str
    num_classes: int
    num_tensors: int


def read_torch_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch checkpoint as float32/int numpy arrays, with the ``state_dict``
    wrapper and ``module.`` prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"source checkpoint not found: {path}")
    try:
        import torch
    except ImportError as exc:
        raise ConvertError(f"reading a PyTorch .pth needs torch (not installed); {TORCH_HINT}") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (not a zip/pickle), EOFError, ...
        raise ConvertError(f"cannot read {path} as a PyTorch state dict: {_torch_load_reason(exc)}") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise ConvertError(f"{path} holds no state dict (found {type(obj).__name__})")
    state: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            kind = type(value).__name__
            raise ConvertError(f"{path}: entry {key!r} is not a tensor ({kind}); not a state dict")
        name = key[len("module.") :] if key.startswith("module.") else key
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        state[name] = tensor.numpy().copy()
    return state


def target_shapes(arch: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Parameter name → shape of the ``variant="authors"`` MindSpore network."""
    from model.registry import create_model

    net = create_model(arch, num_classes=num_classes, variant="authors")
    return {p.name: tuple(p.shape) for p in net.get_parameters()}


def map_authors_state_dict(
    state: dict[str, np.ndarray], targets: dict[str, tuple[int, ...]], source: str = "state dict"
) -> dict[str, np.ndarray]:
    """Rename the authors' PyTorch entries to MindSpore names and check them against ``targets``."""
    out: dict[str, np.ndarray] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key.endswith(".num_batches_tracked"):
            continue
        name = _ms_name(key, targets)
        if name is None:
            unknown.append(key)
        elif name in out:
            raise ConvertError(f"{source}: {key!r} maps onto {name!r} twice")
        else:
            out[name] = value
    missing = [n for n in targets if n not in out]
    misshaped = [
        f"{n} (expected {targets[n]}, found {tuple(out[n].shape)})"
        for n in targets
        if n in out and tuple(out[n].shape) != targets[n]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} parameter(s) missing: {_list(missing)}")
    if misshaped:
        problems.append(f"{len(misshaped)} with the wrong shape: {_list(misshaped)}")
    if unknown:
        problems.append(f"{len(unknown)} entr(ies) the network does not have: {_list(unknown)}")
    if problems:
        raise ConvertError(f"{source}: " + "; ".join(problems))
    return {n: out[n].astype(np.float32) for n in targets}


def guess_arch(state: dict[str, np.ndarray]) -> str | None:
    """The architecture whose layout matches ``state`` (by the stem width and layer3 naming), if any."""
    stem = state.get("conv1.0.weight")
    if stem is None or stem.ndim != 4:
        return None
    split = any(k.startswith("layer3_1.") for k in state)
    for name, spec in ARCHS.items():
        if spec.planes == stem.shape[0] and spec.split_layer3 == split:
            return name
    return None


def convert_authors_checkpoint(
    src: str | os.PathLike[str], arch: str, output: str | os.PathLike[str]
) -> ConvertResult:
    """Read ``src`` (.pth), map and check every tensor, write a MindSpore checkpoint to ``output``."""
    import mindspore as ms

    if arch not in ARCHS:
        raise ConvertError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}")
    state = read_torch_state_dict(src)
    fc = state.get("linear.weight", state.get("fc.weight"))
    if fc is None or fc.ndim != 2:
        raise ConvertError(f"{src}: no classifier weight (linear.weight or fc.weight) in the state dict")
    num_classes = int(fc.shape[0])
    try:
        mapped = map_authors_state_dict(state, target_shapes(arch, num_classes), source=str(src))
    except ConvertError as exc:
        guess = guess_arch(state)
        hint = f" (the file looks like {guess!r})" if guess and guess != arch else ""
        raise ConvertError(f"{exc}; is --arch {arch} right?{hint}") from None
    output = Path(output)
    if output.suffix != ".ckpt":
        raise ConvertError(f"output must end in .ckpt, got {output}")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.stem + ".partial.ckpt")
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(v)} for n, v in mapped.items()], str(partial))
    os.replace(partial, output)
    return ConvertResult(output=output, arch=arch, num_classes=num_classes, num_tensors=len(mapped))


def _ms_name(key: str, targets: dict[str, tuple[int, ...]]) -> str | None:
    """MindSpore name of one authors' key, or None when the network has no such parameter."""
    if key.startswith("fc."):
        key = "linear." + key[len("fc.") :]
    module, _, leaf = key.rpartition(".")
    candidates: list[str] = []
    if leaf in _BN_RENAMES:
        candidates = [f"{module}.{_BN_RENAMES[leaf]}"]
    elif leaf == "weight":
        candidates = [key, f"{module}.gamma"]
    elif leaf == "bias":
        candidates = [key, f"{module}.beta"]
    for name in candidates:
        if name in targets:
            return name
    return None


def _torch_load_reason(exc: Exception) -> str:
    """One line from torch.load's (often multi-paragraph) error."""
    text = str(exc).strip()
    # torch < 2.13: "Unsupported global: GLOBAL x.y"; torch 2.13: "unsupported GLOBAL x.y whose module ..."
    match = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", text, flags=re.IGNORECASE)
    if match:
        return f"it holds a {match.group(1)} object, which is not unpickled (torch.load weights_only=True)"
    return text.splitlines()[0] if text else type(exc).__name__


def _list(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMED])
    return shown + (f", ... ({len(names) - _MAX_NAMED} more)" if len(names) > _MAX_NAMED else "")
