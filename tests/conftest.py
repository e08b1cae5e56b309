"""Fixtures shared by the test folders. Helpers and fakes live in ``tests.support`` (imported by name,
with the repository root on pytest's ``pythonpath``); what takes long to build is built once per
session here, each in a fresh process so MindSpore's process-wide state stays out of the test process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import runtime_fixtures, server_fixtures


@pytest.fixture(scope="session")
def tiny_version(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A DDRNet-23-slim version at 64x64 (dynamic MindIR, batch-4 MindIR, ONNX, ``model.json``) with
    the network's own logits on real photos (``reference.npy``, ``images.npy``): the runtime and worker
    tests' model."""
    return runtime_fixtures.build_version(str(tmp_path_factory.mktemp("runtime_version")))


@pytest.fixture(scope="session")
def slim_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding a freshly initialised DDRNet-23-slim (10 classes, 64x64, ONNX),
    exported by ``training.export``: the end-to-end server tests' model."""
    return server_fixtures.build_slim_repository(tmp_path_factory.mktemp("slim_repository"))
