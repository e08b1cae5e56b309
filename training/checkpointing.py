"""Crash-safe training checkpoints: atomic writes, keep the last K and the best, resume state.

A checkpoint is one MindSpore ``.ckpt`` file (CRC-checked) holding the network parameters under
their own names (so ``model.load_checkpoint`` and export read it directly), the optimizer state
(moments, ``global_step``), the loss-scale state (``loss_scale.scale_value``, ``loss_scale.counter``)
and a JSON ``train_state`` string: epoch, step, step in epoch, best top-1, world size, seed, arch,
class count and the LR settings the run used. The drop-path masks' step counters
(``model.layers.DropPath``) are network parameters and travel with the weights; a checkpoint written
before they existed resumes with them set to its step.

The learning-rate schedule is not in it: a run computes its schedule from its config and indexes it
with the restored ``global_step``, so a resumed run may extend ``epochs`` or change an LR setting
(``training.trainer`` logs the change). Checkpoints written before this rule hold the whole schedule
as the optimizer's ``learning_rate``; :func:`restore` ignores it, so they still resume.

Writes are atomic: the file is written under a hidden ``.partial-*`` name in the same folder,
fsynced, renamed into place and the folder fsynced, so a crash at any point leaves either the old
set of checkpoints or the new one, never a torn file under a checkpoint name. ``best.ckpt`` and
``latest.ckpt`` are hard links to a finished checkpoint, swapped in by the same rename.

Layout of ``<output_dir>/checkpoints``::

    e0003-s00000135.ckpt   periodic (epoch 3 done / step 135); the newest ``keep_last`` are kept
    latest.ckpt            the newest periodic checkpoint
    best.ckpt              the one with the highest val top-1 so far
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PERIODIC = re.compile(r"^e(\d{4,})-s(\d{8,})\.ckpt$")
STATE_KEY = "train_state"
BEST_NAME = "best.ckpt"
LATEST_NAME = "latest.ckpt"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the run; the message names the file."""


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0  # epochs fully completed
    step: int = 0  # optimizer steps taken in total
    step_in_epoch: int = 0  # steps taken in the current (unfinished) epoch; 0 at an epoch boundary
    best_top1: float = -1.0
    best_epoch: int = -1
    world_size: int = 1
    seed: int = 0
    steps_per_epoch: int = 0
    arch: str = ""  # "" in checkpoints written before these were recorded
    num_classes: int = 0
    lr_settings: dict[str, Any] = field(default_factory=dict)  # training.schedules.lr_settings

    @classmethod
    def from_json(cls, text: str) -> TrainState:
        """Parse a saved state; keys this version does not know (a newer writer) are ignored."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def periodic_name(epoch: int, step: int) -> str:
    return f"e{epoch:04d}-s{step:08d}.ckpt"


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _link_atomically(target: Path, link: Path) -> None:
    """Make ``link`` name the same file as ``target`` (hard link, copy where links fail), atomically."""
    tmp = link.with_name(f".partial-{os.getpid()}-{link.name}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(target, tmp)
    except OSError:
        import shutil

        shutil.copyfile(target, tmp)
        _fsync_file(tmp)
    os.replace(tmp, link)


def _state_entries(net, optimizer, loss_scaler) -> list[dict]:
    """Network parameters (own names), then optimizer and loss-scale state, de-duplicated; not the
    optimizer's learning rate (the schedule comes from the config, see the module docstring)."""
    entries: list[dict] = []
    seen: set[int] = set()
    if optimizer is not None:
        from training.optim import learning_rate_params

        seen.update(id(p) for p in learning_rate_params(optimizer))
    for param in net.get_parameters():
        entries.append({"name": param.name, "data": param})
        seen.add(id(param))
    if optimizer is not None:
        for param in optimizer.get_parameters():
            if id(param) not in seen:
                entries.append({"name": param.name, "data": param})
                seen.add(id(param))
    if loss_scaler is not None:
        entries.append({"name": "loss_scale.scale_value", "data": loss_scaler.scale_value})
        entries.append({"name": "loss_scale.counter", "data": loss_scaler.counter})
    return entries


