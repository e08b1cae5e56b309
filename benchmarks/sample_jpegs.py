"""The benchmarks' payload: the sample photos installed with scikit-learn and scikit-image
(``model.samples``) written as JPEGs (quality 90) into a folder.

    python -m benchmarks.sample_jpegs DIR
"""

from __future__ import annotations

import sys
from pathlib import Path


def write(out: Path) -> list[str]:
    from PIL import Image

    from model.samples import sample_photos

    out.mkdir(parents=True, exist_ok=True)
    for path in sample_photos():
        Image.open(path).convert("RGB").save(out / (path.stem + ".jpg"), quality=90)
    return sorted(p.name for p in out.iterdir())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.strip().splitlines()[-1].strip())
    print("payload:", ", ".join(write(Path(sys.argv[1]))))
