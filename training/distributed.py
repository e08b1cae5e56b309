"""Data-parallel setup under a launcher (MindSpore's ``msrun``, or ``mpirun``): detect it, join the
cluster, average, and say which device every rank runs on.

``msrun`` starts every worker (and one scheduler process) with ``MS_ROLE``, ``MS_WORKER_NUM``,
``MS_SCHED_HOST``/``MS_SCHED_PORT`` in the environment; ``mpirun`` (OpenMPI, MPICH / Intel MPI) with
``OMPI_COMM_WORLD_SIZE`` / ``PMI_SIZE`` and a local rank. The same ``ddrnet train`` entrypoint sees
them and calls ``mindspore.communication.init()``. In msrun's scheduler process ``init()`` serves the
cluster and the process exits when the workers are done; it never reaches the training code. Workers
get their rank and the world size from the communication layer, set ``ParallelMode.DATA_PARALLEL``
with ``gradients_mean=True``, and average gradients with ``nn.DistributedGradReducer`` inside the
train step. Which device each process uses is chosen before (``training.device.choose_device``);
:func:`init_distributed` gathers every rank's device so rank 0 can record them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

#: Environment variables holding a process's rank on its node, by MPI implementation.
MPI_LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                       "PMI_LOCAL_RANK")


class DistributedError(RuntimeError):
    """The launcher's cluster cannot be joined; the message names the launcher."""


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job, and the device of every rank (``"Ascend:3"``, by rank)."""

    rank: int = 0
    world_size: int = 1
    devices: tuple[str, ...] = ()
    device_selection: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and the run directory."""
        return self.rank == 0


def _int(value: str | None) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        return 0


def launcher(environ: Mapping[str, str] | None = None) -> str | None:
    """``"msrun"``, ``"mpirun"`` (more than one MPI process) or None for a plain process."""
    env = os.environ if environ is None else environ
    if env.get("MS_ROLE") and env.get("MS_WORKER_NUM"):
        return "msrun"
    if _int(env.get("OMPI_COMM_WORLD_SIZE")) > 1 or _int(env.get("PMI_SIZE")) > 1:
        return "mpirun"
    return None


def launched_by_msrun() -> bool:
    """Whether this process was started by msrun (dynamic cluster networking)."""
    return launcher() == "msrun"


def mpi_local_rank(environ: Mapping[str, str] | None = None) -> int | None:
    """This process's rank on its node under mpirun, or None when no MPI sets one."""
    env = os.environ if environ is None else environ
    for var in MPI_LOCAL_RANK_VARS:
        value = env.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return None


def init_distributed(device_selection: str = "") -> DistInfo:
    """Join the launcher's cluster if there is one (parallel context set); else a single process.
    ``device_selection`` (how the device was chosen) is recorded with the gathered devices."""
    import mindspore as ms

    kind = launcher()
    if kind is None:
        return DistInfo(devices=(_this_device(),), device_selection=device_selection)
    from mindspore.communication import get_group_size, get_rank, init

    try:
        init()  # msrun's scheduler process (MS_ROLE=MS_SCHED) runs the cluster here and exits afterwards
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"cannot join the {kind} cluster: {exc}") from None
    rank, world = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=world)
    partial = DistInfo(rank=rank, world_size=world)
    devices = _gather_devices(partial)
    return DistInfo(rank=rank, world_size=world, devices=devices, device_selection=device_selection)


def _this_device() -> str:
    import mindspore as ms

    return f"{ms.get_context('device_target')}:{ms.get_context('device_id')}"


def _gather_devices(dist: DistInfo) -> tuple[str, ...]:
    """Every rank's device id (one all-gather of an int32), with this process's target."""
    import mindspore as ms
    import numpy as np
    from mindspore import ops

    mine = ms.Tensor(np.array([ms.get_context("device_id")], dtype=np.int32))
    ids = ops.AllGather()(mine).asnumpy().reshape(-1)
    target = ms.get_context("device_target")
    return tuple(f"{target}:{int(i)}" for i in ids[: dist.world_size])


def grad_reducer(params, dist: DistInfo):
    """Gradient averaging over the workers (identity for a single process)."""
    from mindspore import nn

    if not dist.enabled:
        return nn.Identity()
    return nn.DistributedGradReducer(params, mean=True, degree=dist.world_size)


BN_STATS = (".moving_mean", ".moving_variance")


def distribute_bn(net, dist: DistInfo) -> int:
    """Average every BatchNorm running statistic over the ranks, in place (timm's ``distribute_bn``
    with ``reduce=True``), so every rank evaluates and rank 0 saves the same model. Each rank's
    statistics come from its own shard; without this, sharded eval averages several models while
    ``best.ckpt`` holds rank 0's. One all-reduce of all statistics. Returns how many were averaged."""
    import numpy as np

    if not dist.enabled:
        return 0
    import mindspore as ms

    stats = [p for p in net.get_parameters() if p.name.endswith(BN_STATS)]
    if not stats:
        return 0
    flat = np.concatenate([p.asnumpy().astype(np.float32).ravel() for p in stats])
    mean = all_reduce_sum(flat, dist) / dist.world_size
    offset = 0
    for param in stats:
        size = int(np.prod(param.shape))
        param.set_data(ms.Tensor(mean[offset : offset + size].reshape(param.shape), dtype=param.dtype))
        offset += size
    return len(stats)


def all_reduce_sum(values, dist: DistInfo):
    """Sum a float64 numpy vector over the workers (eval counts); identity for one process."""
    import numpy as np

    if not dist.enabled:
        return values
    import mindspore as ms
    from mindspore import ops

    total = ops.AllReduce(ops.ReduceOp.SUM)(ms.Tensor(np.asarray(values, dtype=np.float32)))
    return total.asnumpy().astype(np.float64)


def any_rank(flag: bool, dist: DistInfo) -> bool:
    """Whether ``flag`` holds on any rank (one scalar all-reduce; ``flag`` itself for one process)."""
    if not dist.enabled:
        return bool(flag)
    return bool(all_reduce_sum([1.0 if flag else 0.0], dist)[0] > 0)


def gather_text(text: str, dist: DistInfo, limit: int = 2048) -> list[str]:
    """Every rank's ``text`` (UTF-8, cut at ``limit`` bytes), by rank: one all-gather of byte codes.
    For messages only one rank knows (the path of a corrupt file) that every rank must report."""
    if not dist.enabled:
        return [text]
    import mindspore as ms
    import numpy as np
    from mindspore import ops

    raw = text.encode("utf-8", "replace")[:limit]
    codes = np.zeros(limit + 1, dtype=np.int32)
    codes[0] = len(raw)
    codes[1 : 1 + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    rows = ops.AllGather()(ms.Tensor(codes)).asnumpy().reshape(dist.world_size, limit + 1)
    return [bytes(row[1 : 1 + int(row[0])].astype(np.uint8)).decode("utf-8", "replace") for row in rows]
