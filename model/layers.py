"""Building blocks of the DDRNet classifiers: conv/BN factories, residual blocks, drop path and an
ONNX-exportable bilinear resize.

Layers know nothing of models: no DDRNet widths or names live here.

Bilinear resize. MindSpore 2.10's ONNX exporter rejects every bilinear resize op (ResizeBilinearV2,
``ops.interpolate``, ``nn.Upsample``), so a resize to a known size is written as the fixed linear map
it is: ``out = R_h · x · R_wᵀ`` with interpolation matrices built in numpy. The matrices depend only on
the static spatial sizes of the two tensors, so they are made by a ``mindspore.constexpr`` function:
in GRAPH mode it runs once at compile time on the static ``x.shape`` values and its result is folded
into the graph as constants (the batch dimension may stay dynamic, as MindIR export with a dynamic
batch needs); in PyNative it is an ordinary (cached) Python call.
"""

from __future__ import annotations

import functools

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops
from mindspore.common.initializer import HeNormal

from model import counter_rng
from model.onednn import configure_onednn

# Before any convolution runs: without it MindSpore 2.10 CPU convs take a ~50x slower oneDNN kernel.
configure_onednn()

BN_EPS = 1e-5
#: MindSpore momentum convention (moving = moving * momentum + batch * (1 - momentum)):
#: 0.9 here equals PyTorch's momentum 0.1.
BN_MOMENTUM = 0.9


