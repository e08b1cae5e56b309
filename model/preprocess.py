"""The one eval transform: image bytes or a PIL image → normalised float32 CHW, shared by eval and serving.

Imports Pillow and numpy only (no MindSpore), so the server, its worker processes and clients can use
it cheaply. The steps and their numerics are those of the MindSpore model zoo's DDRNet eval (and of a
``mindspore.dataset.vision`` PIL pipeline ``Decode(to_pil=True) → Resize((256, 256), BICUBIC) →
CenterCrop(224) → ToTensor() → Normalize(mean, std, is_hwc=False)``, equal to it bit for bit):

1. **decode** (:func:`decode_image`): only the formats in :data:`DEFAULT_FORMATS`; the declared size is
   checked against ``max_pixels`` *before* any pixel data is decoded (decompression bombs); the first
   frame of an animated image; EXIF orientation is ignored unless ``apply_exif_orientation`` (the zoo
   ignored it, and so do the published accuracies).
2. **to RGB** as the zoo did (``convert("RGB")``: alpha dropped, not composited; palette expanded;
   CMYK/YCbCr/LAB/HSV converted by Pillow). Greyscale (``1``, ``L``, ``LA``) stays one band through
   the resize and is replicated into the three channels at the end: identical numbers to converting
   first (Pillow resamples each band independently), a third of the resize work. Modes the zoo would
   have clipped to white are mapped to 8 bits sensibly instead (the one deliberate deviation):

   =================  ====================================================================
   ``I;16*``          16-bit unsigned → ``round(v / 257)`` (0…65535 → 0…255)
   ``I`` (int32)      max ≤ 255 → the values (clipped at 0); otherwise clipped to 0…65535 and
                      scaled as 16-bit (PNG/TIFF 16-bit data often arrives as ``I``)
   ``F`` (float32)    non-finite → 0; max ≤ 1.0 → ``v * 255``; otherwise clipped to 0…255; rounded
   =================  ====================================================================
3. **resize**: ``squash`` (zoo) to the square ``(int(image_size / crop_pct),) * 2``, aspect ratio not
   kept; ``shorter_side`` (timm/torchvision) shorter side to ``int(image_size / crop_pct)``, longer side
   ``int(size * long / short)``. Pillow resampling with the configured filter.
4. **center crop** ``image_size``: offsets ``int(round((side - image_size) / 2))`` as MindSpore and
   torchvision compute them.
5. **normalise** in float32 exactly as ``ToTensor`` + ``Normalize`` do: ``((x / 255) - mean) / std``,
   written straight into the caller's array (:meth:`EvalTransform.transform_into`).

Cost (``benchmarks/bench_preprocess.py``): Pillow's decode and resize are nearly all of it. Not used
because they change the numbers: ``Image.draft`` (JPEG DCT down-scaling), ``reducing_gap``, and
resizing only the crop region with ``resize(box=...)`` (measured with Pillow 13: equal for most sizes,
but off by up to 24 grey levels for some, e.g. 2×252 or 77×252 → 256² → 224²).
Normalising with a precomputed ``x * (1 / (255 * std)) - mean / std`` would be no faster than the
three in-place float32 passes used here and differs by up to 5e-7.

Errors: :class:`ImageDecodeError` and :class:`ImageTooLargeError`, both :class:`ImageError`
(a ``ValueError``) with a machine-readable ``reason`` (see :data:`ERROR_REASONS`) and a message that
names the problem. Suggested mapping for the front ends: ``too_many_pixels`` → 413,
``unsupported_format``/``unsupported_mode`` → 415, the rest → 400.

Thread safety: an :class:`EvalTransform` holds only constants; Pillow releases the GIL while
decoding and resampling, so threads preprocess in parallel.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from model.preprocess_config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATION_NAMES,
    RESIZE_MODES,
    PreprocessConfig,
    resolve_preprocess,
)

if TYPE_CHECKING:
    from model.manifest import ModelManifest

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ERROR_REASONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "RESIZE_MODES",
    "EvalTransform",
    "ImageDecodeError",
    "ImageError",
    "ImageTooLargeError",
    "PreprocessConfig",
    "decode_image",
    "open_image",
    "resolve_preprocess",
    "to_rgb",
]

#: Pillow resampling filters by name (``Image.BICUBIC`` etc. exist in every Pillow since 2.x).
INTERPOLATIONS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
    "lanczos": Image.LANCZOS,
}
assert set(INTERPOLATIONS) == set(INTERPOLATION_NAMES)

#: Formats :func:`decode_image` accepts (Pillow format names, most common first: Pillow tries them
#: in this order). Deliberately excludes formats whose plugins run external programs (EPS →
#: Ghostscript) or that no camera or browser produces.
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO", "PPM")

#: Largest accepted image, in pixels of the declared size (40 MP, e.g. 8000 × 5000). Pillow's own
#: bomb limit (``Image.MAX_IMAGE_PIXELS`` × 2, about 179 MP) still applies above it.
DEFAULT_MAX_PIXELS = 40_000_000

#: Rows of a float image converted at once (see ``_float_to_gray``).
FLOAT_STRIP_BYTES = 4 << 20

#: Bytes Pillow stores per pixel of a mode; every other mode (RGB, RGBA, CMYK, YCbCr, LA, …) takes 4.
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4}
#: Extra bytes per source pixel that converting a mode to RGB or L allocates (see ``_to_rgb_or_gray``).
_CONVERT_BYTES = {"RGB": 0, "L": 0, "1": 1, "LA": 1, "La": 1, "I;16": 3, "I;16L": 9, "I;16B": 9, "I;16N": 9,
                  "I": 5, "F": 1}

#: ``reason`` values of the errors below.
ERROR_REASONS = {
    "empty": "no bytes at all",
    "undecodable": "not an image in any accepted format, or corrupt",
    "truncated": "the image data ends early",
    "unsupported_format": "a format Pillow knows but this service does not accept",
    "unsupported_mode": "a pixel mode that cannot be converted to RGB",
    "too_many_pixels": "declared size (or the resize it needs) over the pixel limit",
    "too_much_memory": "decoding it would need more memory than the server's decode budget",
}

#: Encoded bytes (also a 1-D uint8 array, as mindspore.dataset passes file contents) or a PIL image.
ImageInput = bytes | bytearray | memoryview | np.ndarray | Image.Image
#: ``reserve(nbytes)``: a context manager that holds ``nbytes`` of a decode memory budget.
Reserve = Callable[[int], AbstractContextManager]


#: file suffixes taken as images when a folder is searched (int8 calibration, offline prediction)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def image_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Every image file under ``directory`` (recursively, class folders included), sorted."""
    return sorted(p for p in Path(directory).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class ImageError(ValueError):
    """A request image that cannot be preprocessed. ``reason`` is one of :data:`ERROR_REASONS`."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ImageDecodeError(ImageError):
    """Empty, corrupt, truncated or unsupported image data (HTTP 400 / 415)."""


class ImageTooLargeError(ImageError):
    """The image is over the pixel limit (HTTP 413). Raised before its pixels are decoded."""


@functools.lru_cache(maxsize=16)
def _accepted_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    # Image.open raises KeyError for a format name no plugin registered (e.g. WEBP without libwebp).
    Image.init()
    return tuple(f for f in formats if f.upper() in Image.OPEN)


def _identify_any(data: bytes | bytearray | memoryview) -> str | None:
    """Pillow's format name for bytes no accepted plugin took, if any plugin recognises them."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.format
    except Exception:
        return None


def decode_image(
    data: bytes | bytearray | memoryview,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] = DEFAULT_FORMATS,
) -> Image.Image:
    """Decode encoded bytes into a loaded PIL image (first frame, mode as decoded): :func:`open_image`,
    then its pixels."""
    img = open_image(data, max_pixels, formats)
    _load(img)
    return img


