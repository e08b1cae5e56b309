"""Crash safety: SIGKILL at random points of a run, then --resume: never a corrupt checkpoint, at most
one checkpoint interval lost, and the run completes."""

from __future__ import annotations

import json
import random
import signal
import time

import pytest

from tests.support.train_testutil import ddrnet, ddrnet_popen, make_image_folder, tiny_config

pytestmark = pytest.mark.slow

INTERVAL = 2  # ckpt_every_steps


def _logged_steps(run_dir):
    path = run_dir / "log.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by the kill
            continue
        if record["type"] == "step":
            steps.append(record["step"])
    return steps


def _kill_at(cfg, run_dir, target_step, extra_args, log):
    proc = ddrnet_popen("train", "--config", str(cfg), "--no-progress", *extra_args, log=log)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            steps = _logged_steps(run_dir)
            if steps and steps[-1] >= target_step:
                time.sleep(random.uniform(0.0, 0.4))  # anywhere: mid-step, mid-checkpoint-write
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"run ended before step {target_step}: {log.read_text()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    return max(_logged_steps(run_dir))


def test_sigkill_then_resume_loses_at_most_one_interval(tmp_path):
    from training.checkpointing import read_checkpoint

    data = make_image_folder(tmp_path / "data", classes=3, train_per_class=8, val_per_class=3)
    cfg = tiny_config(tmp_path, data, epochs=2, batch_size=4, ckpt_every_steps=INTERVAL, ckpt_keep_last=2,
                      warmup_length=0)  # 6 steps per epoch, 12 in all
    run_dir = tmp_path / "run"
    rng = random.Random()
    # kill a fresh run, then kill the resumed run too (both at random steps), then let it finish
    first = _kill_at(cfg, run_dir, rng.randint(3, 6), [], tmp_path / "kill0.log")
    second = _kill_at(cfg, run_dir, rng.randint(first + 1, 10), ["--resume"], tmp_path / "kill1.log")
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        read_checkpoint(ckpt)  # every file under a checkpoint name is whole (CRC checked)
    result = ddrnet("train", "--config", str(cfg), "--no-progress", "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    starts = [json.loads(x) for x in lines if '"type": "start"' in x]
    assert len(starts) == 3 and starts[0]["step"] == 0
    for killed_at, start in ((first, starts[1]), (second, starts[2])):
        assert killed_at - INTERVAL <= start["step"] <= killed_at, (killed_at, start)
        assert start["resumed_from"]
    assert not list((run_dir / "checkpoints").glob(".partial-*"))
    run = json.loads((run_dir / "run.json").read_text())
    assert (run["status"], run["steps_done"], run["epochs_done"]) == ("finished", 12, 2)
