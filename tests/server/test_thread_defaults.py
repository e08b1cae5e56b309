"""server.settings.derive_defaults: one single-threaded instance per core on CPU (capped), one
instance with every core on accelerators, and explicit values win with the rest derived from them."""

from __future__ import annotations

import pytest

from server import settings as settings_module
from server.settings import MAX_DEFAULT_INSTANCES, ServerSettings


@pytest.fixture
def cores(monkeypatch):
    def set_cores(n: int) -> None:
        monkeypatch.setattr(settings_module, "available_cores", lambda: n)

    return set_cores


def _placement(tmp_path, **kw) -> tuple[int | None, int | None, int | None]:
    s = ServerSettings(model_repository=tmp_path, **kw)
    return s.instances, s.threads_per_instance, s.preprocess_workers


def test_cpu_default_is_one_single_threaded_instance_per_core(cores, tmp_path):
    cores(2)
    assert _placement(tmp_path) == (2, 1, 2)
    cores(1)
    assert _placement(tmp_path) == (1, 1, 1)


def test_default_instances_are_capped_and_leftover_cores_become_threads(cores, tmp_path):
    cores(32)
    assert _placement(tmp_path) == (MAX_DEFAULT_INSTANCES, 32 // MAX_DEFAULT_INSTANCES, 32)


def test_accelerators_get_one_instance_with_every_core(cores, tmp_path):
    cores(4)
    assert _placement(tmp_path, device="gpu") == (1, 4, 4)


def test_explicit_values_win_and_the_rest_is_derived(cores, tmp_path):
    cores(4)
    assert _placement(tmp_path, threads_per_instance=2) == (2, 2, 4)
    assert _placement(tmp_path, instances=1) == (1, 4, 4)
    assert _placement(tmp_path, instances=3, threads_per_instance=5, preprocess_workers=7) == (3, 5, 7)
    assert _placement(tmp_path, threads_per_instance=8) == (1, 8, 4)