def open_image(
    data: bytes | bytearray | memoryview,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] = DEFAULT_FORMATS,
) -> Image.Image:
    """Read only the header of encoded bytes: a lazily opened PIL image whose pixels are not decoded
    yet (size, mode and format known, so the cost of decoding can be checked first).

    The declared width × height is checked against ``max_pixels`` before the pixel data is decoded.
    Raises :class:`ImageDecodeError` or :class:`ImageTooLargeError`. Pillow's own guard still runs
    inside ``Image.open``: its ``DecompressionBombError`` (over 2 × ``Image.MAX_IMAGE_PIXELS``) becomes
    an :class:`ImageTooLargeError`; its ``DecompressionBombWarning`` (over ``MAX_IMAGE_PIXELS``) can
    only appear when ``max_pixels`` was raised above that on purpose, and is left as a warning
    (turning it into an error would need ``warnings.catch_warnings``, which is not thread-safe).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"image data must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageDecodeError("empty image: 0 bytes", "empty")
    try:
        img = Image.open(io.BytesIO(data), formats=_accepted_formats(tuple(formats)))
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image too large: {exc}", "too_many_pixels") from None
    except Image.UnidentifiedImageError:
        found = _identify_any(data)
        if found is not None:
            raise ImageDecodeError(
                f"unsupported image format {found} (accepted: {', '.join(formats)})", "unsupported_format"
            ) from None
        raise ImageDecodeError(
            f"cannot decode image: not a valid {'/'.join(formats)} file ({len(data)} bytes)", "undecodable"
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # Pillow plugins raise many types on malformed headers
        text = _describe(exc)
        reason = "truncated" if "truncated" in text.lower() else "undecodable"
        raise ImageDecodeError(f"cannot decode image header: {text}", reason) from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has no pixels: declared size {width}x{height}", "undecodable")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image too large: {width}x{height} = {width * height} pixels, limit {max_pixels}",
            "too_many_pixels",
        )
    return img


def _load(img: Image.Image) -> None:
    """Decode the pixel data of a lazily opened image, mapping Pillow's errors to ours."""
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image too large: {exc}", "too_many_pixels") from None
    except MemoryError:
        raise
    except Exception as exc:
        text = _describe(exc)
        kind = img.format or "image"
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            raise ImageDecodeError(f"truncated {kind} image: {text}", "truncated") from None
        raise ImageDecodeError(f"cannot decode {kind} image data: {text}", "undecodable") from None


