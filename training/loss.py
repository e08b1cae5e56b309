"""Soft-target cross-entropy: the loss for label-smoothed and mixup/cutmix targets.

The data pipeline turns every label into a probability vector (smoothing and mixing already
applied, ``training.augment``), so one loss serves all cases: ``mean_i(sum_c -t_ic log softmax(x_i)_c)``.
Computed in float32 whatever the AMP level (logits are cast first).
"""

from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops


class SoftTargetCrossEntropy(nn.Cell):
    """``loss(logits (N, C), targets (N, C) float) -> scalar`` mean over the batch."""

    def construct(self, logits, targets):
        logp = ops.log_softmax(logits.astype(ms.float32), axis=-1)
        return ops.mean(ops.sum(-targets.astype(ms.float32) * logp, -1))
