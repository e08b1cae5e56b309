"""`ddrnet quickstart`: serve the digits demo model, building it first when the repository has none.

The first run writes scikit-learn's digits as an ImageNet-style folder, trains DDRNet-23-slim on it
with ``training/configs/digits_demo.yaml`` (progress bar), exports a verified version into
``<workdir>/models/digits``, then starts ``ddrnet serve`` and prints the URLs with one ``curl`` and
one ``ddrnet classify`` line to try. Later runs find the published version and serve it at once.
Each step is the same ``ddrnet`` subcommand a user would type, run as a child process, so the
quickstart exercises exactly what the README documents.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from cli.errors import CliError

MODEL_NAME = "digits"
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "training" / "configs" / "digits_demo.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, default=Path("demo"),
                        help="where data, the training run and the model repository live (default ./demo)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--rebuild", action="store_true",
                        help="train and export a new version even when one exists")
    parser.add_argument("--build-only", action="store_true", help="build the model, do not serve")
    parser.add_argument("--ready-timeout-s", type=float, default=600.0,
                        help="how long to wait for the server to become ready (default 600)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the demo training config (repeatable), passed to "
                             "`ddrnet train`, e.g. --set epochs=1 --set max_steps_per_epoch=4")


def _ddrnet(*args: str) -> list[str]:
    """The command line of a `ddrnet` subcommand in this very interpreter."""
    return [sys.executable, "-m", "cli.main", *args]


def _step(title: str, command: list[str]) -> None:
    print(f"==> {title}", flush=True)
    child = subprocess.Popen(command)
    try:
        returncode = child.wait()
    finally:
        if child.poll() is None:  # interrupted: a SIGTERM reaches this process only, not the step
            child.terminate()
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
    if returncode != 0:
        raise CliError(f"{title} failed (exit {returncode}): {' '.join(command[2:])}")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def newest_version(repository: Path) -> int | None:
    from model.repository import newest_complete_version

    if not (repository / MODEL_NAME).is_dir():
        return None
    return newest_complete_version(repository, MODEL_NAME)


def build_demo_model(workdir: Path, overrides: list[str] | None = None) -> int:
    """Data set → training run → verified export; returns the published version number.

    ``overrides`` are extra ``KEY=VALUE`` settings for ``ddrnet train`` (after the data and run
    directories, so they win)."""
    data_dir = workdir / "data" / "digits"
    run_dir = workdir / "run"
    repository = workdir / "models"
    if not (data_dir / "labels.txt").is_file():
        _step("writing the digits data set", _ddrnet("data", "digits", str(data_dir), "--force"))
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    if not _training_finished(run_dir):
        _step(
            "training DDRNet-23-slim on digits (about 2 minutes on 2 idle cores, longer on busy ones)",
            _ddrnet("train", "--config", str(DEMO_CONFIG), "--set", f"data_url={data_dir}",
                    "--set", f"output_dir={run_dir}", *(a for kv in overrides or () for a in ("--set", kv)),
                    *(["--resume"] if checkpoint.is_file() else [])),
        )
    _step(
        "exporting a verified model version",
        _ddrnet("export", "--run-dir", str(run_dir), "--repository", str(repository), "--name", MODEL_NAME),
    )
    version = newest_version(repository)
    if version is None:
        raise CliError(f"export finished but {repository / MODEL_NAME} holds no complete version")
    return version


def _training_finished(run_dir: Path) -> bool:
    """True when the run directory records a completed training run with a best checkpoint."""
    from training.run_info import RunInfoError, read_run_info

    try:
        info = read_run_info(run_dir)
    except RunInfoError:
        return False
    best = run_dir / info.checkpoint_best if info.checkpoint_best else None
    return info.stats.get("status") == "finished" and best is not None and best.is_file()


def sample_image(workdir: Path) -> Path | None:
    val = workdir / "data" / "digits" / "val"
    return next(iter(sorted(val.glob("*/*.jpg"))), None)


def _wait_ready(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise CliError(f"the server exited with status {server.returncode} before becoming ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise CliError(f"the server was not ready within {timeout_s:.0f} s ({url})")


def print_try_lines(host: str, http_port: int, grpc_port: int, image: Path | None) -> None:
    base = f"http://{host}:{http_port}"
    picture = str(image) if image else "IMAGE.jpg"
    print(
        f"\nddrnet-serve is ready, serving model '{MODEL_NAME}'.\n"
        f"  HTTP    {base}   (API docs: {base}/docs, metrics: {base}/metrics)\n"
        f"  gRPC    {host}:{grpc_port}\n\n"
        "Try:\n"
        f"  curl -s -X POST -H 'Content-Type: image/jpeg' --data-binary @{picture} "
        f"{base}/v1/models/{MODEL_NAME}/classify\n"
        f"  ddrnet classify {picture} --server {host}:{grpc_port} --protocol grpc --model {MODEL_NAME}\n\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )


def run(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir.resolve()
    repository = workdir / "models"
    signal.signal(signal.SIGTERM, _interrupt)  # while building: stop the running step, then exit
    version = None if args.rebuild else newest_version(repository)
    if version is None:
        version = build_demo_model(workdir, args.overrides)
    else:
        print(f"==> reusing {repository / MODEL_NAME / str(version)} (--rebuild makes a new version)")
    if args.build_only:
        return 0

    server = subprocess.Popen(_ddrnet(
        "serve", "--model-repository", str(repository), "--models", MODEL_NAME,
        "--http-host", args.host, "--http-port", str(args.http_port),
        "--grpc-host", args.host, "--grpc-port", str(args.grpc_port),
        "--log-level", "warning",  # keep the ready lines below readable; the server logs warnings
    ))
    # Forward a SIGTERM to the server so it drains; Ctrl-C reaches it through the process group.
    signal.signal(signal.SIGTERM, lambda *_: server.send_signal(signal.SIGTERM))
    try:
        _wait_ready(f"http://{args.host}:{args.http_port}/v2/health/ready", server, args.ready_timeout_s)
        print_try_lines(args.host, args.http_port, args.grpc_port, sample_image(workdir))
        return server.wait()
    except KeyboardInterrupt:
        return server.wait()
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