def _exif_upright(img: Image.Image) -> Image.Image:
    """``ImageOps.exif_transpose``; an image whose EXIF cannot be read or applied (Pillow raises many
    types for malformed EXIF) is used as stored: the orientation is metadata, the pixels are fine."""
    try:
        return ImageOps.exif_transpose(img)
    except MemoryError:
        raise
    except Exception:
        return img


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _to_rgb_or_gray(img: Image.Image) -> Image.Image:
    """An image in mode ``RGB`` or ``L`` whose RGB expansion equals the zoo's ``convert("RGB")``."""
    mode = img.mode
    if mode in ("RGB", "L"):
        return img
    if mode in ("1", "LA"):
        return img.convert("L")  # same numbers as convert("RGB") in one band
    if mode.startswith("I;16"):  # Pillow's point() takes "I;16" only; the other layouts go through "I"
        source = img if mode == "I;16" else img.convert("I")
        return source.point(_sixteen_to_eight).convert("L")
    if mode == "I":
        _low, high = img.getextrema()
        if high <= 255:
            return img.convert("L")  # clips negatives to 0
        return img.point(_sixteen_to_eight).convert("L")  # convert("L") clips to 0…255
    if mode == "F":
        return _float_to_gray(img)
    try:
        return img.convert("RGB")
    except ValueError:
        pass
    for via in ("RGBA", "LA"):  # e.g. premultiplied "La" converts only to "LA"
        try:
            return _to_rgb_or_gray(img.convert(via))
        except ValueError:
            continue
    message = f"unsupported image mode {mode!r}: cannot convert to RGB"
    raise ImageDecodeError(message, "unsupported_mode")


def _sixteen_to_eight(v: Any) -> Any:
    """0…65535 → 0…255 as ``(v + 128) // 257`` (round(v / 257)): a linear map Pillow's ``point`` applies
    in C on the image itself, exact for every 16-bit value (no numpy temporaries of the whole image)."""
    return v * (1 / 257) + 128 / 257


