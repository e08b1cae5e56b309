"""The serving install: the server, the clients and the serving tools run where ``import mindspore`` fails
(and scikit-learn, matplotlib, onnx are absent), as in the serving image; what needs the ``train`` or
``mindspore`` extra says so with the pip line. The interpreter is made a serving install by
``tests/support/no_mindspore/sitecustomize.py`` first on PYTHONPATH (imports and ``find_spec`` of those
packages fail as if they were not installed). The image itself is built and run by
``benchmarks/docker_images.sh``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import server_fixtures as sf

BLOCKER = Path(__file__).resolve().parents[1] / "support" / "no_mindspore"
SERVING_PATH = f"{BLOCKER}{os.pathsep}{sf.REPO_ROOT}"


def _serving_python(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA",
                                                            "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION")}
    env["PYTHONPATH"] = SERVING_PATH
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=sf.REPO_ROOT)


def test_the_blocker_makes_a_serving_install() -> None:
    done = _serving_python("-c", "import importlib.util as u; assert u.find_spec('onnxruntime'); "
                                 "print(u.find_spec('mindspore'))")
    assert done.returncode != 0 and "No module named 'mindspore'" in done.stderr


def test_serving_modules_import_without_the_training_stack() -> None:
    code = ("import sys, server.app, clients, ops.bench, ops.bench_raw, ops.predict, cli.serve, cli.bench, "
            "cli.classify, cli.predict\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('mindspore', 'sklearn', 'matplotlib', "
            "'onnx', 'training')]\n"
            "assert not heavy, heavy\n")
    done = _serving_python("-c", code)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--config", "x.yaml"], "needs mindspore, which this install lacks"),
        (["export", "--repository", "r", "--name", "m"], "needs mindspore, onnx, which this install lacks"),
        (["convert", "--pth", "a.pth"], "needs mindspore"),
        (["data", "digits", "out"], "needs sklearn"),
        (["quickstart"], "needs mindspore, sklearn"),
        (["eval", "--config", "c.yaml", "--checkpoint", "c.ckpt"], "needs mindspore"),
        (["runs", "compare", "run"], "needs matplotlib"),
    ],
)
def test_training_commands_name_the_extra(argv: list[str], message: str) -> None:
    done = _serving_python("-m", "cli.main", *argv)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "pip install 'ddrnet-serve[train]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_runtime_mindspore_names_its_extra(tmp_path: Path) -> None:
    done = _serving_python("-m", "cli.main", "serve", "--model-repository", str(tmp_path), "--runtime",
                           "mindspore")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "runtime 'mindspore' needs the 'mindspore' package" in done.stderr
    assert "pip install 'ddrnet-serve[mindspore]'" in done.stderr


@pytest.mark.slow
def test_server_answers_http_and_grpc_without_mindspore(slim_repository: Path, tmp_path: Path) -> None:
    from clients import GrpcClient, HttpClient

    server = sf.ServerProcess(slim_repository, tmp_path / "server.log", "--instances", "1",
                              "--threads-per-instance", "1", env={"PYTHONPATH": SERVING_PATH}).start()
    try:
        image = sf.photos()[0]
        with HttpClient(server.http_url.removeprefix("http://")) as http:
            by_http = http.classify(image, model="slim", top_k=3)
        with GrpcClient(server.grpc_target) as grpc:
            by_grpc = grpc.classify(image, model="slim", top_k=3)
        assert [p.index for p in by_http.predictions] == [p.index for p in by_grpc.predictions]
        assert len(by_http.predictions) == 3
        maps = Path(f"/proc/{server.pid}/maps").read_text()
        assert "mindspore" not in maps  # not a library of it mapped into the server process
        assert "Traceback" not in server.log_tail()
    finally:
        server.kill()
