"""`ddrnet classify TARGET... --server HOST:PORT [--protocol grpc|http] [--model NAME] [--top-k K]
[--json] [--concurrency N]`: classify image files through a running server.

Targets are image files, folders (searched recursively for image files) and glob patterns (``**``
allowed). Files are sent one per request, ``--concurrency`` at a time, with a progress bar when there
are many. The output is a table (file, rank, label, class index, score) or, with ``--json``, one JSON
object per file and line, in the order given. A file that fails (unreadable, refused by the server)
is reported on its own line (targets that matched nothing first); the exit status is 1 when any
file failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.common import add_connection_arguments, make_async_client, resolve_model, server_address
from cli.errors import CliError

PROGRESS_MIN_FILES = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="+", metavar="TARGET", help="image files, folders or glob patterns")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http", help="default: http")
    add_connection_arguments(parser)
    parser.add_argument("--top-k", type=int, default=None, metavar="K",
                        help="predictions per image (default: the server's, 5)")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    parser.add_argument("--concurrency", type=int, default=4, metavar="N",
                        help="requests in flight (default: 4)")
    parser.add_argument("--retries", type=int, default=3, metavar="N",
                        help="retries of a request refused with 503/UNAVAILABLE (default: 3)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass
class Outcome:
    path: Path
    result: Any = None  # clients.types.ImageResult
    error_kind: str = ""
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        if self.result is not None:
            return {"file": str(self.path), **self.result.to_dict()}
        return {"file": str(self.path), "error": {"kind": self.error_kind, "message": self.error}}


async def classify_files(
    client: Any, files: list[Path], *, model: str, top_k: int | None, concurrency: int, progress: bool
) -> list[Outcome]:
    """Classify ``files`` with ``client`` (an async client); one :class:`Outcome` per file, in order."""
    from clients.errors import ClientError

    slots = asyncio.Semaphore(concurrency)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="img", desc="classify", file=sys.stderr, leave=False)

    async def one(path: Path) -> Outcome:
        async with slots:
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except OSError as exc:
                return Outcome(path, error_kind="unreadable", error=exc.strerror or str(exc))
            try:
                return Outcome(path, result=await client.classify(data, top_k=top_k, model=model))
            except ClientError as exc:
                return Outcome(path, error_kind=exc.kind, error=exc.message)
            finally:
                if bar is not None:
                    bar.update(1)

    try:
        return list(await asyncio.gather(*(one(p) for p in files)))
    finally:
        if bar is not None:
            bar.close()


def format_table(outcomes: list[Outcome]) -> str:
    """A fixed-width table: one row per prediction, the file named on its first row; a failed file
    gets one ``ERROR kind: message`` row."""
    header = ("FILE", "RANK", "LABEL", "INDEX", "SCORE")
    rows: list[tuple[str, ...]] = [header]
    for outcome in outcomes:
        if outcome.result is None:
            rows.append((str(outcome.path), f"ERROR {outcome.error_kind}: {outcome.error}"))
            continue
        for rank, pred in enumerate(outcome.result.predictions, 1):
            name = str(outcome.path) if rank == 1 else ""
            rows.append((name, str(rank), pred.label, str(pred.index), f"{pred.score:.4f}"))
    table = [row for row in rows if len(row) == len(header)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    widths[0] = max(widths[0], *(len(row[0]) for row in rows))
    lines = []
    for row in rows:
        if len(row) != len(header):
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]}")
            continue
        file, rank, label, index, score = row
        lines.append(f"{file:<{widths[0]}}  {rank:>{widths[1]}}  {label:<{widths[2]}}  "
                     f"{index:>{widths[3]}}  {score:>{widths[4]}}")
    return "\n".join(lines)


async def _run(args: argparse.Namespace, files: list[Path], missing: list[str]) -> int:
    from clients.retry import RetryPolicy

    address = server_address(args, args.protocol)
    client = make_async_client(args, args.protocol, retry=RetryPolicy(max_attempts=args.retries + 1))
    try:
        model = await resolve_model(client, args, args.protocol, address)
        progress = not args.no_progress and len(files) >= PROGRESS_MIN_FILES
        outcomes = await classify_files(
            client, files, model=model, top_k=args.top_k, concurrency=args.concurrency, progress=progress
        )
    finally:
        await client.aclose()
    outcomes = [Outcome(Path(t), error_kind="no_such_file", error="no such file, folder or match")
                for t in missing] + outcomes
    if args.json:
        for outcome in outcomes:
            print(json.dumps(outcome.to_json()))
    else:
        print(format_table(outcomes))
    failed = sum(o.result is None for o in outcomes)
    done = len(outcomes) - failed
    version = next((o.result.model_version for o in outcomes if o.result is not None), "?")
    print(f"{done} classified, {failed} failed (model {model} v{version} at {address}, {args.protocol})",
          file=sys.stderr)
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    from clients.payload import expand_targets

    if args.concurrency < 1:
        raise CliError(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.top_k is not None and args.top_k < 1:
        raise CliError(f"--top-k must be >= 1, got {args.top_k}")
    if args.retries < 0:
        raise CliError(f"--retries must be >= 0, got {args.retries}")
    if args.timeout <= 0:
        raise CliError(f"--timeout must be positive, got {args.timeout}")
    files, missing = expand_targets(args.targets)
    if not files:
        raise CliError(f"no image files found in {', '.join(args.targets)}")
    return asyncio.run(_run(args, files, missing))
