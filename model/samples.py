"""Real photos that ship inside installed packages, for export verification, benchmarks and demos.

Nothing is downloaded: scikit-learn (a dependency) ships ``china.jpg`` and ``flower.jpg``; scikit-image
(the ``dev`` extra) ships colour samples. Found without importing either package (importing scikit-learn
takes seconds).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
SKIMAGE_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")


def package_dir(name: str) -> Path | None:
    """Where an installed package lives, or None; the package is not imported."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sample_photos(skimage_names: tuple[str, ...] = SKIMAGE_PHOTOS) -> list[Path]:
    """scikit-learn's two photos, then the scikit-image samples named (those installed), that exist."""
    paths: list[Path] = []
    sklearn_dir, skimage_dir = package_dir("sklearn"), package_dir("skimage")
    if sklearn_dir is not None:
        paths += [sklearn_dir / "datasets" / "images" / name for name in SKLEARN_PHOTOS]
    if skimage_dir is not None:
        paths += [skimage_dir / "data" / name for name in skimage_names]
    return [p for p in paths if p.is_file()]
