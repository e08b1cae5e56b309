"""Property tests of decode + eval transform: whatever bytes or small image comes in, the result is
either a documented ImageError (with a known reason) or a finite float32 (3, S, S) array."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from model.preprocess import ERROR_REASONS, EvalTransform, ImageError, PreprocessConfig

# Pillow warns about the damaged metadata it skips; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SIZE = 32
TRANSFORMS = {
    mode: EvalTransform(PreprocessConfig(image_size=SIZE, resize_mode=mode), max_pixels=1_000_000)
    for mode in ("squash", "shorter_side")
}
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (mode, formats that can store it)
MODES = {
    "1": ["PNG", "BMP", "TIFF", "GIF"],
    "L": ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM"],
    "LA": ["PNG", "TIFF"],
    "P": ["PNG", "GIF", "BMP", "TIFF"],
    "RGB": ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM"],
    "RGBA": ["PNG", "WEBP", "TIFF"],
    "CMYK": ["JPEG", "TIFF"],
    "I;16": ["PNG", "TIFF"],
    "I": ["TIFF"],
    "F": ["TIFF"],
}


def check(data, shorter_side: bool) -> None:
    transform = TRANSFORMS["shorter_side" if shorter_side else "squash"]
    try:
        out = transform(data)
    except ImageError as exc:
        assert exc.reason in ERROR_REASONS
        assert str(exc)
        return
    assert out.dtype == np.float32 and out.shape == (3, SIZE, SIZE)
    assert np.isfinite(out).all()


@st.composite
def small_images(draw) -> Image.Image:
    mode = draw(st.sampled_from(sorted(MODES)))
    width = draw(st.integers(1, 48))
    height = draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    elif mode == "I":
        img = Image.fromarray(rng.integers(-(2**31), 2**31 - 1, (height, width), dtype=np.int32))
    elif mode == "F":
        img = Image.fromarray((rng.standard_normal((height, width)) * 1000).astype(np.float32))
    else:
        img = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA").convert(mode)
    return img


@st.composite
def encoded_images(draw) -> bytes:
    img = draw(small_images())
    fmt = draw(st.sampled_from(MODES[img.mode]))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@st.composite
def damaged(draw) -> bytes:
    """A valid encoding, truncated and/or with some bytes overwritten."""
    data = bytearray(draw(encoded_images()))
    cut = draw(st.integers(0, len(data)))
    if draw(st.booleans()):
        data = data[:cut]
    for _ in range(draw(st.integers(0, 8))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(st.binary(max_size=4096), st.booleans())
def test_random_bytes(data, shorter_side):
    check(data, shorter_side)


@FUZZ
@given(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"RIFF"]),
       st.binary(max_size=512), st.booleans())
def test_random_bytes_after_a_real_signature(signature, rest, shorter_side):
    check(signature + rest, shorter_side)


@FUZZ
@given(encoded_images(), st.booleans())
def test_valid_small_encodings_always_transform(data, shorter_side):
    transform = TRANSFORMS["shorter_side" if shorter_side else "squash"]
    out = transform(data)  # a valid image under the pixel limit never raises
    assert out.dtype == np.float32 and out.shape == (3, SIZE, SIZE) and np.isfinite(out).all()


@FUZZ
@given(damaged(), st.booleans())
def test_damaged_encodings(data, shorter_side):
    check(data, shorter_side)


@FUZZ
@given(small_images(), st.booleans())
def test_pil_images_of_every_mode(img, shorter_side):
    check(img, shorter_side)
