"""A venv with ``tritonclient[grpc]`` for tests that drive the server with Triton's gRPC client: it needs
protobuf < 7, which the project's venv (MindSpore) cannot hold (ARCHITECTURE.md), so the client runs
in that venv in a subprocess. Built once under ``.cache/`` from the package registry."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.server_fixtures import REPO_ROOT

TRITON_VENV = REPO_ROOT / ".cache" / "venv-tritongrpc"


def triton_grpc_python() -> str:
    """The Python of a venv with tritonclient[grpc] (needs protobuf < 7, which MindSpore's venv cannot
    hold: ARCHITECTURE.md), built once under .cache/ from the package registry."""
    python = TRITON_VENV / "bin" / "python"
    probe = [str(python), "-c", "import tritonclient.grpc, numpy"]
    if python.exists() and subprocess.run(probe, capture_output=True, timeout=120).returncode == 0:
        return str(python)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(TRITON_VENV)], check=True,
                       capture_output=True, timeout=300)
        pip = [str(TRITON_VENV / "bin" / "pip"), "install", "-q", "tritonclient[grpc]>=2.40,<3", "numpy<2"]
        install = subprocess.run(pip, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot build the tritonclient[grpc] venv at {TRITON_VENV}: {exc}")
    if install.returncode != 0 or subprocess.run(probe, capture_output=True, timeout=120).returncode != 0:
        pytest.skip(f"cannot install tritonclient[grpc] into {TRITON_VENV} (no package registry?): "
                    f"{install.stderr[-500:]}")
    return str(python)
