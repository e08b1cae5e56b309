#!/usr/bin/env python3
"""Regenerate ``model/data/imagenet_classes.txt`` and ``imagenet_synsets.txt`` from a timm wheel.

The ImageNet-1k class index order is the sorted list of WordNet synset ids (the order of
``ImageFolder`` over the ILSVRC-2012 train folders, which every published checkpoint uses). timm's
wheel ships that list (``timm/data/_info/imagenet_synsets.txt``) and a synset → lemma table
(``imagenet_synset_to_lemma.txt``); the label of class ``i`` is the lemma of synset ``i``, the same
text timm's ``ImageNetInfo.index_to_description`` returns (e.g. ``tench, Tinca tinca``).

    python scripts/make_imagenet_labels.py /tmp/timm/timm-1.0.31-py3-none-any.whl
    python scripts/make_imagenet_labels.py WHEEL --check     # exit 1 if the committed files differ

The wheel is read as a zip file; nothing is imported from it and nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

SYNSETS_MEMBER = "timm/data/_info/imagenet_synsets.txt"
LEMMA_MEMBER = "timm/data/_info/imagenet_synset_to_lemma.txt"
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "model" / "data"
NUM_CLASSES = 1000


def read_wheel(wheel: Path) -> tuple[list[str], list[str]]:
    """Return (synsets, labels) in class-index order, checked for count, order and completeness."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            synsets_text = zf.read(SYNSETS_MEMBER).decode("utf-8")
            lemma_text = zf.read(LEMMA_MEMBER).decode("utf-8")
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise SystemExit(f"error: cannot read timm's ImageNet files from {wheel}: {exc}") from exc
    synsets = synsets_text.split()
    if len(synsets) != NUM_CLASSES or len(set(synsets)) != NUM_CLASSES:
        raise SystemExit(
            f"error: expected {NUM_CLASSES} distinct synsets in {SYNSETS_MEMBER}, got {len(synsets)}"
        )
    if synsets != sorted(synsets):
        raise SystemExit(f"error: {SYNSETS_MEMBER} is not in sorted (class-index) order")
    lemmas: dict[str, str] = {}
    for line in lemma_text.splitlines():
        if line.strip():
            synset, _, lemma = line.partition("\t")
            lemmas[synset.strip()] = lemma.strip()
    missing = [s for s in synsets if not lemmas.get(s)]
    if missing:
        raise SystemExit(f"error: no lemma for {len(missing)} synsets, e.g. {missing[:3]}")
    return synsets, [lemmas[s] for s in synsets]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="path to a timm-*.whl")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT, help="default: model/data")
    parser.add_argument("--check", action="store_true", help="compare with the files instead of writing")
    args = parser.parse_args(argv)

    synsets, labels = read_wheel(args.wheel)
    outputs = {
        "imagenet_classes.txt": "".join(f"{label}\n" for label in labels),
        "imagenet_synsets.txt": "".join(f"{synset}\n" for synset in synsets),
    }
    stale = []
    for name, text in outputs.items():
        path = args.output_dir / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            args.output_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({len(text.splitlines())} lines)")
    if stale:
        print(f"stale: {', '.join(stale)} (regenerate with scripts/make_imagenet_labels.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
