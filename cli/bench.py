"""`ddrnet bench`: load-test a running server and compare with the raw runtime, in one run.

    ddrnet bench --server 127.0.0.1:8001 --protocol grpc,http --http-server 127.0.0.1:8000 \\
        --model digits --concurrency 1,4,16,32 --warmup-s 2 --measure-s 10 \\
        --raw --model-repository models --json bench.json --plot bench.png

Closed loop at each ``--concurrency`` (a sweep), or open loop at each ``--request-rate``; payload =
real image files (``--images``; default: the sample photos shipped with scikit-learn and
scikit-image), ``--batch-size`` images per request. Per level: throughput (img/s), p50/p90/p95/p99
latency, errors by kind, the bench's own CPU per request, and the server-side split (queue,
preprocess, inference, mean batch size, instance busy) read from ``/metrics`` (the HTTP address, or
``--metrics-url``). ``--raw`` then measures the same model version with the server's runtime at
``--raw-batch-sizes``, and the preprocessing cost per image of the same payload:
``L = 1 / (model ms/img at the best batch + preprocess ms/img)``, and every level's served ÷ L.
L is per precision: ``--raw-precisions`` (default: every precision the version was verified for)
are each measured with the runtime ``auto`` picks for them, the served one (``--precision``) with
the server's runtime; ÷ L compares with the served precision's L.
The raw model time is measured for the server's placement (``--instances`` × ``--threads``;
default: what ``ddrnet serve`` derives on this machine) and for every ``--raw-placements`` entry
(default: 1 × CORES and CORES × 1; 1 × 1 under ``--runtime-python``, whose Lite 2.0 runs one
thread), one instance in this process, N instances at once in worker processes; L takes the
fastest placement, so it is the machine's limit and not one configuration's. Output: a table;
``--json FILE``; ``--plot FILE`` (throughput vs p99 latency, PNG).
The bench talks only to the addresses it is given and every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from cli.common import DEFAULT_PORTS, add_connection_arguments, make_async_client, transport
from cli.errors import CliError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", default="grpc", metavar="P[,P...]",
                        help="grpc, http, oip-grpc, oip-http, or several comma-separated (default: grpc)")
    parser.add_argument("--server", metavar="HOST:PORT",
                        help="address for the first protocol's transport (default 127.0.0.1:8001 "
                             "for gRPC, 127.0.0.1:8000 for HTTP)")
    parser.add_argument("--http-server", metavar="HOST:PORT",
                        help="HTTP address (HTTP protocols and /metrics)")
    parser.add_argument("--grpc-server", metavar="HOST:PORT", help="gRPC address (gRPC protocols)")
    parser.add_argument("--metrics-url", metavar="URL",
                        help="Prometheus endpoint for the server-side split "
                             "(default: http://HTTP-ADDRESS/metrics)")
    add_connection_arguments(parser, with_server=False)
    load = parser.add_argument_group("load")
    load.add_argument("--concurrency", metavar="N[,N...]",
                      help="closed loop: requests in flight, a sweep when several (default: 1,4,16,32)")
    load.add_argument("--request-rate", metavar="R[,R...]", help="open loop: requests per second instead")
    load.add_argument("--request-distribution", choices=("constant", "poisson"), default="constant",
                      help="open loop arrival times (default: constant)")
    load.add_argument("--max-outstanding", type=int, default=1024, metavar="N",
                      help="open loop: most requests in flight; beyond that a request is skipped "
                           "(counted as client_backlog)")
    load.add_argument("--batch-size", type=int, default=1, metavar="B",
                      help="images per request (default: 1)")
    load.add_argument("--images", nargs="+", metavar="PATH",
                      help="payload image files, folders or globs (default: the scikit-learn/scikit-image "
                           "sample photos)")
    load.add_argument("--warmup-s", type=float, default=2.0, metavar="S",
                      help="warm-up per level (default: 2)")
    load.add_argument("--measure-s", type=float, default=5.0, metavar="S",
                      help="measurement window per level (default: 5)")
    raw = parser.add_argument_group("raw runtime (--raw)")
    raw.add_argument("--raw", action="store_true",
                     help="also measure the runtime in-process and the preprocessing cost "
                          "(needs --model-repository)")
    raw.add_argument("--model-repository", metavar="DIR", type=Path, help="the repository the server serves")
    raw.add_argument("--runtime", default=None, metavar="NAME",
                     help="runtime for --raw (default: the one the server reports for the model)")
    raw.add_argument("--threads", type=int, default=None, metavar="N",
                     help="threads per instance the server runs (default: the server's default, "
                          "cores / instances)")
    raw.add_argument("--instances", type=int, default=None, metavar="N",
                     help="instances the server runs (default: what `ddrnet serve` derives on this "
                          "machine)")
    raw.add_argument("--raw-placements", default=None, metavar="NxT[,NxT...]",
                     help="more instances x threads placements to measure; L uses the fastest "
                          "(default: 1xCORES and CORESx1 besides the server's placement; 1x1 with "
                          "--runtime-python)")
    raw.add_argument("--precision", choices=("fp32", "bf16", "fp16", "int8"), default="fp32",
                     help="the server's --precision: ÷L compares with this precision's L (default: fp32)")
    raw.add_argument("--raw-precisions", default="all", metavar="P[,P...]",
                     help="precisions --raw measures, each with the runtime auto picks for it (the served "
                          "one with the server's runtime); default all: every precision the version was "
                          "verified for")
    raw.add_argument("--device", choices=("cpu", "gpu", "ascend"), default="cpu",
                     help="the server's --device, for --raw (default: cpu)")
    raw.add_argument("--raw-batch-sizes", default="1,2,4,8", metavar="B[,B...]", help="default: 1,2,4,8")
    raw.add_argument("--raw-s", type=float, default=2.0, metavar="S",
                     help="seconds per raw batch size and for preprocessing (default: 2)")
    raw.add_argument("--runtime-python", metavar="PYTHON",
                     help="measure in a worker process under this interpreter "
                          "(e.g. a Python 3.7 venv with Lite)")
    parser.add_argument("--json", dest="json_file", metavar="FILE", type=Path,
                        help="write every figure as JSON")
    parser.add_argument("--plot", metavar="FILE", type=Path, help="write a PNG of throughput vs p99 latency")


# -- option checks ----------------------------------------------------------------------------------------


def _int_list(text: str, option: str) -> list[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise CliError(f"{option} must be positive integers separated by commas, got {text!r}")
    return [int(p) for p in parts]


def _protocols(text: str) -> list[str]:
    from ops.bench import PROTOCOLS

    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in PROTOCOLS]
    if not names or bad:
        shown = ", ".join(bad) or "empty"
        raise CliError(f"--protocol: unknown {shown} (choose from {', '.join(PROTOCOLS)})")
    return names


def _addresses(args: argparse.Namespace, protocols: list[str]) -> dict[str, str | None]:
    """Address per transport: ``--server`` goes to the first protocol's transport."""
    out: dict[str, str | None] = {"http": args.http_server, "grpc": args.grpc_server}
    first = transport(protocols[0])
    if args.server:
        if out[first] and out[first] != args.server:
            raise CliError(f"--server and --{first}-server name different addresses")
        out[first] = args.server
    for kind in ("http", "grpc"):
        if out[kind] is None and not args.server:
            out[kind] = f"127.0.0.1:{DEFAULT_PORTS[kind]}"
    for protocol in protocols:
        if out[transport(protocol)] is None:
            kind = transport(protocol)
            raise CliError(
                f"--protocol {protocol} needs the server's {kind} address: add --{kind}-server HOST:PORT"
            )
    return out


