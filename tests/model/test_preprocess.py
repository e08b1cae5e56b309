"""The eval transform equals a mindspore.dataset.vision PIL pipeline of the same steps, handles every
PIL mode the zoo's way, and refuses bombs, corrupt and empty input with the documented errors."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import skimage
import sklearn
from PIL import Image

from model.preprocess import (
    DEFAULT_MAX_PIXELS,
    ERROR_REASONS,
    EvalTransform,
    ImageDecodeError,
    ImageError,
    ImageTooLargeError,
    PreprocessConfig,
    decode_image,
    to_rgb,
)

SKLEARN_IMAGES = Path(sklearn.__file__).parent / "datasets" / "images"
SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
PHOTOS = {
    "china.jpg": SKLEARN_IMAGES / "china.jpg",
    "flower.jpg": SKLEARN_IMAGES / "flower.jpg",
    "astronaut.png": SKIMAGE_DATA / "astronaut.png",
    "coffee.png": SKIMAGE_DATA / "coffee.png",
    "chelsea.png": SKIMAGE_DATA / "chelsea.png",
}
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def ms_vision():
    import mindspore.dataset.vision as vision

    return vision


def _ms_inter(vision, name: str):
    return {
        "bicubic": vision.Inter.BICUBIC,
        "bilinear": vision.Inter.BILINEAR,
        "nearest": vision.Inter.NEAREST,
        "lanczos": vision.Inter.ANTIALIAS,  # PIL LANCZOS
    }[name]


def ms_reference(vision, image, size=224, resize=(256, 256), interpolation="bicubic", mean=MEAN, std=STD):
    """The zoo's eval as a mindspore.dataset.vision PIL pipeline; ``image`` is bytes or a PIL image."""
    ops = [
        vision.Resize(resize, _ms_inter(vision, interpolation)),
        vision.CenterCrop(size),
        vision.ToTensor(),
        vision.Normalize(list(mean), list(std), is_hwc=False),
    ]
    if isinstance(image, bytes):
        out = vision.Decode(to_pil=True)(np.frombuffer(image, dtype=np.uint8))
    else:
        out = image
    for op in ops:
        out = op(out)
    return out


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def chelsea() -> Image.Image:
    with Image.open(PHOTOS["chelsea.png"]) as img:
        return img.convert("RGB")


# ---------------------------------------------------------------------------------------------------
# numerics against MindSpore


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_equals_mindspore_pipeline_on_photos(ms_vision, name):
    data = PHOTOS[name].read_bytes()
    expected = ms_reference(ms_vision, data)
    out = EvalTransform()(data)
    assert out.dtype == np.float32 and out.shape == (3, 224, 224)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    with Image.open(io.BytesIO(data)) as img:  # a PIL image in gives the same
        np.testing.assert_allclose(EvalTransform()(img), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("image_size", "crop_pct", "interpolation"),
    [(223, 0.875, "bicubic"), (64, 1.0, "bilinear"), (160, 0.95, "nearest"), (96, 0.9, "lanczos")],
)
def test_equals_mindspore_pipeline_other_configs(ms_vision, image_size, crop_pct, interpolation):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    config = PreprocessConfig(
        image_size=image_size, crop_pct=crop_pct, interpolation=interpolation, mean=mean, std=std
    )
    side = int(image_size / crop_pct)
    for name in ("flower.jpg", "coffee.png"):
        data = PHOTOS[name].read_bytes()
        expected = ms_reference(ms_vision, data, image_size, (side, side), interpolation, mean, std)
        np.testing.assert_allclose(EvalTransform(config)(data), expected, rtol=0, atol=1e-6)


