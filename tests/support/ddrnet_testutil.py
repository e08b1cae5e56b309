"""Shared helpers for the DDRNet network tests (execution-mode switching, JSON reference, comparisons)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import mindspore as ms
import numpy as np

# Copies of the published parameter layouts (names + shapes), kept with the tests.
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


def reference(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) pairs of one of the reference JSON files, in file order."""
    path = REFERENCE_DIR / name
    return [(n, tuple(s)) for n, s in json.loads(path.read_text())]


@contextlib.contextmanager
def ms_mode(mode: int) -> Iterator[None]:
    """Run a block in ``ms.GRAPH_MODE`` or ``ms.PYNATIVE_MODE``, restoring the previous mode."""
    old = ms.get_context("mode")
    ms.set_context(mode=mode)
    try:
        yield
    finally:
        ms.set_context(mode=old)


def assert_logits_close(actual: np.ndarray, expected: np.ndarray, rel: float = 1e-4) -> None:
    """Equal up to float32 rounding, relative to the logits' magnitude (random weights give large ones)."""
    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max())
    assert scale > 0
    err = float(np.abs(actual - expected).max())
    assert err <= rel * scale, f"max |diff| {err:.3g} > {rel} * max |logit| {scale:.3g}"


def images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
