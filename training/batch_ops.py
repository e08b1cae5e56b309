"""The per-batch stage of training (random erasing, mixup/cutmix, soft targets), planned on the host
and applied on the host (float32 batches, the CPU default) or on the device (uint8 batches).

:class:`BatchStage` draws every random choice of a batch from the same seeded generators as before
(``(seed, epoch, sample key)`` per image, ``(seed, epoch, first key)`` per batch) into a
:class:`BatchPlan`: erasing boxes and colours, the mix mode, λ, the cutmix box and the soft targets.
:meth:`BatchStage.apply` paints a plan into a normalised float32 batch with numpy.
:class:`DeviceBatchStage` does the same as MindSpore ops to a uint8 batch: normalise, erase, mix.
The host then ships a quarter of the bytes. The pixel-mode erasing noise is counter-based
(``model.counter_rng``), so both appliers compute the same numbers; they differ only by the float32
rounding of ``log``/``cos`` between numpy and the device's kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.preprocess import IMAGENET_MEAN, IMAGENET_STD
from training.augment import Mixup, RandomErasing, _mix_with_reverse
from training.config import TrainConfig


@dataclass
class BatchPlan:
    """Every random choice of one batch (arrays shaped for the device)."""

    boxes: np.ndarray  # int32 (B, R, 4): top, left, height, width of each erasing box; height 0 = none
    colours: np.ndarray  # float32 (B, R, 3): the rand-mode colour of each box
    mix: np.ndarray  # float32 (3,): mode (0 none, 1 mixup, 2 cutmix), λ, 1 - λ
    cut: np.ndarray  # int32 (4,): the cutmix box: top, bottom, left, right
    targets: np.ndarray  # float32 (B, classes)


class BatchStage:
    """The per-batch random choices of a config in one epoch, and the host applier."""

    def __init__(self, cfg: TrainConfig, epoch: int) -> None:
        self.seed, self.epoch = cfg.seed, epoch
        self.erasing = RandomErasing(cfg.re_prob, cfg.re_mode, cfg.re_count) if cfg.re_prob > 0 else None
        self.max_boxes = cfg.re_count if self.erasing is not None else 0
        self.mixup = Mixup(cfg.mix_up, cfg.cutmix, cfg.mixup_prob, cfg.switch_prob, cfg.label_smoothing,
                           cfg.num_classes)
        self.mixing_on = cfg.mixing and not (cfg.mixup_off_epoch and epoch >= cfg.mixup_off_epoch)

    def plan(self, keys: list[int], labels: np.ndarray, height: int, width: int) -> BatchPlan:
        n = len(keys)
        boxes = np.zeros((n, max(1, self.max_boxes), 4), np.int32)
        colours = np.zeros((n, max(1, self.max_boxes), 3), np.float32)
        if self.erasing is not None:
            for j, key in enumerate(keys):
                rng = np.random.default_rng([self.seed, self.epoch, key, 2])
                for r, (top, left, h, w, colour) in enumerate(self.erasing.plan(height, width, rng)):
                    boxes[j, r] = (top, left, h, w)
                    if colour is not None:
                        colours[j, r] = colour
        # The batch's own generator is keyed by its first sample: independent of skip() on resume.
        rng = np.random.default_rng([self.seed, self.epoch, keys[0], 3])
        mode, lam, cut = self.mixup.plan(height, width, rng, self.mixing_on)
        return BatchPlan(boxes, colours, np.array([mode, lam, 1.0 - lam], np.float32),
                         np.array(cut, np.int32), self.mixup.targets(np.asarray(labels, np.int64), lam))

    def apply(self, batch: np.ndarray, plan: BatchPlan, keys: list[int]) -> np.ndarray:
        """Erase and mix a normalised float32 NCHW ``batch`` in place, as ``plan`` says."""
        if self.erasing is not None:
            for j, key in enumerate(keys):
                chosen = [(int(t), int(le), int(h), int(w), plan.colours[j, r])
                          for r, (t, le, h, w) in enumerate(plan.boxes[j]) if h > 0]
                self.erasing.apply(batch[j], chosen, (self.seed, self.epoch, key))
        mode = int(plan.mix[0])
        if mode == 2:
            top, bottom, left, right = (int(v) for v in plan.cut)
            batch[:, :, top:bottom, left:right] = batch[::-1, :, top:bottom, left:right].copy()
        elif mode == 1:
            _mix_with_reverse(batch, float(plan.mix[1]), float(plan.mix[2]))
        return batch


def device_batch_stage(cfg: TrainConfig):
    """The device applier for ``cfg`` (a MindSpore cell; imported only where MindSpore runs)."""
    import mindspore as ms
    from mindspore import nn, ops

    from model import counter_rng
    from model.layers import _mix32, _uniform

    golden = counter_rng.GOLDEN
    mean = ms.Tensor(np.array([255.0 * m for m in IMAGENET_MEAN], np.float32).reshape(1, 3, 1, 1))
    std = ms.Tensor(np.array([255.0 * s for s in IMAGENET_STD], np.float32).reshape(1, 3, 1, 1))
    mode = cfg.re_mode
    boxes_on = cfg.re_prob > 0
    seed = cfg.seed & 0x7FFFFFFF

    def chain(h, value):
        return _mix32(h * golden + value)

    class DeviceBatchStage(nn.Cell):
        """uint8 NCHW batch + its plan → the normalised, erased, mixed float32 batch (see the module)."""

        def construct(self, images, keys, epoch, boxes, colours, mix, cut):
            x = (images.astype(ms.float32) - mean) / std
            n, c, h, w = x.shape
            yy = ops.arange(h, dtype=ms.int32).reshape(1, h, 1)
            xx = ops.arange(w, dtype=ms.int32).reshape(1, 1, w)
            if boxes_on:
                for r in range(boxes.shape[1]):
                    top, left = boxes[:, r, 0].reshape(n, 1, 1), boxes[:, r, 1].reshape(n, 1, 1)
                    bh, bw = boxes[:, r, 2].reshape(n, 1, 1), boxes[:, r, 3].reshape(n, 1, 1)
                    inside = (yy >= top) & (yy < top + bh) & (xx >= left) & (xx < left + bw)
                    inside = inside.reshape(n, 1, h, w)
                    if mode == "pixel":
                        base = chain(chain(chain(chain(ops.zeros((n,), ms.int32), seed), epoch), keys), r)
                        index = ops.arange(c * h * w, dtype=ms.int32).reshape(1, c, h, w)
                        h1 = _mix32(index * golden + base.reshape(n, 1, 1, 1))
                        h2 = _mix32(h1 + golden)
                        u1 = _uniform(h1) + 0.5 / counter_rng.UNIT
                        fill = ops.sqrt(-2.0 * ops.log(u1)) * ops.cos(2.0 * np.pi * _uniform(h2))
                    elif mode == "rand":
                        fill = colours[:, r].reshape(n, 3, 1, 1).broadcast_to(x.shape)
                    else:
                        fill = ops.zeros_like(x)
                    x = ops.where(inside.broadcast_to(x.shape), fill, x)
            flipped = ops.flip(x, (0,))
            mixed = x * mix[1] + flipped * mix[2]
            in_cut = (yy >= cut[0]) & (yy < cut[1]) & (xx >= cut[2]) & (xx < cut[3])
            cut_x = ops.where(in_cut.reshape(1, 1, h, w).broadcast_to(x.shape), flipped, x)
            x = ops.where(mix[0] == 1.0, mixed, ops.where(mix[0] == 2.0, cut_x, x))
            return x

    return DeviceBatchStage()