def _shorter_side_reference(img: Image.Image, size: int, crop: int, mean=MEAN, std=STD) -> np.ndarray:
    """timm/torchvision eval written out independently: Resize(size) + CenterCrop + ToTensor + Normalize."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)  # torchvision _compute_resized_output_size
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    resized = img.convert("RGB").resize((new_w, new_h), Image.BICUBIC)
    top, left = round((new_h - crop) / 2.0), round((new_w - crop) / 2.0)
    arr = np.asarray(resized, dtype=np.float64)[top : top + crop, left : left + crop] / 255.0
    arr = (arr - np.array(mean)) / np.array(std)
    return arr.transpose(2, 0, 1)


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_shorter_side_mode_matches_independent_reference(ms_vision, name):
    transform = EvalTransform(PreprocessConfig(resize_mode="shorter_side"))
    with Image.open(PHOTOS[name]) as img:
        img.load()
        for variant in (img, img.transpose(Image.Transpose.ROTATE_90)):  # landscape and portrait
            out = transform(variant)
            assert out.shape == (3, 224, 224)
            # float64 reference: differences are float32 rounding only
            np.testing.assert_allclose(out, _shorter_side_reference(variant, 256, 224), rtol=0, atol=2e-6)
            # MindSpore's own shorter-side Resize(int) agrees on these sizes
            expected = ms_reference(ms_vision, variant.convert("RGB"), resize=256)
            np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_shorter_side_keeps_aspect_where_squash_does_not(chelsea):
    squash = EvalTransform(PreprocessConfig(resize_mode="squash"))
    shorter = EvalTransform(PreprocessConfig(resize_mode="shorter_side"))
    assert squash._resized_size(451, 300) == (256, 256)
    assert shorter._resized_size(451, 300) == (384, 256)
    assert shorter._resized_size(300, 451) == (256, 384)
    assert not np.array_equal(squash(chelsea), shorter(chelsea))


# ---------------------------------------------------------------------------------------------------
# modes


EIGHT_BIT_MODES = ["1", "L", "LA", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"]


@pytest.mark.parametrize("mode", EIGHT_BIT_MODES)
def test_pil_modes_equal_zoo_convert_rgb(ms_vision, chelsea, mode):
    img = chelsea.convert("RGBA").convert(mode) if mode == "RGBa" else chelsea.convert(mode)
    if mode in ("LA", "RGBA"):  # a real alpha channel: the zoo drops it, it does not composite
        img.putalpha(Image.linear_gradient("L").resize(img.size))
    assert img.mode == mode
    expected = ms_reference(ms_vision, img.convert("RGB"))
    np.testing.assert_allclose(EvalTransform()(img), expected, rtol=0, atol=1e-6)


def test_premultiplied_la_mode(chelsea):
    la = chelsea.convert("LA")
    la.putalpha(200)
    premultiplied = la.convert("La")
    out = EvalTransform()(premultiplied)
    np.testing.assert_array_equal(out, EvalTransform()(premultiplied.convert("LA")))


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("1", "PNG"),
        ("1", "BMP"),
        ("L", "JPEG"),
        ("L", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("P", "GIF"),
        ("RGBA", "PNG"),
        ("RGBA", "TIFF"),
        ("CMYK", "JPEG"),
        ("CMYK", "TIFF"),
        ("LAB", "TIFF"),
        ("RGB", "WEBP"),
        ("RGB", "BMP"),
        ("RGB", "PPM"),
    ],
)
def test_encoded_modes_equal_mindspore_decode(ms_vision, chelsea, mode, fmt):
    img = chelsea.convert(mode)
    if mode == "P":
        img.info["transparency"] = 0  # a transparent palette entry: still plain convert("RGB")
    data = encode(img, fmt)
    decoded = decode_image(data)
    assert decoded.format == fmt
    expected = ms_reference(ms_vision, data)
    np.testing.assert_allclose(EvalTransform()(data), expected, rtol=0, atol=1e-6)


def test_greyscale_kept_single_band_equals_rgb_path(chelsea):
    grey = chelsea.convert("L")
    transform = EvalTransform()
    assert transform.resized_crop(grey).shape == (224, 224)
    out = transform(grey)
    np.testing.assert_array_equal(out, transform(grey.convert("RGB")))
    assert not np.array_equal(out[0], out[1])  # per-channel mean/std still applied


def test_sixteen_bit_modes_scale_to_eight_bit(chelsea):
    grey = np.asarray(chelsea.convert("L"))
    expected = EvalTransform()(Image.fromarray(grey))
    rng = np.random.default_rng(0)
    wide = grey.astype(np.uint32) * 257 + rng.integers(-128, 129, grey.shape)  # round(v/257) == grey
    wide = np.clip(wide, 0, 65535)
    sixteen = Image.fromarray(wide.astype(np.uint16))
    assert sixteen.mode == "I;16"
    np.testing.assert_array_equal(EvalTransform()(sixteen), expected)
    for data, mode in (
        (encode(sixteen, "PNG"), "I;16"),
        (encode(Image.fromarray(wide.astype(">u2")), "TIFF"), "I;16B"),
        (encode(Image.fromarray(wide.astype(np.int32)), "TIFF"), "I"),
    ):
        assert decode_image(data).mode == mode
        np.testing.assert_array_equal(EvalTransform()(data), expected)
    # "I" holding 8-bit values is read as 8-bit; "F" in [0, 1] or [0, 255] likewise
    np.testing.assert_array_equal(EvalTransform()(Image.fromarray(grey.astype(np.int32))), expected)
    unit = Image.fromarray(grey.astype(np.float32) / 255)
    np.testing.assert_array_equal(EvalTransform()(encode(unit, "TIFF")), expected)
    np.testing.assert_array_equal(EvalTransform()(Image.fromarray(grey.astype(np.float32))), expected)
    # the zoo would have clipped these to white; ours are never all one value
    assert EvalTransform()(sixteen).std() > 0.1


def test_float_mode_non_finite_values_become_zero():
    values = np.full((40, 40), np.nan, dtype=np.float32)
    values[:, :20] = np.inf
    out = EvalTransform(PreprocessConfig(image_size=32))(Image.fromarray(values))
    assert np.isfinite(out).all()
    black = EvalTransform(PreprocessConfig(image_size=32))(Image.new("L", (40, 40)))
    np.testing.assert_array_equal(out, black)


def test_to_rgb_returns_rgb(chelsea):
    for mode in ("1", "L", "LA", "I;16", "F", "CMYK", "P"):
        img = chelsea.convert("L").convert(mode) if mode in ("I;16", "F") else chelsea.convert(mode)
        assert to_rgb(img).mode == "RGB"


def test_unconvertible_mode_is_unsupported_mode(chelsea):
    img = chelsea.convert("CMYK")
    patched = mock.patch.object(Image.Image, "convert", side_effect=ValueError("no conversion"))
    with patched, pytest.raises(ImageDecodeError) as info:
        EvalTransform()(img)
    assert info.value.reason == "unsupported_mode" and "CMYK" in str(info.value)


def test_animated_gif_uses_first_frame():
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    frames = [Image.new("RGB", (64, 48), c) for c in colours]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    config = PreprocessConfig(image_size=32)
    first_only = encode(frames[0], "GIF")
    np.testing.assert_array_equal(EvalTransform(config)(data), EvalTransform(config)(first_only))
    real = (SKIMAGE_DATA / "no_time_for_that_tiny.gif").read_bytes()
    assert Image.open(io.BytesIO(real)).n_frames > 1
    assert EvalTransform(config)(real).shape == (3, 32, 32)


def test_exif_orientation_ignored_by_default_applied_when_configured(ms_vision, chelsea):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encode(chelsea, "JPEG", quality=95, exif=exif.tobytes())
    np.testing.assert_allclose(EvalTransform()(data), ms_reference(ms_vision, data), rtol=0, atol=1e-6)
    upright = decode_image(data).transpose(Image.Transpose.ROTATE_270)
    rotated = EvalTransform(PreprocessConfig(apply_exif_orientation=True))(data)
    np.testing.assert_array_equal(rotated, EvalTransform()(upright))


# ---------------------------------------------------------------------------------------------------
# errors


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _gif_header(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b"\x2c" + b"\0" * 9 + b"\x3b"


@pytest.mark.parametrize(
    "bomb",
    [_png_header(100_000, 100_000), _gif_header(65_535, 65_535), _png_header(9_000, 9_000)],
    ids=["png-1e10", "gif-4e9", "png-81M"],
)
def test_bombs_refused_before_decoding(bomb):
    assert len(bomb) < 200
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(bomb)
    assert info.value.reason == "too_many_pixels"
    assert "too large" in str(info.value)
    with pytest.raises(ImageTooLargeError):
        EvalTransform()(bomb)


def test_pixel_limit_is_configurable(chelsea):
    data = encode(chelsea, "PNG")  # 451 x 300 = 135,300 pixels
    with pytest.raises(ImageTooLargeError, match="451x300 = 135300 pixels, limit 100000"):
        EvalTransform(max_pixels=100_000)(data)
    assert EvalTransform(max_pixels=135_300)(data).shape == (3, 224, 224)
    with pytest.raises(ValueError, match="max_pixels"):
        EvalTransform(max_pixels=0)
    assert DEFAULT_MAX_PIXELS < Image.MAX_IMAGE_PIXELS  # ours triggers before Pillow warns


def test_pillow_bomb_error_maps_to_too_large():
    bomb = _png_header(20_000, 20_000)  # 400 MP: Pillow's own limit (2 x 89.5 MP) refuses it first
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(bomb, max_pixels=10**12)
    assert info.value.reason == "too_many_pixels"


def test_extreme_aspect_ratio_in_shorter_side_mode():
    sliver = Image.new("L", (2, 20_000))
    with pytest.raises(ImageTooLargeError, match="aspect ratio") as info:
        EvalTransform(PreprocessConfig(resize_mode="shorter_side"))(sliver)
    assert info.value.reason == "too_many_pixels"
    assert EvalTransform()(sliver).shape == (3, 224, 224)  # squash never enlarges beyond 256 x 256


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"  # opening EPS would run Ghostscript


def _truncated(fmt: str, chelsea: Image.Image) -> bytes:
    data = encode(chelsea, fmt)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("make", "error", "reason"),
    [
        (lambda c: b"", ImageDecodeError, "empty"),
        (lambda c: np.random.default_rng(1).bytes(5000), ImageDecodeError, "undecodable"),
        (lambda c: b"this is a text file, not an image\n" * 20, ImageDecodeError, "undecodable"),
        (lambda c: _truncated("JPEG", c), ImageDecodeError, "truncated"),
        (lambda c: _truncated("PNG", c), ImageDecodeError, "truncated"),
        (lambda c: encode(c, "JPEG")[:200], ImageDecodeError, "truncated"),
        (lambda c: b"\x89PNG\r\n\x1a\n" + b"\0" * 40, ImageDecodeError, "undecodable"),
        (lambda c: encode(c, "PCX"), ImageDecodeError, "unsupported_format"),
        (lambda c: encode(c, "ICO"), ImageDecodeError, "unsupported_format"),
        (lambda c: EPS, ImageDecodeError, "unsupported_format"),
    ],
    ids=["empty", "random", "text", "jpeg-half", "png-half", "jpeg-200B", "png-garbage", "pcx", "ico", "eps"],
)
def test_bad_bytes_raise_documented_errors(chelsea, make, error, reason):
    data = make(chelsea)
    with pytest.raises(error) as info:
        EvalTransform()(data)
    assert isinstance(info.value, ImageError) and isinstance(info.value, ValueError)
    assert info.value.reason == reason and reason in ERROR_REASONS
    message = str(info.value)
    assert message and "BytesIO" not in message and "Traceback" not in message


def test_wrong_input_type():
    with pytest.raises(TypeError, match="bytes or a PIL image"):
        EvalTransform()("/etc/passwd")  # never a path
    with pytest.raises(TypeError):
        decode_image("abc")  # type: ignore[arg-type]


def test_formats_are_restricted(chelsea):
    data = encode(chelsea, "PNG")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, formats=("JPEG",))
    assert info.value.reason == "unsupported_format" and "PNG" in str(info.value)


# ---------------------------------------------------------------------------------------------------
# batch and preallocated output


def test_batch_and_transform_into(chelsea):
    config = PreprocessConfig(image_size=64)
    transform = EvalTransform(config)
    images = [PHOTOS["china.jpg"].read_bytes(), chelsea, bytearray(encode(chelsea.convert("L"), "PNG"))]
    batch = transform.batch(images)
    assert batch.shape == (3, 3, 64, 64) and batch.dtype == np.float32
    for i, image in enumerate(images):
        np.testing.assert_array_equal(batch[i], transform(image))
    assert transform.batch([]).shape == (0, 3, 64, 64)

    shared = np.full((4, 3, 64, 64), 7.0, dtype=np.float32)  # e.g. a shared-memory slot array
    transform.transform_into(memoryview(images[0]), shared[2])
    np.testing.assert_array_equal(shared[2], batch[0])
    assert (shared[[0, 1, 3]] == 7.0).all()

    with pytest.raises(ValueError, match="float32 array of shape"):
        transform.transform_into(chelsea, np.empty((3, 64, 64), dtype=np.float64))
    with pytest.raises(ValueError, match="float32 array of shape"):
        transform.transform_into(chelsea, np.empty((3, 224, 224), dtype=np.float32))


def test_batch_error_names_the_image(chelsea):
    with pytest.raises(ImageDecodeError, match=r"^image 1: empty image") as info:
        EvalTransform().batch([chelsea, b"", chelsea])
    assert info.value.reason == "empty"


# ---------------------------------------------------------------------------------------------------
# config


def test_config_defaults_are_the_zoo_eval():
    config = PreprocessConfig()
    assert (config.image_size, config.crop_pct, config.interpolation, config.resize_mode) == (
        224,
        0.875,
        "bicubic",
        "squash",
    )
    assert config.mean == MEAN and config.std == STD and config.resize_size == 256
    assert not config.apply_exif_orientation
    assert PreprocessConfig(image_size=299, crop_pct=0.9).resize_size == 332


def test_config_round_trip_through_json():
    config = PreprocessConfig(
        image_size=96, crop_pct=1.0, interpolation="bilinear", resize_mode="shorter_side"
    )
    data = json.loads(json.dumps(config.to_dict()))
    assert data["mean"] == list(MEAN)
    assert set(data) == {
        "image_size",
        "crop_pct",
        "interpolation",
        "resize_mode",
        "mean",
        "std",
        "apply_exif_orientation",
    }
    assert PreprocessConfig.from_dict(data) == config
    assert PreprocessConfig.from_dict({"image_size": 64}) == PreprocessConfig(image_size=64)
    assert PreprocessConfig(mean=[0.5, 0.5, 0.5]).mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"image_size": 0}, "image_size"),
        ({"image_size": 224.0}, "image_size"),
        ({"image_size": True}, "image_size"),
        ({"crop_pct": 0}, "crop_pct"),
        ({"crop_pct": 1.5}, "crop_pct"),
        ({"crop_pct": "0.9"}, "crop_pct"),
        ({"interpolation": "cubic"}, "interpolation"),
        ({"resize_mode": "crop"}, "resize_mode"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"mean": "abc"}, "mean"),
        ({"mean": (0.5, float("nan"), 0.5)}, "mean"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
        ({"std": 0.2}, "std"),
        ({"apply_exif_orientation": "yes"}, "apply_exif_orientation"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"preprocess.{field}"):
        PreprocessConfig(**kwargs)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown keys \['size'\]"):
        PreprocessConfig.from_dict({"size": 224})
    with pytest.raises(ValueError, match="mapping"):
        PreprocessConfig.from_dict([("image_size", 224)])  # type: ignore[arg-type]


def test_imports_no_mindspore():
    code = (
        "import sys, model.preprocess, model.labels; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('mindspore', 'torch', 'onnxruntime')]; "
        "sys.exit(1 if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_lazily_opened_truncated_pil_image(chelsea, tmp_path):
    path = tmp_path / "half.jpg"
    path.write_bytes(_truncated("JPEG", chelsea))
    with Image.open(path) as img, pytest.raises(ImageDecodeError) as info:  # header fine, data cut
        EvalTransform()(img)
    assert info.value.reason == "truncated"


def test_as_a_mindspore_dataset_map_operation(tmp_path):
    import mindspore.dataset as ds

    for name in ("china.jpg", "chelsea.png"):
        (tmp_path / "cls").mkdir(exist_ok=True)
        (tmp_path / "cls" / name).write_bytes(PHOTOS[name].read_bytes())
    transform = EvalTransform(PreprocessConfig(image_size=64))
    dataset = ds.ImageFolderDataset(str(tmp_path), shuffle=False, decode=False)
    dataset = dataset.map(operations=[transform], input_columns="image")
    rows = list(dataset.create_dict_iterator(output_numpy=True))
    assert len(rows) == 2
    for row, name in zip(rows, ("chelsea.png", "china.jpg"), strict=True):
        np.testing.assert_array_equal(row["image"], transform(PHOTOS[name].read_bytes()))
    with pytest.raises(TypeError):
        transform(np.zeros((4, 4, 3), dtype=np.uint8))  # decoded arrays are not accepted


def test_unreadable_exif_leaves_the_image_as_stored(monkeypatch) -> None:
    """With apply_exif_orientation, an EXIF block Pillow cannot apply is ignored (the pixels are fine)
    instead of failing the image."""
    from PIL import ImageOps

    def broken(_img):
        raise SyntaxError("corrupt EXIF")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="JPEG")
    transform = EvalTransform(PreprocessConfig(image_size=32, apply_exif_orientation=True))
    out = transform(buf.getvalue())
    assert out.shape == (3, 32, 32) and np.isfinite(out).all()


def test_sixteen_bit_and_int_conversions_are_exact_over_the_whole_range() -> None:
    """Pillow's own conversion (``point``) gives round(v / 257) for every 16-bit value, and clips
    mode ``I`` to 0…65535 first, exactly as the documented integer rule."""
    from model.preprocess import _to_rgb_or_gray

    v = np.arange(65536, dtype=np.uint32).reshape(256, 256)
    want = ((v + 128) // 257).astype(np.uint8)
    for mode, raw in (("I;16", v.astype("<u2")), ("I;16B", v.astype(">u2"))):
        img = Image.frombytes(mode, (256, 256), raw.tobytes())
        np.testing.assert_array_equal(np.asarray(_to_rgb_or_gray(img)), want)
    wide = np.concatenate([v.ravel(), [-5, -70000, 65536, 2**31 - 1]]).astype(np.int32)[-65536:]
    img = Image.frombytes("I", (256, 256), wide.tobytes())
    expected = ((np.clip(wide, 0, 65535).astype(np.int64) + 128) // 257).astype(np.uint8).reshape(256, 256)
    np.testing.assert_array_equal(np.asarray(_to_rgb_or_gray(img)), expected)


def test_float_images_convert_in_strips_like_the_whole_image_rule(monkeypatch) -> None:
    from model import preprocess

    rng = np.random.default_rng(1)
    values = rng.uniform(-20, 300, (97, 61)).astype(np.float32)
    values[3, 4], values[50, 7], values[90, 60] = np.nan, np.inf, 127.5
    want = np.rint(np.clip(np.nan_to_num(values, nan=0, posinf=0, neginf=0), 0, 255)).astype(np.uint8)
    monkeypatch.setattr(preprocess, "FLOAT_STRIP_BYTES", 61 * 4 * 7)  # 7 rows a strip: 14 strips
    np.testing.assert_array_equal(np.asarray(preprocess._to_rgb_or_gray(Image.fromarray(values))), want)
    unit = (values - values.min()) / 1000  # all <= 1.0 (NaN aside): scaled by 255
    unit = np.nan_to_num(unit, nan=0, posinf=0, neginf=0).astype(np.float32)
    got = np.asarray(preprocess._to_rgb_or_gray(Image.fromarray(unit)))
    np.testing.assert_array_equal(got, np.rint(np.clip(unit * 255, 0, 255)).astype(np.uint8))


def test_decode_cost_is_mode_aware_and_known_before_decoding() -> None:
    from model.preprocess import open_image

    transform = EvalTransform(PreprocessConfig(image_size=32))
    sizes = {}
    for mode, img in (("RGB", Image.new("RGB", (400, 300))), ("L", Image.new("L", (400, 300))),
                      ("I;16", Image.new("I;16", (400, 300))), ("RGBA", Image.new("RGBA", (400, 300)))):
        opened = open_image(encode(img, "PNG"))
        assert opened.mode == mode and opened._im is None  # header only: no pixels decoded yet
        sizes[mode] = transform.decode_cost(opened)
    pixels = 400 * 300
    assert sizes["L"] < sizes["RGB"] < sizes["I;16"] < sizes["RGBA"]  # 1, 4, 2+3, 4+4 bytes a pixel
    assert sizes["RGBA"] >= pixels * 8 and sizes["I;16"] >= pixels * 5
