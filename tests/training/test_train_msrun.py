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
        "checkpoints", "config.yaml", "curves.png", "labels.txt", "log.jsonl", "run.json"]
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


def _msrun(tmp_path, script, *args, timeout=300):
    logs = tmp_path / "msrun_logs"
    result = subprocess.run(
        ["msrun", "--worker_num=2", "--local_worker_num=2", f"--master_port={_free_port()}",
         f"--log_dir={logs}", "--join=True", "--cluster_time_out=120", script, *args],
        capture_output=True, text=True, timeout=timeout, env=cli_env(), cwd=REPO,
    )
    return result, {p.name: p.read_text(errors="replace") for p in logs.glob("worker_*.log")}


def test_batchnorm_statistics_are_averaged_over_the_ranks(tmp_path):
    """distribute_bn with real collectives: each rank's running statistics start rank-dependent and
    end as the mean over both ranks, on both ranks."""
    script = tmp_path / "bn.py"
    script.write_text(
        "import json, numpy as np, mindspore as ms\n"
        "from mindspore import nn\n"
        "from training.device import setup_context\n"
        "from training.distributed import distribute_bn, init_distributed\n"
        "choice = setup_context('CPU')\n"
        "dist = init_distributed(choice.how)\n"
        "net = nn.SequentialCell([nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dense(4, 2)])\n"
        "bn = net[1]\n"
        "bn.moving_mean.set_data(ms.Tensor(np.full(4, 1.0 + dist.rank, np.float32)))\n"
        "bn.moving_variance.set_data(ms.Tensor(np.full(4, 10.0 * (dist.rank + 1), np.float32)))\n"
        "count = distribute_bn(net, dist)\n"
        "print('BN', json.dumps({'rank': dist.rank, 'count': count, 'devices': dist.devices,\n"
        "      'mean': bn.moving_mean.asnumpy().tolist(), 'var': bn.moving_variance.asnumpy().tolist()}))\n"
    )
    result, logs = _msrun(tmp_path, str(script))
    assert result.returncode == 0, result.stdout[-2000:] + "".join(v[-2000:] for v in logs.values())
    lines = [line for text in logs.values() for line in text.splitlines()]
    seen = [json.loads(line[3:]) for line in lines if line.startswith("BN ")]
    assert sorted(x["rank"] for x in seen) == [0, 1]
    for x in seen:
        assert x["count"] == 2 and x["mean"] == [1.5] * 4 and x["var"] == [15.0] * 4
        assert len(x["devices"]) == 2


def test_a_corrupt_image_on_one_rank_stops_every_rank_with_the_same_message(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=3, train_per_class=8, val_per_class=5)
    (data / "train" / "1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cfg = tiny_config(tmp_path, data, epochs=2, batch_size=4, corrupt_images="fail")
    logs = tmp_path / "msrun_logs"
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "train_distributed.sh"), "2", str(cfg), f"--log_dir={logs}",
         f"--master_port={_free_port()}", "--cluster_time_out=120"],
        capture_output=True, text=True, timeout=300, env=cli_env(), cwd=tmp_path,
    )  # before: the rank that read the file raised, the other waited in the all-reduce until killed
    worker_logs = {p.name: p.read_text(errors="replace") for p in logs.glob("worker_*.log")}
    assert result.returncode != 0
    messages = {name: [line for line in text.splitlines() if "corrupt image" in line]
                for name, text in worker_logs.items()}
    assert set(messages) == {"worker_0.log", "worker_1.log"}
    assert all(lines for lines in messages.values()), worker_logs
    first = {name: lines[-1] for name, lines in messages.items()}
    assert first["worker_0.log"] == first["worker_1.log"]
    assert "broken.jpg" in first["worker_0.log"] and "read by rank" in first["worker_0.log"]
    assert "Traceback" not in "".join(worker_logs.values())
