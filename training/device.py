"""The device side of a run: CPU kernel settings, MindSpore context, and mixed precision.

:func:`prepare_cpu_env` caps oneDNN at AVX2 (``model.onednn``: on this project's AVX-512 machines
MindSpore's oneDNN otherwise runs its convolutions through a reference kernel, 20–100x slower); it
runs before the first convolution of a training or eval process.

:func:`choose_device` decides the device id of this process, and :func:`setup_context` selects it (an
error naming the key when this MindSpore build or machine lacks the target): under ``msrun`` no id is
passed, so MindSpore negotiates a distinct device per worker; under ``mpirun`` the id is the process's
local rank (MindSpore itself would put every such worker on device 0); a single process uses
``device_id`` from the config, else MindSpore's default (0). A ``device_id`` set for a multi-process job
on GPU/Ascend is an error: it would put every worker on one card.

:func:`apply_amp` implements ``amp_level`` O0–O3 with ``keep_bn_fp32``: O1 casts the white-list cells
(conv, dense) to float16 (done here at cell granularity, with float32 outputs: MindSpore's own O1
rewrites the network's source into ``./rewritten_network``), O2 everything but the black list
(BatchNorm, LayerNorm), O3 everything; ``keep_bn_fp32`` keeps BatchNorm in float32 at every level and
``false`` lets it run in float16 too. MindSpore 2.10's CPU kernels run float16 conv, dense and BatchNorm
(tests/training/test_train_amp.py), so every level can be honoured on CPU, though slower than float32
there."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


def prepare_cpu_env() -> None:
    """Cap oneDNN's instruction set unless the environment sets ``ONEDNN_MAX_CPU_ISA``."""
    from model.onednn import configure_onednn

    configure_onednn()


class DeviceError(ValueError):
    """The chosen device or precision cannot be used here; the message names the config key."""


@dataclass(frozen=True)
class DeviceChoice:
    """The device of this process: ``device_id`` None leaves it to MindSpore; ``how`` says why."""

    target: str
    device_id: int | None
    how: str


def choose_device(target: str, device_id: int | None, environ: Mapping[str, str] | None = None
                  ) -> DeviceChoice:
    """This process's device under its launcher (see the module docstring)."""
    from training.distributed import launcher, mpi_local_rank

    kind = launcher(environ)
    if device_id is not None:
        if kind is not None and target != "CPU":
            raise DeviceError(
                f"device_id: {device_id} would put every worker of this {kind} job on {target} device "
                f"{device_id}; leave it null and each worker gets its own device"
            )
        return DeviceChoice(target, device_id, "device_id from the config")
    if kind == "msrun":
        return DeviceChoice(target, None, "negotiated by msrun")
    if kind == "mpirun":
        local = mpi_local_rank(environ)
        if local is None:
            raise DeviceError("mpirun started this process but no MPI local rank is set "
                              "(OMPI_COMM_WORLD_LOCAL_RANK / MPI_LOCALRANKID): set device_id per process")
        return DeviceChoice(target, local, "mpirun local rank")
    return DeviceChoice(target, None, "single process (MindSpore's default device)")


def setup_context(device_target: str, device_id: int | None = None) -> DeviceChoice:
    """PyNative mode (train/eval steps are compiled with ``mindspore.jit``) on this process's device."""
    prepare_cpu_env()
    import mindspore as ms

    from model.ms_device import use_device

    choice = choose_device(device_target, device_id)
    if device_target != "CPU":
        try:
            available = ms.hal.is_available(device_target)
        except Exception:  # a CPU-only build raises instead of answering
            available = False
        if not available:
            raise DeviceError(
                f"device_target: {device_target} is not available with this MindSpore build on this "
                f"machine (try --set device_target=CPU)"
            )
    ms.set_context(mode=ms.PYNATIVE_MODE)
    use_device(device_target, choice.device_id)
    return choice


def apply_amp(net, amp_level: str, keep_bn_fp32: bool):
    """Return ``net`` prepared for ``amp_level``; parameters stay float32 (and keep their names)."""
    import mindspore as ms
    from mindspore import amp, nn

    bn_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if amp_level == "O0":
        return net
    if amp_level == "O1":
        white = tuple(c for c in amp.get_white_list() if isinstance(c, type) and issubclass(c, nn.Cell))
        return _cells_to_float16(net, white + (() if keep_bn_fp32 else bn_types))
    if amp_level == "O2":
        black = [c for c in amp.get_black_list() if keep_bn_fp32 or c not in bn_types]
        return amp.custom_mixed_precision(net, black_list=black)
    if amp_level == "O3":
        net.to_float(ms.float16)
        if keep_bn_fp32:
            for _, cell in net.cells_and_names():
                if isinstance(cell, bn_types):
                    cell.to_float(ms.float32)
        return net
    raise DeviceError(f"amp_level: unknown level {amp_level!r}")


def _cells_to_float16(net, types: tuple):
    """O1: every sub-cell of ``types`` computes in float16 and hands float32 on (in place)."""
    import mindspore as ms
    from mindspore import nn

    class _Float32Output(nn.Cell):
        def __init__(self, cell):
            super().__init__(auto_prefix=False)  # parameters keep their names
            self.cell = cell

        def construct(self, *args):
            return self.cell(*args).astype(ms.float32)

    for _, parent in list(net.cells_and_names()):
        for name, child in list(parent.name_cells().items()):
            if isinstance(child, types) and not isinstance(child, _Float32Output):
                parent._cells[name] = _Float32Output(child.to_float(ms.float16))
    return net
