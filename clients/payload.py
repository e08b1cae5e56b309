"""What the clients accept as an image, turned into encoded bytes, and image file discovery.

An image is encoded bytes (``bytes``, ``bytearray``, ``memoryview``), a path (``str`` or
``os.PathLike``) of an image file, a binary file object, or a PIL image (encoded as PNG, lossless).
The server decodes and preprocesses; clients never resize or normalise.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ImageLike = bytes | bytearray | memoryview | str | os.PathLike | Any

#: Extensions treated as images when a folder is expanded (the same set ``ddrnet eval`` reads).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")

_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def to_bytes(image: ImageLike) -> bytes:
    """Encoded bytes of ``image`` (see the module docstring); TypeError for anything else, OSError
    when a path cannot be read."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, (bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes()
    if hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("a file object given as an image must be opened in binary mode")
        return bytes(data)
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    kind = type(image).__name__
    raise TypeError(f"an image must be bytes, a path, a binary file or a PIL image, got {kind}")


def content_type(data: bytes) -> str:
    """The ``Content-Type`` for encoded image bytes, from their magic number."""
    for magic, media in _MAGIC:
        if data.startswith(magic):
            return media
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _walk(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                out.append(Path(dirpath) / name)
    return out


def expand_targets(targets: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Files named by ``targets`` (files, folders searched recursively for images, glob patterns
    with ``**``), in order without duplicates; and the targets that matched nothing."""
    files: list[Path] = []
    seen: set[Path] = set()
    missing: list[str] = []
    for target in targets:
        if _is_glob(target) and not Path(target).exists():
            matches = [Path(m) for m in sorted(glob.glob(target, recursive=True))]
        else:
            matches = [Path(target)] if Path(target).exists() else []
        found: list[Path] = []
        for match in matches:
            found.extend(_walk(match) if match.is_dir() else [match])
        if not found:
            missing.append(target)
        for path in found:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                files.append(path)
    return files, missing