def save_checkpoint(path: Path, net, optimizer, loss_scaler, state: TrainState) -> Path:
    """Write one checkpoint atomically at ``path``."""
    import mindspore as ms

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".partial-{os.getpid()}-{path.name}")  # ends in .ckpt: MindSpore keeps the name
    try:
        ms.save_checkpoint(_state_entries(net, optimizer, loss_scaler), str(tmp), crc_check=True,
                           append_dict={STATE_KEY: json.dumps(asdict(state))})
        os.chmod(tmp, 0o644)  # MindSpore writes 0400; export and serving may run as other users
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def read_checkpoint(path: Path) -> tuple[dict, TrainState | None]:
    """(name → Parameter dict, TrainState or None for a weights-only file). CheckpointError if unreadable."""
    import mindspore as ms

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        params = ms.load_checkpoint(str(path), crc_check=True)
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError for torn or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    raw = params.pop(STATE_KEY, None)
    state = None
    if raw is not None:
        try:
            state = TrainState.from_json(raw if isinstance(raw, str) else str(raw))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: bad {STATE_KEY}: {exc}") from None
    return params, state


def restore(path: Path, net, optimizer, loss_scaler, *, arch: str | None = None,
            num_classes: int | None = None) -> TrainState:
    """Load weights, optimizer and loss-scale state from ``path``; every expected entry must be there.

    A checkpoint of another ``arch`` or class count is refused naming both (checked from its saved
    state before anything is loaded; for older checkpoints, from the first parameter that differs)."""
    import mindspore as ms
    import numpy as np

    params, state = read_checkpoint(path)
    if state is None:
        raise CheckpointError(f"{path} holds no training state (weights only?); cannot resume from it")
    if arch is not None and state.arch and (state.arch, state.num_classes) != (arch, num_classes):
        raise CheckpointError(f"{path} was written by a {state.arch} run with {state.num_classes} classes; "
                              f"this run is {arch} with {num_classes} classes")
    entries = _state_entries(net, optimizer, loss_scaler)
    from model.layers import is_drop_path_clock

    clocks = [e for e in entries if is_drop_path_clock(e["name"]) and e["name"] not in params]
    for entry in clocks:  # an older checkpoint: every drop-path cell has ticked once per step
        params[entry["name"]] = ms.Tensor(np.array(state.step, dtype=np.int32))
    missing = [e["name"] for e in entries if e["name"] not in params]
    for entry in entries:
        name, target = entry["name"], entry["data"]
        value = params.get(name)
        if value is not None and tuple(value.shape) != tuple(target.shape):
            hint = _shape_hint(value.shape, target.shape, num_classes)
            raise CheckpointError(f"{path}: {name} has shape {tuple(value.shape)}, the run expects "
                                  f"{tuple(target.shape)} ({hint})")
    if missing:
        shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
        raise CheckpointError(f"{path} lacks {len(missing)} entries the run needs: {shown} "
                              "(was it written with another optimizer or loss-scale setting?)")
    for entry in entries:
        target = entry["data"]
        target.set_data(ms.Tensor(params[entry["name"]].asnumpy(), dtype=target.dtype))
    return state


def _shape_hint(saved: tuple, expected: tuple, num_classes: int | None) -> str:
    saved, expected = tuple(saved), tuple(expected)
    if (num_classes is not None and len(saved) == len(expected) and expected[:1] == (num_classes,)
            and saved[1:] == expected[1:]):
        return f"the checkpoint's classifier has {saved[0]} classes, this run {num_classes}"
    return "a checkpoint of another arch"


class CheckpointManager:
    """Periodic/best/latest checkpoints of one run directory (rank 0 writes; others only read)."""

    def __init__(self, folder: str | os.PathLike[str], keep_last: int) -> None:
        self.folder = Path(folder)
        self.keep_last = keep_last

    def clean_partials(self) -> None:
        """Remove ``.partial-*`` leftovers of a crashed write."""
        if self.folder.is_dir():
            for leftover in self.folder.glob(".partial-*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def periodic(self) -> list[Path]:
        """Periodic checkpoints, oldest first (by step, then epoch)."""
        if not self.folder.is_dir():
            return []
        found = []
        for entry in self.folder.iterdir():
            match = _PERIODIC.match(entry.name)
            if match:
                found.append((int(match.group(2)), int(match.group(1)), entry))
        return [p for _, _, p in sorted(found)]

    def save(self, net, optimizer, loss_scaler, state: TrainState, is_best: bool) -> Path:
        path = save_checkpoint(self.folder / periodic_name(state.epoch, state.step), net, optimizer,
                               loss_scaler, state)
        _link_atomically(path, self.folder / LATEST_NAME)
        if is_best:
            _link_atomically(path, self.folder / BEST_NAME)
        _fsync_dir(self.folder)
        for old in self.periodic()[: -self.keep_last]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        return path

    def mark_best(self, path: Path) -> None:
        _link_atomically(Path(path), self.folder / BEST_NAME)
        _fsync_dir(self.folder)

    def resume_candidates(self) -> list[Path]:
        """Checkpoints to resume from, newest first."""
        return list(reversed(self.periodic()))
