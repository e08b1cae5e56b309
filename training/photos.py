"""An ImageNet-style folder of real photos at ImageNet sizes, made from the sample photos that ship
inside installed packages (``model.samples``: scikit-learn's two, scikit-image's five when it is
installed), for measuring the input pipeline on the decode work ImageNet gives it.

Each class is one source photo; each image is a random crop of it (8 %–100 % of the area, aspect
3:4–4:3, maybe mirrored) resized to 500 × 375 (landscape) or 375 × 500 (portrait), the median
ImageNet size, and saved as a quality-90 JPEG. The same arguments give byte-identical files. Layout::

    OUT_DIR/train/<photo>/<i>.jpg   OUT_DIR/val/<photo>/<i>.jpg   OUT_DIR/labels.txt

Only for benchmarks: seven classes of one photo each teach a model nothing about the world.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from model.labels import write_labels_file
from model.samples import sample_photos

SIZES = ((500, 375), (375, 500))


def write_photo_folder(out_dir: str | Path, per_class: int = 64, val_per_class: int = 8, seed: int = 0,
                       force: bool = False) -> dict[str, int]:
    """Write the folder (see the module docstring); returns images per split. FileExistsError for a
    non-empty ``out_dir`` unless ``force``; ValueError when no sample photo is installed."""
    out = Path(out_dir)
    if per_class < 1 or val_per_class < 0:
        raise ValueError(f"per-class counts must be positive, got {per_class} and {val_per_class}")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} is not empty (use --force to replace train/, val/, labels.txt)")
        for name in ("train", "val"):
            shutil.rmtree(out / name, ignore_errors=True)
    photos = sample_photos()
    if not photos:
        raise ValueError("no sample photos installed (scikit-learn ships two; scikit-image adds five)")
    rng = np.random.default_rng(seed)
    names = [p.stem for p in photos]
    counts = {"train": 0, "val": 0}
    for photo, name in zip(photos, names, strict=True):
        with Image.open(photo) as src:
            source = src.convert("RGB")
        for split, n in (("train", per_class), ("val", val_per_class)):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _random_view(source, rng).save(folder / f"{i:05d}.jpg", quality=90)
                counts[split] += 1
    write_labels_file(out / "labels.txt", sorted(names))
    return counts


def _random_view(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    area = img.width * img.height * rng.uniform(0.08, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    w = int(min(img.width, round(np.sqrt(area * aspect))))
    h = int(min(img.height, round(np.sqrt(area / aspect))))
    left = int(rng.integers(0, img.width - w + 1))
    top = int(rng.integers(0, img.height - h + 1))
    view = img.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    return view.resize(SIZES[int(rng.integers(0, 2))], Image.BICUBIC)