def _float_to_gray(img: Image.Image) -> Image.Image:
    """Mode ``F``: non-finite → 0; all values ≤ 1.0 → ``v * 255``; clipped to 0…255; rounded. Pillow has
    no NaN handling (and its F→L conversion truncates), so numpy does it, a strip of rows at a time:
    temporaries of a few MiB however large the image."""
    width, height = img.size
    rows = max(1, FLOAT_STRIP_BYTES // (4 * width))
    strips = [(top, min(height, top + rows)) for top in range(0, height, rows)]

    def strip(top: int, bottom: int) -> np.ndarray:
        v = np.asarray(img.crop((0, top, width, bottom)), dtype=np.float32)
        return np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)

    scale = max(float(strip(t, b).max()) for t, b in strips) <= 1.0
    out = np.empty((height, width), dtype=np.uint8)
    for top, bottom in strips:
        v = strip(top, bottom)
        if scale:
            v *= np.float32(255)
        np.clip(v, 0, 255, out=v)
        out[top:bottom] = np.rint(v)
    return Image.fromarray(out)


def to_rgb(img: Image.Image) -> Image.Image:
    """The image in mode RGB following this module's mode rules (the zoo's ``convert("RGB")``)."""
    out = _to_rgb_or_gray(img)
    return out if out.mode == "RGB" else out.convert("RGB")


