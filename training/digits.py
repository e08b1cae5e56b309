"""scikit-learn's bundled digits set (1,797 real 8×8 scans, 10 classes) as an ImageNet-style folder.

Layout written by :func:`write_digits`::

    OUT_DIR/train/<class>/<index>.jpg    # class folders "0" … "9": sorted order = label order
    OUT_DIR/val/<class>/<index>.jpg      # <index>: the sample's position in load_digits(), 4 digits
    OUT_DIR/labels.txt                   # "0" … "9", one per line (model.labels format)
    OUT_DIR/digits.json                  # provenance: source, split, size, per-class counts

Each 8×8 image holds ink counts 0…16 (16 = full ink). They become dark ink on a white page
(``255 - round(v * 255 / 16)``), are upscaled with Pillow bicubic to ``size``² and stored as RGB JPEG
(quality 95 by default; the eval transform converts to RGB anyway, and RGB keeps the training
pipeline identical to real photos). The train/val split is scikit-learn's stratified
``train_test_split`` with a fixed seed, so the same arguments give byte-identical files.

The set is built in a hidden sibling directory and moved into place at the end, so an interrupted run
never leaves a half-written data set behind. A non-empty ``OUT_DIR`` is refused unless ``force``;
then only the entries above are replaced and anything else in ``OUT_DIR`` is left alone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from model.labels import write_labels_file

log = logging.getLogger(__name__)

CLASS_NAMES = tuple(str(i) for i in range(10))
DEFAULT_SIZE = 64
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_SEED = 0
DEFAULT_QUALITY = 95
ENTRIES = ("train", "val", "labels.txt", "digits.json")  # what this module writes into OUT_DIR


@dataclass(frozen=True)
class DigitsSummary:
    """What :func:`write_digits` wrote."""

    out_dir: Path
    size: int
    train_counts: dict[str, int]
    val_counts: dict[str, int]

    @property
    def num_train(self) -> int:
        return sum(self.train_counts.values())

    @property
    def num_val(self) -> int:
        return sum(self.val_counts.values())

    def format(self) -> str:
        """A short human-readable table of the counts."""
        lines = [
            f"digits: {self.num_train} train + {self.num_val} val = {self.num_train + self.num_val} images "
            f"({self.size}x{self.size} RGB JPEG, {len(CLASS_NAMES)} classes) in {self.out_dir}",
            "class  " + " ".join(f"{name:>4}" for name in CLASS_NAMES),
            "train  " + " ".join(f"{self.train_counts[name]:>4}" for name in CLASS_NAMES),
            "val    " + " ".join(f"{self.val_counts[name]:>4}" for name in CLASS_NAMES),
        ]
        return "\n".join(lines)


def digit_to_image(ink: np.ndarray, size: int = DEFAULT_SIZE) -> Image.Image:
    """One 8×8 array of ink counts 0…16 → an RGB ``size``×``size`` image, dark ink on white."""
    grey = 255 - np.rint(np.clip(ink, 0, 16) * (255 / 16)).astype(np.uint8)
    return Image.fromarray(grey).resize((size, size), Image.BICUBIC).convert("RGB")


def split_indices(
    targets: np.ndarray, val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, val) sample indices, each sorted; ValueError if a split would miss a class."""
    from sklearn.model_selection import train_test_split

    if not 0 < val_fraction < 1:
        raise ValueError(f"val fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    indices = np.arange(len(targets))
    try:
        train, val = train_test_split(indices, test_size=val_fraction, stratify=targets, random_state=seed)
    except ValueError as exc:
        message = f"val fraction {val_fraction} cannot give every class a train and a val image: {exc}"
        raise ValueError(message) from None
    for name, part in (("train", train), ("val", val)):
        missing = sorted(set(targets.tolist()) - set(targets[part].tolist()))
        if missing:
            raise ValueError(f"val fraction {val_fraction} leaves the {name} split without classes {missing}")
    return np.sort(train), np.sort(val)


def write_digits(
    out_dir: str | os.PathLike[str],
    size: int = DEFAULT_SIZE,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = DEFAULT_SEED,
    quality: int = DEFAULT_QUALITY,
    force: bool = False,
    progress: bool = False,
) -> DigitsSummary:
    """Write the digits set under ``out_dir`` (layout in the module docstring).

    Raises FileExistsError for a non-empty ``out_dir`` without ``force``, NotADirectoryError when it
    is a file, ValueError for an out-of-range argument.
    """
    from sklearn import __version__ as sklearn_version
    from sklearn.datasets import load_digits
    from tqdm import tqdm

    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 1024:
        raise ValueError(f"size must be an integer between 8 and 1024 pixels, got {size!r}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be an integer between 1 and 100, got {quality!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} is not empty (use --force to replace the digits set in it)")

    digits = load_digits()
    targets = digits.target.astype(np.int64)
    train, val = split_indices(targets, val_fraction, seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()  # not tempfile.mkdtemp: its 0700 mode would become OUT_DIR's after the rename
    try:
        counts: dict[str, dict[str, int]] = {}
        jobs = [("train", i) for i in train] + [("val", i) for i in val]
        for split in ("train", "val"):
            counts[split] = dict.fromkeys(CLASS_NAMES, 0)
            for name in CLASS_NAMES:
                (staging / split / name).mkdir(parents=True)
        for split, index in tqdm(jobs, desc="digits", unit="img", disable=None if progress else True):
            name = CLASS_NAMES[targets[index]]
            image = digit_to_image(digits.images[index], size)
            image.save(staging / split / name / f"{index:04d}.jpg", "JPEG", quality=quality)
            counts[split][name] += 1
        write_labels_file(staging / "labels.txt", CLASS_NAMES)
        provenance = {
            "source": "sklearn.datasets.load_digits",
            "scikit_learn_version": sklearn_version,
            "num_images": len(targets),
            "image_size": size,
            "jpeg_quality": quality,
            "val_fraction": val_fraction,
            "seed": seed,
            "split": "sklearn.model_selection.train_test_split(stratify=target)",
            "classes": list(CLASS_NAMES),
            "counts": counts,
        }
        (staging / "digits.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary = DigitsSummary(out, size, counts["train"], counts["val"])
    log.info("wrote %d train and %d val digits images to %s", summary.num_train, summary.num_val, out)
    return summary


def _move_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)  # one atomic rename
        return
    for entry in ENTRIES:  # --force into an existing directory: replace only our entries
        target = out / entry
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        (staging / entry).rename(target)