@functools.lru_cache(maxsize=64)
def bilinear_matrix(n_in: int, n_out: int, half_pixel_centers: bool) -> np.ndarray:
    """The (n_out, n_in) matrix of a 1-D bilinear resize with ``align_corners=False``.

    ``half_pixel_centers=True`` is ``torch.nn.functional.interpolate(mode="bilinear")`` (source
    coordinate ``(dst + 0.5) * in/out - 0.5``, clamped at 0); ``False`` is the legacy TF/MindSpore
    ``ResizeBilinear`` (source coordinate ``dst * in/out``). Rows sum to 1. Returned read-only.
    """
    if n_in <= 0 or n_out <= 0:
        raise ValueError(f"bilinear_matrix needs positive sizes, got n_in={n_in}, n_out={n_out}")
    scale = n_in / n_out
    dst = np.arange(n_out, dtype=np.float64)
    src = (dst + 0.5) * scale - 0.5 if half_pixel_centers else dst * scale
    src = np.clip(src, 0.0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    mat = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(mat, (rows, lo), 1.0 - frac)
    np.add.at(mat, (rows, hi), frac)
    mat = mat.astype(np.float32)
    mat.setflags(write=False)
    return mat


@ms.constexpr
def _resize_constants(h_in, w_in, h_out, w_out, half_pixel_centers, dtype):
    """(R_h, R_wᵀ) as constant tensors of ``dtype``; evaluated at compile time in GRAPH mode."""
    r_h = bilinear_matrix(h_in, h_out, half_pixel_centers)
    r_wt = np.ascontiguousarray(bilinear_matrix(w_in, w_out, half_pixel_centers).T)
    return Tensor(r_h, dtype=dtype), Tensor(r_wt, dtype=dtype)


def resize_bilinear_like(x: Tensor, like: Tensor, half_pixel_centers: bool) -> Tensor:
    """Bilinear resize of NCHW ``x`` to the spatial size of ``like`` (``align_corners=False``).

    Uses only MatMul with constant matrices, so it exports to ONNX and runs with a dynamic batch.
    Spatial sizes must be static (they are, for a network compiled for a fixed image size).
    """
    r_h, r_wt = _resize_constants(
        x.shape[2], x.shape[3], like.shape[2], like.shape[3], half_pixel_centers, x.dtype
    )
    return ops.matmul(ops.matmul(r_h, x), r_wt)


def conv3x3(
    in_ch: int, out_ch: int, stride: int = 1, *, pad_mode: str = "pad", has_bias: bool = False
) -> nn.Conv2d:
    """3x3 convolution. ``pad_mode="pad"``: 1 pixel on every side (PyTorch ``padding=1``);
    ``pad_mode="same"``: TensorFlow-style SAME, which for stride 2 on an even size pads only the
    bottom/right edge (the MindSpore zoo's default; numerically different from ``"pad"``)."""
    if pad_mode == "pad":
        return nn.Conv2d(in_ch, out_ch, 3, stride=stride, pad_mode="pad", padding=1, has_bias=has_bias)
    if pad_mode == "same":
        return nn.Conv2d(in_ch, out_ch, 3, stride=stride, pad_mode="same", has_bias=has_bias)
    raise ValueError(f"pad_mode must be 'pad' or 'same', got {pad_mode!r}")


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias (no padding under either convention)."""
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, pad_mode="valid", has_bias=False)


def batch_norm(channels: int, momentum: float = BN_MOMENTUM) -> nn.BatchNorm2d:
    """BatchNorm2d with eps 1e-5; parameters gamma, beta, moving_mean, moving_variance."""
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=momentum)


def conv_bn(conv: nn.Cell, channels: int) -> nn.SequentialCell:
    """``[conv, BN]`` as a SequentialCell (parameter names ``<name>.0.*``, ``<name>.1.*``)."""
    return nn.SequentialCell([conv, batch_norm(channels)])


def init_conv_weights(cell: nn.Cell) -> None:
    """Kaiming-normal (fan_out, ReLU) conv weights, as both DDRNet sources initialise them."""
    for _, sub in cell.cells_and_names():
        if isinstance(sub, nn.Conv2d):
            sub.weight.set_data(
                ms.common.initializer.initializer(
                    HeNormal(mode="fan_out", nonlinearity="relu"), sub.weight.shape, sub.weight.dtype
                )
            )


#: Name (last component) of a DropPath cell's step counter (training state, not weights: see DropPath).
DROP_PATH_CLOCK = "clock"


def is_drop_path_clock(name: str) -> bool:
    """Whether a parameter name is a DropPath step counter (``layer3.1.drop_path.clock``)."""
    return name.rsplit(".", 1)[-1] == DROP_PATH_CLOCK

_GOLDEN, _MIX1, _MIX2 = counter_rng.GOLDEN, counter_rng.MIX1, counter_rng.MIX2


def _mix32(x: Tensor) -> Tensor:
    """``model.counter_rng.mix32`` as MindSpore ops (the same bits on every backend)."""
    x = ops.bitwise_xor(x, ops.bitwise_and(ops.bitwise_right_shift(x, 16), 0xFFFF)) * _MIX1
    x = ops.bitwise_xor(x, ops.bitwise_and(ops.bitwise_right_shift(x, 15), 0x1FFFF)) * _MIX2
    return ops.bitwise_xor(x, ops.bitwise_and(ops.bitwise_right_shift(x, 16), 0xFFFF))


def _uniform(h: Tensor) -> Tensor:
    return ops.bitwise_and(ops.bitwise_right_shift(h, 8), 0xFFFFFF).astype(ms.float32) / counter_rng.UNIT


class DropPath(nn.Cell):
    """Stochastic depth: in training, zero a sample's input with probability ``rate`` and scale the
    survivors by ``1 / (1 - rate)``; identity in eval (so exported graphs hold no random op). Which
    input of a block's sum it is applied to is the block's ``drop_path_mode``.

    The masks are a pure function of (``seed``, the cell's step counter, the sample's index)
    (``model.counter_rng``), not MindSpore's stateful random ops, whose state cannot be saved. The counter
    (``clock``, an int32 Parameter named ``...drop_path.clock``, only when ``rate > 0``) advances once
    per training forward and is saved in training checkpoints with the weights, so a resumed run draws
    exactly the masks an uninterrupted one would. Weight loaders treat it as optional."""

    def __init__(self, rate: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.keep = 1.0 - self.rate
        self.seed = int(seed) & 0x7FFFFFFF
        self.has_clock = self.rate > 0.0
        if self.has_clock:
            self.clock = ms.Parameter(Tensor(0, ms.int32), name="clock", requires_grad=False)

    def construct(self, x: Tensor) -> Tensor:
        if not self.training or not self.has_clock:
            return x
        step = self.clock + 0
        ops.assign_add(self.clock, Tensor(1, ms.int32))
        base = _mix32(step * _GOLDEN + self.seed)
        uniform = _uniform(_mix32(ops.arange(x.shape[0], dtype=ms.int32) * _GOLDEN + base))
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = (uniform < self.keep).astype(x.dtype).reshape(shape)
        return x * mask / self.keep


def _drop_shortcut(mode: str) -> bool:
    if mode not in ("zoo", "branch"):
        raise ValueError(f"drop_path_mode must be 'zoo' or 'branch', got {mode!r}")
    return mode == "zoo"


class BasicBlock(nn.Cell):
    """Two 3x3 conv+BN with a residual; ``no_relu`` drops the ReLU after the sum. Drop-path applies to
    the shortcut (``drop_path_mode="zoo"``: ``out += drop_path(residual)`` as in the model zoo) or to
    the branch (``"branch"``)."""

    expansion = 1

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Cell | None = None,
        no_relu: bool = False,
        drop_path: float = 0.0,
        pad_mode: str = "pad",
        drop_path_mode: str = "zoo",
        drop_path_seed: int = 0,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, planes, stride, pad_mode=pad_mode)
        self.bn1 = batch_norm(planes)
        self.conv2 = conv3x3(planes, planes, pad_mode=pad_mode)
        self.bn2 = batch_norm(planes)
        self.downsample = downsample
        self.has_downsample = downsample is not None
        self.no_relu = no_relu
        self.drop_path = DropPath(drop_path, drop_path_seed)
        self.drop_shortcut = _drop_shortcut(drop_path_mode)

    def construct(self, x: Tensor) -> Tensor:
        out = ops.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = self.downsample(x) if self.has_downsample else x
        out = out + self.drop_path(shortcut) if self.drop_shortcut else self.drop_path(out) + shortcut
        if self.no_relu:
            return out
        return ops.relu(out)


class Bottleneck(nn.Cell):
    """1x1 → 3x3 → 1x1 (expansion 2) conv+BN with a residual; ReLU after the sum unless ``no_relu``."""

    expansion = 2

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Cell | None = None,
        no_relu: bool = False,
        drop_path: float = 0.0,
        pad_mode: str = "pad",
        bn3_momentum: float = BN_MOMENTUM,
        drop_path_mode: str = "zoo",
        drop_path_seed: int = 0,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_ch, planes)
        self.bn1 = batch_norm(planes)
        self.conv2 = conv3x3(planes, planes, stride, pad_mode=pad_mode)
        self.bn2 = batch_norm(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = batch_norm(planes * self.expansion, momentum=bn3_momentum)
        self.downsample = downsample
        self.has_downsample = downsample is not None
        self.no_relu = no_relu
        self.drop_path = DropPath(drop_path, drop_path_seed)
        self.drop_shortcut = _drop_shortcut(drop_path_mode)

    def construct(self, x: Tensor) -> Tensor:
        out = ops.relu(self.bn1(self.conv1(x)))
        out = ops.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.downsample(x) if self.has_downsample else x
        out = out + self.drop_path(shortcut) if self.drop_shortcut else self.drop_path(out) + shortcut
        if self.no_relu:
            return out
        return ops.relu(out)
