"""`ddrnet quickstart` end to end, as the README's first command runs it (slow).

First run, in an empty work directory, with training shortened through ``--set`` (1 epoch of a few
steps; the full-length run and its accuracy are measured in BENCHMARKS.md, "Quickstart"): it writes
the data, trains, exports, serves and prints its try lines. The printed ``curl`` line and the printed
``ddrnet classify`` line are run as printed and must answer with predictions; SIGTERM then drains the
server and the quickstart exits 0. Second run on the same work directory: no data or training step,
the published version is reused, served, and answers again; Ctrl-C (SIGINT to the process group)
stops it with exit status 0. A SIGTERM while the model is being built stops the running step too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
READY_LINE = "Press Ctrl-C to stop."
SHORT_TRAINING = ["--set", "epochs=1", "--set", "max_steps_per_epoch=3", "--set", "log_every_steps=1"]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddrnet() -> list[str]:
    """The `ddrnet` console script of this venv (what the README's PATH line finds)."""
    script = Path(sys.executable).parent / "ddrnet"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cli.main"]


class Quickstart:
    """`ddrnet quickstart` as a child process in its own session; its output collected line by line."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.http_port, self.grpc_port = _free_port(), _free_port()
        argv = [*_ddrnet(), "quickstart", "--workdir", str(workdir), "--http-port", str(self.http_port),
                "--grpc-port", str(self.grpc_port), *extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.env = env
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # universal newlines: progress-bar updates (\r) are lines too
            self.lines.append(line.rstrip("\n"))
            if READY_LINE in line:
                self._ready.set()
        self._ready.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout_s: float) -> None:
        if not self._ready.wait(timeout_s) or self.proc.poll() is not None:
            pytest.fail(f"quickstart did not become ready (exit {self.proc.poll()}):\n{self.output[-4000:]}")

    def try_line(self, program: str) -> str:
        """The printed 'Try:' line starting with ``program``."""
        for line in self.lines:
            if line.strip().startswith(program + " "):
                return line.strip()
        pytest.fail(f"quickstart printed no {program} line:\n{self.output[-3000:]}")

    def terminate(self, timeout_s: float = 90, ctrl_c: bool = False) -> int:
        """SIGTERM to the quickstart alone (it forwards it to the server), or with ``ctrl_c`` SIGINT to
        the whole process group, as a terminal's Ctrl-C does; the exit status."""
        if ctrl_c:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"quickstart did not exit within {timeout_s} s of SIGTERM:\n{self.output[-3000:]}")

    def kill(self) -> None:
        """SIGKILL whatever is left of the quickstart's process group (steps it left behind included)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def _run_curl_line(line: str, http_port: int) -> dict:
    """The printed curl line: with curl when installed, else the same request with urllib."""
    argv = shlex.split(line)
    assert argv[0] == "curl" and f"127.0.0.1:{http_port}" in line
    if shutil.which("curl"):
        proc = subprocess.run(["curl", "--fail-with-body", *argv[1:]], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
        return json.loads(proc.stdout)
    image = next(w[1:] for w in argv if w.startswith("@"))
    content_type = argv[argv.index("-H") + 1].split(":", 1)[1].strip()
    request = urllib.request.Request(argv[-1], data=Path(image).read_bytes(), method="POST",
                                     headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _check_answer(answer: dict) -> None:
    assert answer["model_name"] == "digits"
    predictions = answer["results"][0]["predictions"]
    assert predictions and {"label", "index", "score"} <= set(predictions[0])
    assert predictions[0]["label"] in [str(d) for d in range(10)]


def test_quickstart_builds_serves_and_reuses(tmp_path) -> None:
    workdir = tmp_path / "demo"

    first = Quickstart(workdir, *SHORT_TRAINING)
    try:
        first.wait_ready(timeout_s=600)
        out = first.output
        steps = ("==> writing the digits data set", "==> training DDRNet-23-slim",
                 "==> exporting a verified model version", "ddrnet-serve is ready, serving model 'digits'")
        for step in steps:
            assert step in out, f"missing {step!r}:\n{out[-3000:]}"
        assert (workdir / "models" / "digits" / "1" / "model.json").is_file()

        _check_answer(_run_curl_line(first.try_line("curl"), first.http_port))

        classify = shlex.split(first.try_line("ddrnet classify"))
        assert f"127.0.0.1:{first.grpc_port}" in classify
        proc = subprocess.run([*_ddrnet(), *classify[1:]], capture_output=True, text=True, timeout=120,
                              env=first.env)
        assert proc.returncode == 0, proc.stderr
        image = classify[2]
        rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(image)]
        assert rows and rows[0][2] in [str(d) for d in range(10)], proc.stdout  # FILE RANK LABEL INDEX SCORE
        assert "1 classified, 0 failed (model digits v1" in proc.stderr

        assert first.terminate() == 0, first.output[-3000:]
    finally:
        first.kill()

    started = time.monotonic()
    second = Quickstart(workdir)
    try:
        second.wait_ready(timeout_s=300)
        out = second.output
        assert f"==> reusing {workdir / 'models' / 'digits' / '1'}" in out
        assert not re.search(r"==> (writing|training|exporting)", out), out[-3000:]
        _check_answer(_run_curl_line(second.try_line("curl"), second.http_port))
        print(f"second run ready and answering after {time.monotonic() - started:.1f} s")
        assert second.terminate(ctrl_c=True) == 0, second.output[-3000:]
    finally:
        second.kill()
    assert not (workdir / "models" / "digits" / "2").exists()


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_sigterm_during_training_stops_the_training_step(tmp_path) -> None:
    workdir = tmp_path / "demo"
    quickstart = Quickstart(workdir, "--set", "epochs=1")
    try:
        deadline = time.monotonic() + 300
        while "==> training" not in quickstart.output and quickstart.proc.poll() is None:
            assert time.monotonic() < deadline, quickstart.output[-3000:]
            time.sleep(0.2)
        quickstart.proc.send_signal(signal.SIGTERM)
        assert quickstart.proc.wait(timeout=90) != 0
        assert "interrupted" in quickstart.output
        assert not _processes_mentioning(str(workdir)), "a step of the quickstart outlived it"
    finally:
        quickstart.kill()
