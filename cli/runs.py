"""`ddrnet runs`: look at training runs without a server.

  ddrnet runs compare RUN_DIR [RUN_DIR ...] [--output compare.png] [--title TEXT]

``compare`` draws the runs' loss, learning rate, train img/s and val top-1/top-5 by epoch on one
figure (each run one colour; ``training.curves``) and prints their summary table: epochs, best and
last top-1, last top-5 and loss, median img/s, minutes. Every run also keeps its own ``curves.png``,
redrawn after each epoch by ``ddrnet train``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.errors import CliError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="runs_command", metavar="ACTION")
    sub.required = True
    compare = sub.add_parser("compare", help="several runs on one figure, and their summary table")
    compare.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="training run directories")
    compare.add_argument("--output", type=Path, default=Path("compare.png"), help="PNG to write")
    compare.add_argument("--title", help="figure title (default: the run names)")


def run(args: argparse.Namespace) -> int:
    from training.curves import CurvesError, draw, format_table, read_log, summary

    try:
        runs = [read_log(d) for d in args.run_dirs]
    except CurvesError as exc:
        raise CliError(str(exc)) from None
    if args.output.suffix.lower() != ".png":
        raise CliError(f"--output must be a .png file, got {args.output}")
    print(format_table([summary(r) for r in runs]))
    path = draw(runs, args.output, title=args.title)
    print(f"wrote {path}")
    return 0
