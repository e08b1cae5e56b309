"""training.device.choose_device / setup_context: which device each process of a job uses."""

from __future__ import annotations

import pytest

from training.device import DeviceError, choose_device

MSRUN = {"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "8", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "8118"}
OPENMPI = {"OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_RANK": "11", "OMPI_COMM_WORLD_LOCAL_RANK": "3"}


def test_msrun_leaves_the_id_to_mindspores_negotiation() -> None:
    choice = choose_device("Ascend", None, MSRUN)
    assert choice.device_id is None and "msrun" in choice.how


def test_mpirun_uses_the_local_rank_of_any_mpi() -> None:
    assert choose_device("GPU", None, OPENMPI).device_id == 3
    assert choose_device("GPU", None, {"PMI_SIZE": "4", "MPI_LOCALRANKID": "2"}).device_id == 2
    with pytest.raises(DeviceError, match="no MPI local rank"):
        choose_device("GPU", None, {"OMPI_COMM_WORLD_SIZE": "4"})


def test_one_process_uses_the_configs_id_or_mindspores_default() -> None:
    assert choose_device("Ascend", 5, {}).device_id == 5
    assert choose_device("Ascend", None, {}).device_id is None
    assert choose_device("CPU", None, {"OMPI_COMM_WORLD_SIZE": "1"}).device_id is None  # one MPI process


def test_a_fixed_id_for_a_multi_process_job_is_refused_naming_the_key() -> None:
    with pytest.raises(DeviceError, match=r"device_id: 0 would put every worker of this msrun job"):
        choose_device("Ascend", 0, MSRUN)
    with pytest.raises(DeviceError, match="mpirun"):
        choose_device("GPU", 1, OPENMPI)
    assert choose_device("CPU", 0, MSRUN).device_id == 0  # CPU workers share the host anyway


def test_setup_context_under_msrun_passes_no_explicit_id(monkeypatch) -> None:
    import mindspore as ms

    from training.device import setup_context

    for key, value in MSRUN.items():
        monkeypatch.setenv(key, value)
    calls: list[tuple] = []
    monkeypatch.setattr(ms, "set_device", lambda target, device_id=None: calls.append((target, device_id)))
    choice = setup_context("CPU")
    assert calls == [("CPU", None)]
    assert choice.how == "negotiated by msrun"
    monkeypatch.setenv("MS_ROLE", "")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
    setup_context("CPU")
    assert calls[-1] == ("CPU", 1)