class EvalTransform:
    """Callable eval transform built from a :class:`PreprocessConfig`.

    ``transform(image)`` → float32 ``(3, S, S)``; :meth:`transform_into` writes into a preallocated
    array (shared memory); :meth:`batch` stacks several. ``image`` is encoded bytes (``bytes``,
    ``bytearray``, ``memoryview`` or a 1-D uint8 array, decoded with :func:`decode_image` under
    ``max_pixels``/``formats``) or a PIL image of any mode. An instance can be a
    ``mindspore.dataset`` map operation on the encoded image column (it returns float32 CHW).
    """

    def __init__(
        self,
        config: PreprocessConfig | None = None,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        formats: Sequence[str] = DEFAULT_FORMATS,
    ) -> None:
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
        self.config = config if config is not None else PreprocessConfig()
        self.max_pixels = max_pixels
        self.formats = tuple(formats)
        size = self.config.image_size
        self.output_shape = (3, size, size)
        self._resample = INTERPOLATIONS[self.config.interpolation]
        self._mean = np.array(self.config.mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.array(self.config.std, dtype=np.float32).reshape(3, 1, 1)

    def __repr__(self) -> str:
        return f"EvalTransform({self.config!r}, max_pixels={self.max_pixels})"

    @classmethod
    def for_manifest(cls, manifest: ModelManifest, max_pixels: int = DEFAULT_MAX_PIXELS) -> EvalTransform:
        """The transform a model version records in its ``model.json`` (through the one resolver:
        nothing overrides it when serving); ValueError when it does not make the model's input."""
        transform = cls(resolve_preprocess(manifest.arch, manifest.preprocess), max_pixels=max_pixels)
        expected = tuple(manifest.item_shape)
        if transform.output_shape != expected:
            raise ValueError(
                f"preprocess gives {list(transform.output_shape)} but the model input is {list(expected)}"
            )
        return transform

    def __call__(self, image: ImageInput) -> np.ndarray:
        out = np.empty(self.output_shape, dtype=np.float32)
        self.transform_into(image, out)
        return out

    def batch(self, images: Iterable[ImageInput]) -> np.ndarray:
        """Transform several images into one float32 ``(N, 3, S, S)`` array.

        An :class:`ImageError` is re-raised (same class and reason) with ``image <i>:`` prepended.
        """
        items = list(images)
        out = np.empty((len(items), *self.output_shape), dtype=np.float32)
        for i, image in enumerate(items):
            try:
                self.transform_into(image, out[i])
            except ImageError as exc:
                raise type(exc)(f"image {i}: {exc}", exc.reason) from None
        return out

    def transform_into(self, image: ImageInput, out: np.ndarray, reserve: Reserve | None = None) -> None:
        """Write the transformed ``image`` into ``out`` (float32, shape ``(3, S, S)``, writable);
        ``reserve`` as in :meth:`resized_crop`."""
        if out.shape != self.output_shape or out.dtype != np.float32:
            expected = self.output_shape
            raise ValueError(f"out must be a float32 array of shape {expected}, got {out.dtype} {out.shape}")
        pixels = self.resized_crop(image, reserve)
        if pixels.ndim == 2:
            np.copyto(out, pixels[None], casting="unsafe")  # grey: one band to three channels
        else:
            np.copyto(out, pixels.transpose(2, 0, 1), casting="unsafe")
        # ToTensor() then Normalize(): same float32 operations in the same order, bit-identical.
        np.divide(out, np.float32(255), out=out)
        np.subtract(out, self._mean, out=out)
        np.divide(out, self._std, out=out)

    def decode_cost(self, img: Image.Image) -> int:
        """Bytes decoding and transforming ``img`` (opened, not yet loaded) allocates at the most: its
        pixels in Pillow's layout for its mode (16-bit 2, float 4, RGB/CMYK/alpha 4 per pixel), the
        conversion to RGB or grey, the EXIF rotation, the resize and the crop. Known from the header,
        before one pixel is decoded (only the first frame of a multi-frame image is decoded)."""
        width, height = img.size
        pixels = width * height
        mode = img.mode
        cost = pixels * (_PIXEL_BYTES.get(mode, 4) + _CONVERT_BYTES.get(mode, 4))
        if self.config.apply_exif_orientation:
            cost += pixels * _PIXEL_BYTES.get(mode, 4)
        if mode == "F":
            cost += 2 * FLOAT_STRIP_BYTES
        new_w, new_h = self._resized_size(width, height)
        grey = mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16")
        cost += new_w * new_h * (1 if grey else 4)
        return cost + 3 * self.config.image_size**2

    def resized_crop(self, image: ImageInput, reserve: Reserve | None = None) -> np.ndarray:
        """Steps 1–4: uint8 ``(S, S, 3)``, or ``(S, S)`` for a greyscale image (same value in R, G, B).

        ``reserve(nbytes)``, when given, is entered with :meth:`decode_cost` after the header is read
        and before the pixels are decoded, and left once the crop is taken: how a server keeps the
        memory of images being decoded at once under a budget (it may wait, or raise)."""
        if isinstance(image, Image.Image):
            img = image  # a lazily opened file decodes below; a loaded image is used as it is
        elif isinstance(image, (bytes, bytearray, memoryview)):
            img = open_image(image, self.max_pixels, self.formats)
        elif isinstance(image, np.ndarray) and image.ndim == 1 and image.dtype == np.uint8:
            # encoded file bytes as mindspore.dataset hands them to a Python map operation
            img = open_image(memoryview(np.ascontiguousarray(image)), self.max_pixels, self.formats)
        else:
            raise TypeError(f"image must be bytes or a PIL image, got {type(image).__name__}")
        if reserve is None:
            return self._resized_crop(img)
        with reserve(self.decode_cost(img)):
            return np.array(self._resized_crop(img))  # a copy: the crop, not a view of the resized image

    def _resized_crop(self, img: Image.Image) -> np.ndarray:
        _load(img)
        if self.config.apply_exif_orientation:
            img = _exif_upright(img)
        img = _to_rgb_or_gray(img)
        width, height = img.size
        if width < 1 or height < 1:
            raise ImageDecodeError(f"image has no pixels: size {width}x{height}", "undecodable")
        new_w, new_h = self._resized_size(width, height)
        if new_w * new_h > max(self.max_pixels, self.config.resize_size**2):
            raise ImageTooLargeError(
                f"image aspect ratio too extreme: {width}x{height} would resize to {new_w}x{new_h} "
                f"= {new_w * new_h} pixels, limit {self.max_pixels}",
                "too_many_pixels",
            )
        if (new_w, new_h) != (width, height):
            img = img.resize((new_w, new_h), self._resample)
        crop = self.config.image_size
        top = round((new_h - crop) / 2.0)  # Python's round (half to even), as MindSpore and torchvision
        left = round((new_w - crop) / 2.0)
        return np.asarray(img)[top : top + crop, left : left + crop]

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        size = self.config.resize_size
        if self.config.resize_mode == "squash":
            return size, size
        if width <= height:  # torchvision/timm: shorter side to `size`, longer int(size * long / short)
            return size, int(size * height / width)
        return int(size * width / height), size
