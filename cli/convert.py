"""Convert the authors' PyTorch DDRNet ImageNet weights (.pth) into a MindSpore checkpoint of the
"authors" variant (stem conv bias, half-pixel bilinear fusion), loadable with
`model.create_model(ARCH, variant="authors", checkpoint_path=DST)`. Needs torch (the [torch] extra)."""

from __future__ import annotations

import argparse
import shlex

from cli.errors import CliError
from model.archs import ARCHS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC.pth", help="the authors' PyTorch checkpoint (state dict)")
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS), help="architecture of SRC")
    parser.add_argument(
        "--output", "-o", required=True, metavar="DST.ckpt", help="MindSpore checkpoint to write"
    )


def run(args: argparse.Namespace) -> int:
    from model.convert import ConvertError, convert_authors_checkpoint

    try:
        result = convert_authors_checkpoint(args.source, args.arch, args.output)
    except ConvertError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(
        f"wrote {result.output} ({result.arch}, variant authors, {result.num_classes} classes, "
        f"{result.num_tensors} tensors)"
    )
    # export reads arch, classes and variant from the checkpoint; the ImageNet labels ship in the package
    print("next, export it into a model repository (architecture, classes and variant come from the file):\n"
          f"  ddrnet export --checkpoint {shlex.quote(str(result.output))} --repository models "
          f"--name {result.arch}")
    return 0
