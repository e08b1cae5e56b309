"""`ddrnet` command line: builds the subcommand table and dispatches; the one ``main``.

Each subcommand is a thin shell ``cli/<subcommand>.py`` exposing ``add_arguments(parser)`` and
``run(args) -> int``: it turns options into calls of the package that owns the work, and that
package's errors into :class:`~cli.errors.CliError`, which this ``main`` prints as one line (exit 2).
Heavy imports (MindSpore, onnxruntime, grpc) happen inside ``run`` so that ``ddrnet --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from cli.errors import CliError

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("cli.train", "train a DDRNet classifier from a YAML config (msrun-aware)"),
    "eval": ("cli.eval", "top-1/top-5/loss of a checkpoint on a val folder, or through a server"),
    "export": ("cli.export", "export a training run or a checkpoint into a versioned model repository"),
    "convert": ("cli.convert", "convert the authors' PyTorch .pth weights into a MindSpore checkpoint"),
    "data": ("cli.data", "write demo data sets as ImageNet-style folders"),
    "serve": ("cli.serve", "serve a model repository over HTTP and gRPC"),
    "classify": ("cli.classify", "classify image files through a running server"),
    "predict": ("cli.predict", "classify a folder of images offline, without a server"),
    "bench": ("cli.bench", "load-test a running server and compare with the raw runtime"),
    "quickstart": ("cli.quickstart", "build the digits demo model when missing, then serve it"),
    "runs": ("cli.runs", "compare training runs: curves on one figure and a summary table"),
}


# subcommand -> (modules it imports that only an extra installs, the extra): checked before the
# subcommand's module is imported, so a serving install answers with the pip line, not a traceback.
NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "train": (("mindspore",), "train"),
    "export": (("mindspore", "onnx"), "train"),
    "convert": (("mindspore",), "train"),
    "data": (("sklearn",), "train"),
    "quickstart": (("mindspore", "sklearn"), "train"),
    "runs": (("matplotlib",), "train"),
}


def require_extra(command: str, modules: tuple[str, ...], extra: str) -> None:
    """CliError naming the pip extra when one of ``modules`` is not installed in this Python."""
    missing = [m for m in modules if not _installed(m)]
    if missing:
        raise CliError(
            f"needs {', '.join(missing)}, which this install lacks (a serving install): "
            f"pip install 'ddrnet-serve[{extra}]'"
        )


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``command``'s module is imported (to add its options)."""
    parser = argparse.ArgumentParser(
        prog="ddrnet",
        description="Train DDRNet image classifiers with MindSpore and serve them over HTTP and gRPC.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text, description=help_text)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _requested_command(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is one), if any."""
    return next((word for word in argv if word in SUBCOMMANDS), None)


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _requested_command(argv)
    if command in NEEDS and not {"-h", "--help"} & set(argv):
        try:
            require_extra(command, *NEEDS[command])
        except CliError as exc:
            print(f"ddrnet {command}: error: {exc}", file=sys.stderr)
            return 2
    args = build_parser(command).parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args._module.run(args) or 0)
    except CliError as exc:
        print(f"ddrnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddrnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
