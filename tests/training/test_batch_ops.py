"""training.batch_ops: the per-batch stage applied on the device (uint8 batches) gives the numbers the
host applier gives (float32 batches), for every erasing mode and both mixes."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.support.train_testutil import dataset_rows, make_image_folder, pipeline_config
from training.data import BadImageLog, scan_split, train_dataset


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("digits"), classes=3, train_per_class=6, val_per_class=2)


def _cfg(folder, **kw):
    return pipeline_config(folder, **{"batch_size": 6, "num_parallel_workers": 1, "re_prob": 1.0,
                                      "re_count": 2, **kw})


_rows = dataset_rows


@pytest.mark.parametrize("re_mode", ["pixel", "rand", "const"])
@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_device_batches_equal_host_batches(folder, re_mode, mix):
    import mindspore as ms

    from training.batch_ops import device_batch_stage

    extra = {"mix_up": 0.8, "cutmix": 0.0} if mix == "mixup" else {"mix_up": 0.0, "cutmix": 1.0}
    host_cfg = _cfg(folder, re_mode=re_mode, device_batch_ops="off", **extra)
    device_cfg = _cfg(folder, re_mode=re_mode, device_batch_ops="on", **extra)
    split = scan_split(folder / "train")
    epoch = 1
    host = _rows(train_dataset(host_cfg, split, epoch, BadImageLog(os.devnull)))
    device = _rows(train_dataset(device_cfg, split, epoch, BadImageLog(os.devnull)))
    stage = device_batch_stage(device_cfg)
    assert len(host) == len(device) == 3
    for (h_images, h_targets), dev in zip(host, device, strict=True):
        u8, keys, boxes, colours, plan_mix, cut, targets = dev
        assert u8.dtype == np.uint8 and u8.nbytes * 4 == h_images.nbytes  # a quarter of the bytes travel
        assert (boxes[:, :, 2] > 0).any() and plan_mix[0] == (1.0 if mix == "mixup" else 2.0)
        out = stage(ms.Tensor(u8), ms.Tensor(keys), ms.Tensor(np.int32(epoch)), ms.Tensor(boxes),
                    ms.Tensor(colours), ms.Tensor(plan_mix), ms.Tensor(cut)).asnumpy()
        # bit-identical, except the pixel noise: float32 log/cos of numpy and of MindSpore's kernels
        np.testing.assert_allclose(out, h_images, rtol=0, atol=2e-5 if re_mode == "pixel" else 0)
        np.testing.assert_array_equal(targets, h_targets)


def test_auto_puts_the_batch_stage_on_the_device_except_on_cpu(folder):
    assert not _cfg(folder).batch_ops_on_device
    assert _cfg(folder, device_target="GPU").batch_ops_on_device
    assert _cfg(folder, device_target="CPU", device_batch_ops="on").batch_ops_on_device
    assert not _cfg(folder, device_target="Ascend", device_batch_ops="off").batch_ops_on_device
