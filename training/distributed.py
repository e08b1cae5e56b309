"""Data-parallel setup under MindSpore's ``msrun`` launcher: detect it, join the cluster, average.

``msrun`` starts every worker (and one scheduler process) with ``MS_ROLE``, ``MS_WORKER_NUM``,
``MS_SCHED_HOST``/``MS_SCHED_PORT`` in the environment; the same ``ddrnet train`` entrypoint sees
them and calls ``mindspore.communication.init()``. In the scheduler process ``init()`` serves the
cluster and the process exits when the workers are done; it never reaches the training code.
Workers get their rank and the world size from the communication layer, set
``ParallelMode.DATA_PARALLEL`` with ``gradients_mean=True``, and average gradients with
``nn.DistributedGradReducer`` inside the train step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and the run directory."""
        return self.rank == 0


def launched_by_msrun() -> bool:
    """Whether this process was started by msrun (dynamic cluster networking)."""
    return bool(os.environ.get("MS_ROLE")) and bool(os.environ.get("MS_WORKER_NUM"))


def init_distributed() -> DistInfo:
    """Join the msrun cluster if launched by it (parallel context set); else a single process."""
    if not launched_by_msrun():
        return DistInfo()
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    init()  # the scheduler process (MS_ROLE=MS_SCHED) runs the cluster here and exits afterwards
    rank, world = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=world)
    return DistInfo(rank=rank, world_size=world)


def grad_reducer(params, dist: DistInfo):
    """Gradient averaging over the workers (identity for a single process)."""
    from mindspore import nn

    if not dist.enabled:
        return nn.Identity()
    return nn.DistributedGradReducer(params, mean=True, degree=dist.world_size)


def all_reduce_sum(values, dist: DistInfo):
    """Sum a float64 numpy vector over the workers (eval counts); identity for one process."""
    import numpy as np

    if not dist.enabled:
        return values
    import mindspore as ms
    from mindspore import ops

    total = ops.AllReduce(ops.ReduceOp.SUM)(ms.Tensor(np.asarray(values, dtype=np.float32)))
    return total.asnumpy().astype(np.float64)
