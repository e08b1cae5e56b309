"""The ONNX-exportable bilinear resize (R_h · X · R_wᵀ) against MindSpore's own ResizeBilinearV2 (both
half-pixel settings) and torch's F.interpolate, in PyNative and GRAPH mode with a dynamic batch."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from model.layers import bilinear_matrix, resize_bilinear_like
from tests.support.ddrnet_testutil import images, ms_mode

SIZES = [((7, 7), (28, 28)), ((14, 14), (28, 28)), ((2, 3), (8, 12)), ((3, 5), (12, 20)), ((8, 8), (3, 5))]


def _ms_reference(x: np.ndarray, size: tuple[int, int], half_pixel: bool) -> np.ndarray:
    op = ops.ResizeBilinearV2(align_corners=False, half_pixel_centers=half_pixel)
    return op(Tensor(x), size).asnumpy()


@pytest.mark.parametrize("half_pixel", [False, True])
@pytest.mark.parametrize(("src", "dst"), SIZES)
def test_matrix_equals_resize_bilinear_v2(half_pixel, src, dst):
    x = images((2, 3, *src))
    with ms_mode(ms.PYNATIVE_MODE):
        ours = resize_bilinear_like(Tensor(x), Tensor(np.zeros((1, 1, *dst), np.float32)), half_pixel)
        expected = _ms_reference(x, dst, half_pixel)
    np.testing.assert_allclose(ours.asnumpy(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("src", "dst"), SIZES)
def test_half_pixel_matrix_equals_torch_interpolate(src, dst):
    torch = pytest.importorskip("torch", reason="torch (the [torch] extra) not installed")
    x = images((2, 3, *src), seed=1)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), size=dst, mode="bilinear").numpy()
    r_h, r_w = bilinear_matrix(src[0], dst[0], True), bilinear_matrix(src[1], dst[1], True)
    ours = np.einsum("Hh,nchw,Ww->ncHW", r_h, x, r_w)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def test_matrix_rows_are_convex_weights():
    for half_pixel in (False, True):
        m = bilinear_matrix(7, 28, half_pixel)
        assert m.shape == (28, 7) and (m >= 0).all()
        np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
        assert not m.flags.writeable
    assert not np.array_equal(bilinear_matrix(7, 28, False), bilinear_matrix(7, 28, True))


class _Upsample(nn.Cell):
    def __init__(self, half_pixel: bool) -> None:
        super().__init__()
        self.half_pixel = half_pixel

    def construct(self, low, high):
        return high + resize_bilinear_like(low, high, self.half_pixel)


@pytest.mark.parametrize("half_pixel", [False, True])
def test_graph_mode_constants_for_each_size_with_dynamic_batch(half_pixel):
    """In GRAPH mode the matrices are built at compile time from static H, W: two sizes, two batches."""
    with ms_mode(ms.GRAPH_MODE):
        for low_size, high_size in [((7, 7), (28, 28)), ((4, 6), (16, 24))]:
            net = _Upsample(half_pixel)
            net.set_inputs(
                Tensor(shape=[None, 3, *low_size], dtype=ms.float32),
                Tensor(shape=[None, 3, *high_size], dtype=ms.float32),
            )
            for batch in (1, 3):
                low = images((batch, 3, *low_size), seed=batch)
                high = images((batch, 3, *high_size), seed=batch + 10)
                out = net(Tensor(low), Tensor(high)).asnumpy()
                with ms_mode(ms.PYNATIVE_MODE):
                    expected = high + _ms_reference(low, high_size, half_pixel)
                np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def test_matrices_follow_the_input_dtype():
    """Under AMP the fusion input can be float16: the constant matrices take its dtype."""
    with ms_mode(ms.PYNATIVE_MODE):
        x = Tensor(images((1, 2, 7, 7)), dtype=ms.float16)
        out = resize_bilinear_like(x, Tensor(np.zeros((1, 1, 28, 28), np.float16)), True)
    assert out.dtype == ms.float16
    expected = _ms_reference(images((1, 2, 7, 7)), (28, 28), True)
    np.testing.assert_allclose(out.asnumpy().astype(np.float32), expected, atol=2e-2)
