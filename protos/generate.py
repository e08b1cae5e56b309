"""Regenerate the committed gRPC/protobuf Python code from ``protos/*.proto``: ``python -m protos.generate``.

protoc runs with the repository root as its include path, so the generated modules import each other
package-qualified (``from protos import classify_pb2``) and work from any working directory. ``--out``
writes the tree elsewhere (the staleness test compares such a copy with the committed files).
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    """The ``.proto`` sources, sorted (the order protoc sees them in)."""
    return sorted(PROTO_DIR.glob("*.proto"))


def generated_files(directory: Path) -> list[Path]:
    """The generated modules in ``directory`` (a ``protos`` folder), sorted."""
    return sorted(p for p in directory.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def generate(out_root: Path = REPO_ROOT) -> list[Path]:
    """Run protoc (from grpcio-tools) on every ``.proto``; output lands in ``out_root/protos``.

    Returns the generated files. Raises RuntimeError when protoc fails.
    """
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    out_dir = Path(out_root) / PROTO_DIR.name
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    sources = [str(p.relative_to(REPO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"--proto_path={REPO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *sources,
    ]
    status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"protoc failed (exit status {status}) on {', '.join(sources)}")
    return generated_files(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protos.generate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT, help="root of the output tree (default: the repository)"
    )
    args = parser.parse_args(argv)
    try:
        files = generate(args.out)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in files:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