def _payload(args: argparse.Namespace) -> tuple[list[Path], list[bytes]]:
    from clients.payload import expand_targets
    from model.samples import sample_photos

    if args.images:
        files, missing = expand_targets(args.images)
        if missing:
            raise CliError(f"--images: nothing found at {', '.join(missing)}")
    else:
        files = sample_photos()
    if not files:
        raise CliError("no payload images: pass --images FILES/FOLDERS/GLOBS")
    try:
        return files, [p.read_bytes() for p in files]
    except OSError as exc:
        raise CliError(f"cannot read payload image {exc.filename}: {exc.strerror}") from None


# -- the run -------------------------------------------------------------------------------------------


async def _served(args: argparse.Namespace, protocols: list[str], addresses: dict[str, str | None],
                  payload: list[bytes], levels: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    import httpx

    from cli.common import resolve_model
    from clients.retry import NO_RETRY
    from ops.bench import make_sender, run_level

    metrics_url = args.metrics_url or (f"http://{addresses['http']}/metrics" if addresses["http"] else None)
    if metrics_url and "://" not in metrics_url:
        metrics_url = f"http://{metrics_url}"
    results = []
    info: dict[str, Any] = {"metrics_url": metrics_url}
    async with httpx.AsyncClient(timeout=10.0) as scraper:

        async def scrape() -> str:
            response = await scraper.get(metrics_url)
            response.raise_for_status()
            return response.text

        can_scrape = metrics_url is not None
        for protocol in protocols:
            address = addresses[transport(protocol)]
            client = make_async_client(args, protocol, server=address, retry=NO_RETRY)
            try:
                model = await resolve_model(client, args, protocol, address)
                if "model" not in info:
                    meta = await client.model_metadata(model)
                    info.update(model=model, version=(meta.get("versions") or [""])[0],
                                platform=meta.get("platform", ""))
                    if can_scrape:
                        try:
                            await scrape()
                        except httpx.HTTPError as exc:
                            log.warning("no server-side split: cannot read %s (%s)", metrics_url, exc)
                            print(f"ddrnet bench: warning: cannot read {metrics_url}: no server-side split",
                                  file=sys.stderr)
                            can_scrape = False
                send = make_sender(client, protocol, payload, args.batch_size)
                for level in levels:
                    print(f"ddrnet bench: {protocol} {level.label}: warm-up {args.warmup_s:g} s, "
                          f"measuring {args.measure_s:g} s", file=sys.stderr, flush=True)
                    result = await run_level(
                        send, level, protocol=protocol, warmup_s=args.warmup_s, measure_s=args.measure_s,
                        drain_s=args.timeout + 1.0, scrape=scrape if can_scrape else None, model=model,
                        max_outstanding=args.max_outstanding,
                    )
                    results.append(result)
            finally:
                await client.aclose()
    return results, info


def _placement_list(text: str) -> list[tuple[int, int]]:
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        n, sep, t = part.partition("x")
        if not sep or not (n.isdigit() and t.isdigit()) or int(n) < 1 or int(t) < 1:
            raise CliError(f"--raw-placements must be INSTANCESxTHREADS entries like 2x1,1x2, got {part!r}")
        out.append((int(n), int(t)))
    if not out:
        raise CliError(f"--raw-placements must be INSTANCESxTHREADS entries like 2x1,1x2, got {text!r}")
    return out


def raw_placements(args: argparse.Namespace) -> list[tuple[int, int]]:
    """The server's placement first (derived like ``ddrnet serve`` derives it), then the others."""
    from inference.placement import available_cores, derive_placement

    for option, value in (("--instances", args.instances), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise CliError(f"{option} must be at least 1, got {value}")
    cores = available_cores()
    server = derive_placement(device=args.device, single_threaded=bool(args.runtime_python),
                              instances=args.instances, threads_per_instance=args.threads, cores=cores)
    placements = [(server.instances, server.threads_per_instance)]
    # A worker under --runtime-python is PyPI's Lite 2.0, which runs one thread whatever it is asked:
    # "1 x CORES" would be one thread under another name.
    alternatives = [(1, 1)] if args.runtime_python else [(1, cores), (cores, 1)]
    extra = _placement_list(args.raw_placements) if args.raw_placements else alternatives
    placements += [p for p in extra if p not in placements]
    return placements


def _raw_precisions(args: argparse.Namespace, info: dict[str, Any]) -> list[str]:
    """The served precision first, then the others asked for (all: those the version was verified for)."""
    from inference.precision import PRECISIONS
    from ops import bench_raw

    if args.raw_precisions.strip().lower() == "all":
        try:
            wanted = bench_raw.version_precisions(args.model_repository, info["model"],
                                                  info.get("version") or None)
        except ValueError as exc:
            raise CliError(f"--raw: {exc}") from None
    else:
        wanted = [p.strip().lower() for p in args.raw_precisions.split(",") if p.strip()]
        unknown = [p for p in wanted if p not in PRECISIONS]
        if unknown or not wanted:
            raise CliError(f"--raw-precisions: unknown {unknown or args.raw_precisions!r}: choose from "
                           f"{','.join(PRECISIONS)} or all")
    return list(dict.fromkeys([args.precision, *wanted]))


def _raw(args: argparse.Namespace, info: dict[str, Any], payload: list[bytes],
         placements: list[tuple[int, int]]) -> list[Any]:
    from inference.errors import ServingError
    from ops import bench_raw

    served_runtime = args.runtime or info.get("platform") or "auto"
    sizes = _int_list(args.raw_batch_sizes, "--raw-batch-sizes")
    shown = ", ".join(f"{n} x {t}" for n, t in placements)
    out = []
    for precision in _raw_precisions(args, info):
        runtime = served_runtime if precision == args.precision else "auto"
        print(f"ddrnet bench: raw {runtime} {precision}, instances x threads {shown}, at batch sizes "
              f"{sizes}, {args.raw_s:g} s each, and preprocessing", file=sys.stderr, flush=True)
        try:
            out += bench_raw.measure_placements(
                args.model_repository, info["model"], payload, placements,
                version=info.get("version") or None, runtime=runtime, batch_sizes=sizes, seconds=args.raw_s,
                runtime_python=args.runtime_python if precision == args.precision else None,
                precision=precision, device=args.device,
            )
        except (ValueError, OSError) as exc:
            raise CliError(f"--raw: {exc}") from None
        # RuntimeUnavailableError, ModelFileError; a worker that failed to start (ServingError) names it
        except (RuntimeError, ServingError) as exc:
            raise CliError(f"--raw: runtime {runtime}, precision {precision}: {exc}") from None
    return out


def run(args: argparse.Namespace) -> int:
    from ops.bench import parse_levels
    from ops.bench_report import best_raw, format_report, write_plot

    protocols = _protocols(args.protocol)
    try:
        levels = parse_levels(args.concurrency or (None if args.request_rate else "1,4,16,32"),
                              args.request_rate, args.request_distribution)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    for name in ("warmup_s", "measure_s", "raw_s"):
        value = getattr(args, name)
        if not (0 <= value <= 3600) or (name != "warmup_s" and value == 0):
            raise CliError(f"--{name.replace('_', '-')} must be in (0, 3600] seconds, got {value}")
    if args.batch_size < 1 or args.max_outstanding < 1 or args.timeout <= 0:
        raise CliError("--batch-size, --max-outstanding and --timeout must be positive")
    if args.raw:
        if args.model_repository is None:
            raise CliError("--raw needs --model-repository DIR (the repository the server serves)")
        if not args.model_repository.is_dir():
            raise CliError(f"--model-repository {args.model_repository} is not a directory")
        _int_list(args.raw_batch_sizes, "--raw-batch-sizes")
    addresses = _addresses(args, protocols)
    files, payload = _payload(args)

    placements = raw_placements(args) if args.raw else []  # a bad one fails before the load test
    results, info = asyncio.run(_served(args, protocols, addresses, payload, levels))
    raws = _raw(args, info, payload, placements) if args.raw else []
    raw = best_raw(raws, args.precision)
    print(format_report(results, raws, info, args.precision))

    report: dict[str, Any] = {
        "server": {k: v for k, v in addresses.items() if v},
        **info,
        "payload": {"images": [str(p) for p in files], "batch_size": args.batch_size},
        "warmup_s": args.warmup_s,
        "measure_s": args.measure_s,
        "levels": [r.to_dict() for r in results],
        "precision": args.precision,
        "raw": raw.to_dict() if raw is not None else None,
        "limit_img_s_by_precision": {
            p: best_raw(raws, p).limit_img_s for p in dict.fromkeys(r.precision for r in raws)
        },
        "raw_placements": [r.to_dict() for r in raws],
    }
    if raw is not None:
        for entry, r in zip(report["levels"], results, strict=True):
            entry["served_over_L"] = round(r.throughput / raw.limit_img_s, 4)
            entry["served_over_model_raw"] = round(r.throughput * raw.model_ms_per_image / 1000.0, 4)
    if args.json_file is not None:
        args.json_file.parent.mkdir(parents=True, exist_ok=True)
        args.json_file.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot is not None:
        write_plot(args.plot, results, raw)
    return 0
