"""Counter-based random numbers: pure functions of integer counters, computed bit-identically by numpy
here and by MindSpore ops on any device (``model.layers``, ``training.batch_ops``).

MindSpore's random ops keep their state inside compiled kernels, where it can be neither saved nor
restored, and its generator-based ops have no CPU kernels in 2.10. Randomness that must survive a
resume (drop-path masks) or be drawn on the device exactly as the host would (random-erasing noise)
comes from here instead. The mixer is lowbias32 (a 32-bit integer hash). It is written with int32
arithmetic, which wraps, and logical shifts done as arithmetic shift plus mask, so every backend gets
the same bits. Uniforms take 24 bits, which float32 holds exactly; normals use Box-Muller on two
uniforms.

Numpy only: the data pipeline's worker processes use it without importing MindSpore.
"""

from __future__ import annotations

import math

import numpy as np

GOLDEN = -1640531535  # 0x9E3779B1 as int32: spreads consecutive counters
MIX1, MIX2 = 0x7FEB352D, -2073254261  # lowbias32's multipliers (0x846CA68B as int32)
UNIT = 16777216.0  # 2 ** 24


def mix32(x: np.ndarray | np.integer) -> np.ndarray:
    """lowbias32 on int32 values (wrapping)."""
    x = np.asarray(x, dtype=np.int32)
    with np.errstate(over="ignore"):
        x = ((x ^ ((x >> 16) & 0xFFFF)) * np.int32(MIX1)).astype(np.int32)
        x = ((x ^ ((x >> 15) & 0x1FFFF)) * np.int32(MIX2)).astype(np.int32)
        return x ^ ((x >> 16) & 0xFFFF)


def chain(*counters: int) -> np.int32:
    """One int32 from several counters (seed, epoch, key, ...), each mixed into the last."""
    h = np.int32(0)
    with np.errstate(over="ignore"):
        for value in counters:
            h = mix32(h * np.int32(GOLDEN) + np.int32(int(value) & 0x7FFFFFFF))
    return np.int32(h)


def uniform(h: np.ndarray) -> np.ndarray:
    """float32 in [0, 1) from the high 24 bits of a mixed int32."""
    return ((h >> 8) & 0xFFFFFF).astype(np.float32) / np.float32(UNIT)


def keep_mask(seed: int, step: int, batch: int, keep: float) -> np.ndarray:
    """Which samples a drop-path cell with ``seed`` keeps at ``step`` (``model.layers.DropPath``)."""
    with np.errstate(over="ignore"):
        base = mix32(np.int32(step) * np.int32(GOLDEN) + np.int32(seed))
        h = mix32(np.arange(batch, dtype=np.int32) * np.int32(GOLDEN) + base)
    return uniform(h) < np.float32(keep)


def normals(index: np.ndarray, base: np.int32) -> np.ndarray:
    """A standard normal float32 per int32 ``index`` under counter ``base`` (Box-Muller)."""
    with np.errstate(over="ignore"):
        h1 = mix32(np.asarray(index, dtype=np.int32) * np.int32(GOLDEN) + base)
        h2 = mix32(h1 + np.int32(GOLDEN))
    u1 = uniform(h1) + np.float32(0.5 / UNIT)  # (0, 1): log(u1) is finite
    radius = np.sqrt(np.float32(-2.0) * np.log(u1))
    return (radius * np.cos(np.float32(2.0 * math.pi) * uniform(h2))).astype(np.float32)
