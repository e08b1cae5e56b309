"""The placement rule (inference.placement.derive_placement, applied by server.settings): on a CPU one
instance with every core as threads (more instances past MAX_DEFAULT_THREADS cores), one single-threaded
instance per core for a Lite 2.0 worker under runtime_python, one instance with every core on
accelerators, and explicit values win with the rest derived from them."""

from __future__ import annotations

import sys

import pytest

from inference import placement as placement_module
from inference.placement import MAX_DEFAULT_INSTANCES, MAX_DEFAULT_THREADS
from server.settings import ServerSettings


@pytest.fixture
def cores(monkeypatch):
    def set_cores(n: int) -> None:
        monkeypatch.setattr(placement_module, "available_cores", lambda: n)

    return set_cores


def _placement(tmp_path, **kw) -> tuple[int | None, int | None, int | None]:
    s = ServerSettings(model_repository=tmp_path, **kw)
    return s.instances, s.threads_per_instance, s.preprocess_workers


def test_cpu_default_is_one_instance_with_every_core(cores, tmp_path):
    cores(2)
    assert _placement(tmp_path) == (1, 2, 2)
    cores(1)
    assert _placement(tmp_path) == (1, 1, 1)
    cores(MAX_DEFAULT_THREADS)
    assert _placement(tmp_path) == (1, MAX_DEFAULT_THREADS, MAX_DEFAULT_THREADS)


def test_many_cores_are_split_into_instances_of_at_most_max_threads(cores, tmp_path):
    cores(12)
    assert _placement(tmp_path) == (2, 6, 12)
    cores(32)
    assert _placement(tmp_path) == (4, 8, 32)
    cores(1000)
    assert _placement(tmp_path)[0] == MAX_DEFAULT_INSTANCES


def test_a_worker_under_runtime_python_gets_one_single_threaded_instance_per_core(cores, tmp_path):
    cores(2)
    assert _placement(tmp_path, runtime_python=sys.executable) == (2, 1, 2)
    cores(32)
    assert _placement(tmp_path, runtime_python=sys.executable) == (MAX_DEFAULT_INSTANCES, 32 // 8, 32)


def test_accelerators_get_one_instance_with_every_core(cores, tmp_path):
    cores(4)
    assert _placement(tmp_path, device="gpu") == (1, 4, 4)


def test_explicit_values_win_and_the_rest_is_derived(cores, tmp_path):
    cores(4)
    assert _placement(tmp_path, threads_per_instance=2) == (2, 2, 4)
    assert _placement(tmp_path, instances=2) == (2, 2, 4)
    assert _placement(tmp_path, instances=4) == (4, 1, 4)
    assert _placement(tmp_path, instances=3, threads_per_instance=5, preprocess_workers=7) == (3, 5, 7)
    assert _placement(tmp_path, threads_per_instance=8) == (1, 8, 4)
