"""Data-parallel training under msrun: 2 CPU workers through scripts/train_distributed.sh."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from tests.support.train_testutil import REPO, cli_env, make_image_folder, tiny_config

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_train_and_rank0_writes_one_checkpoint_set(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=3, train_per_class=8, val_per_class=5)
    cfg = tiny_config(tmp_path, data, epochs=2, batch_size=4, ckpt_keep_last=5)
    logs = tmp_path / "msrun_logs"
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "train_distributed.sh"), "2", str(cfg), f"--log_dir={logs}",
         f"--master_port={_free_port()}", "--cluster_time_out=120"],
        capture_output=True, text=True, timeout=600, env=cli_env(), cwd=tmp_path,
    )
    worker_logs = {p.name: p.read_text(errors="replace") for p in logs.glob("worker_*.log")}
    assert result.returncode == 0, result.stdout[-3000:] + "\n".join(v[-2000:] for v in worker_logs.values())
    assert set(worker_logs) == {"worker_0.log", "worker_1.log"}
    run_dir = tmp_path / "run"
    run = json.loads((run_dir / "run.json").read_text())
    # 24 images, 2 shards of 12, batch 4 per worker: 3 steps per epoch, global batch 8
    assert (run["status"], run["world_size"], run["global_batch"], run["steps_done"]) == ("finished", 2, 8, 6)
    assert run["last_val"]["images"] == 15  # val split over both workers, every image counted once
    # each worker's device, gathered from the ranks; msrun chose them (no explicit id was passed)
    assert run["device_selection"] == "negotiated by msrun"
    assert len(run["devices"]) == 2 and all(d.startswith("CPU:") for d in run["devices"])
    assert "devices by rank: CPU:" in worker_logs["worker_0.log"]
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["best.ckpt", "e0001-s00000003.ckpt", "e0002-s00000006.ckpt", "latest.ckpt"]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoints", "config.yaml", "labels.txt", "log.jsonl", "run.json"]
    assert "done: 2/2 epochs" in worker_logs["worker_0.log"]
    assert "done:" not in worker_logs["worker_1.log"]  # only rank 0 reports


def test_launcher_usage_errors(tmp_path):
    script = str(REPO / "scripts" / "train_distributed.sh")
    usage = subprocess.run(["bash", script], capture_output=True, text=True, env=cli_env())
    assert usage.returncode == 2 and "NUM_WORKERS CONFIG" in usage.stdout
    bad = subprocess.run(["bash", script, "two", "x.yaml"], capture_output=True, text=True, env=cli_env())
    assert bad.returncode == 2 and "NUM_WORKERS must be a positive integer" in bad.stderr
    missing = subprocess.run(["bash", script, "2", str(tmp_path / "none.yaml")], capture_output=True,
                             text=True, env=cli_env())
    assert missing.returncode == 2 and "config file not found" in missing.stderr
