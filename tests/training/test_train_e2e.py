"""`ddrnet train` / `ddrnet eval` end to end on tiny real-image folders (subprocesses, ~15 s per run).

Resume equals an uninterrupted run; eval reproduces the run's own last eval; corrupt images are
reported by path (fail) or skipped and listed (skip); loss falls.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.support.train_testutil import ddrnet, make_image_folder, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("digits"), classes=3, train_per_class=8, val_per_class=5)


def _ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _epochs(run_dir):
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return [x for x in lines if x["type"] == "epoch"]


def _steps(run_dir):
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return [x for x in lines if x["type"] == "step"]


def test_resume_continues_exactly_and_eval_matches(folder, tmp_path):
    from training.checkpointing import read_checkpoint

    # every random choice is seeded per (seed, epoch, image): RandAugment, erasing, mixup/cutmix stay on;
    # drop-path masks follow their step counters, saved in the checkpoint: drop-path on at 0.1
    common = {"auto_augment": "rand-m9-mstd0.5-inc1", "mix_up": 0.8, "cutmix": 1.0, "re_prob": 0.5,
              "hflip": 0.5, "drop_path_rate": 0.1, "lr_scheduler": "cosine_lr", "epochs": 2,
              "warmup_length": 1}
    straight = tiny_config(tmp_path, folder, "a.yaml", output_dir=str(tmp_path / "a"), **common)
    sliced = tiny_config(tmp_path, folder, "b.yaml", output_dir=str(tmp_path / "b"), **common)
    _ok(ddrnet("train", "--config", str(straight)))
    first = _ok(ddrnet("train", "--config", str(sliced), "--stop-after", "1"))
    assert "stopped (--resume continues): 1/2 epochs" in first.stdout
    second = _ok(ddrnet("train", "--config", str(sliced), "--resume"))
    assert "resuming from" in second.stderr and "e0001-s00000003.ckpt" in second.stderr

    a_params, a_state = read_checkpoint(tmp_path / "a" / "checkpoints" / "latest.ckpt")
    b_params, b_state = read_checkpoint(tmp_path / "b" / "checkpoints" / "latest.ckpt")
    assert (a_state.epoch, a_state.step) == (b_state.epoch, b_state.step) == (2, 6)
    assert int(a_params["global_step"].asnumpy()[0]) == int(b_params["global_step"].asnumpy()[0]) == 6
    lr_a = [x["lr"] for x in _steps(tmp_path / "a")]
    assert lr_a == [x["lr"] for x in _steps(tmp_path / "b")] and len(set(lr_a)) == 6  # warmup, then cosine
    worst = max(float(np.abs(a_params[k].asnumpy() - b_params[k].asnumpy()).max()) for k in a_params)
    assert worst < 1e-4, f"resumed weights differ from the uninterrupted run by {worst}"
    assert [e["step"] for e in _epochs(tmp_path / "b")] == [3, 6]
    # each run keeps its curves, redrawn after every epoch (the resumed one across both starts)
    for name in ("a", "b"):
        assert (tmp_path / name / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    compared = _ok(ddrnet("runs", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--output",
                          str(tmp_path / "compare.png")))
    assert compared.stdout.splitlines()[1].split()[:2] == ["a", "2"] and (tmp_path / "compare.png").is_file()

    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["status"] == "finished" and run["arch"] == "ddrnet23_slim" and run["num_classes"] == 3
    assert run["labels"] == ["0", "1", "2"] and run["preprocess"]["image_size"] == 64
    out = _ok(ddrnet("eval", "--config", str(straight), "--checkpoint",
                     str(tmp_path / "a" / "checkpoints" / "latest.ckpt"), "--json"))
    metrics = json.loads(out.stdout)
    assert metrics["images"] == 15 and metrics["skipped_images"] == 0
    assert metrics["top1"] == run["last_val"]["top1"]
    assert metrics["top5"] == run["last_val"]["top5"]
    assert metrics["loss"] == pytest.approx(run["last_val"]["loss"], rel=1e-5)
    assert (tmp_path / "a" / "config.yaml").is_file() and (tmp_path / "a" / "labels.txt").is_file()

    # The run exports itself: nothing restated, its best checkpoint, its recorded preprocessing.
    from model import repository as repo
    from training.run_info import read_run_info

    info = read_run_info(tmp_path / "a")
    assert info.train_dir == str((folder / "train").resolve())
    assert info.checkpoint_best == "checkpoints/best.ckpt"
    models = tmp_path / "models"
    out = _ok(ddrnet("export", "--run-dir", str(tmp_path / "a"), "--repository", str(models),
                     "--name", "tiny", "--formats", "onnx"))
    assert "published tiny version 1" in out.stdout
    manifest = repo.check_version(models / "tiny" / "1")
    assert (manifest.arch, manifest.num_classes, manifest.labels) == ("ddrnet23_slim", 3, ["0", "1", "2"])
    assert manifest.preprocess == info.preprocess and manifest.preprocess.image_size == 64
    assert manifest.source_checkpoint_sha256 == repo.sha256_file(tmp_path / "a" / "checkpoints" / "best.ckpt")


def test_a_run_is_extended_and_a_changed_lr_takes_effect_on_resume(folder, tmp_path):
    """--resume --set epochs=N extends a run (the cosine recomputed from where it stands); a changed
    base_lr is used from the resumed step on, and both changes are said in the log."""
    from training.config import load_config
    from training.schedules import lr_settings, lr_value

    cfg_path = tiny_config(tmp_path, folder, epochs=2, warmup_length=1, lr_scheduler="cosine_lr",
                           drop_path_rate=0.0)
    _ok(ddrnet("train", "--config", str(cfg_path)))  # 2 epochs, 6 steps: finished
    done = ddrnet("train", "--config", str(cfg_path), "--resume")
    assert done.returncode != 0 and "already finished all 2 epochs" in done.stderr
    more = _ok(ddrnet("train", "--config", str(cfg_path), "--resume", "--set", "epochs=4",
                      "--set", "base_lr=0.05"))
    assert "done: 4/4 epochs" in more.stdout
    assert "LR schedule changed on resume: base_lr 0.4 → 0.05, epochs 2 → 4; recomputed from step 6" \
        in more.stderr, more.stderr
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(x["type"] == "resume_change" and "epochs 2 → 4" in x["message"] for x in lines)
    new = lr_settings(load_config(cfg_path, ["epochs=4", "base_lr=0.05"]))
    after = [x for x in _steps(tmp_path / "run") if x["step"] > 6]
    assert [x["step"] for x in after] == list(range(7, 13))
    for x in after:  # the step logged as N ran with the LR of position N - 1
        assert x["lr"] == pytest.approx(lr_value(new, x["step"] - 1, 3), rel=1e-6)


def test_training_with_the_batch_stage_on_the_device_follows_the_host_path(folder, tmp_path):
    """device_batch_ops=on (uint8 batches; normalise, erase and mix in the train step) trains the same
    run as the host path on CPU: the same losses, step by step. With ``rand`` erasing both paths compute
    bit-identical batches; ``pixel`` noise differs by float32 log/cos rounding (up to 2e-5, see
    tests/training/test_batch_ops.py), which a few training steps amplify."""
    common = {"epochs": 1, "re_prob": 0.5, "re_mode": "rand", "mix_up": 0.8, "cutmix": 1.0,
              "drop_path_rate": 0.1}
    runs = {}
    for mode in ("off", "on"):
        cfg = tiny_config(tmp_path, folder, f"{mode}.yaml", output_dir=str(tmp_path / mode),
                          device_batch_ops=mode, **common)
        _ok(ddrnet("train", "--config", str(cfg)))
        runs[mode] = [x["loss"] for x in _steps(tmp_path / mode)]
    assert len(runs["on"]) == len(runs["off"]) == 3
    assert runs["on"] == pytest.approx(runs["off"], rel=1e-5)


def test_corrupt_images_fail_by_path_or_skip_and_loss_falls(folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(folder, data)
    victim = sorted((data / "train" / "2").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:150])
    cfg = tiny_config(tmp_path, data, epochs=4, base_lr=0.8, warmup_length=0, ckpt_every_epochs=0)
    failed = ddrnet("train", "--config", str(cfg))
    assert failed.returncode == 2
    assert f"corrupt image {victim}" in failed.stderr and "Traceback" not in failed.stderr

    ran = _ok(ddrnet("train", "--config", str(cfg), "--set", "corrupt_images=skip"))
    run_dir = tmp_path / "run"
    assert str(victim) in (run_dir / "bad_images.txt").read_text()
    epochs = _epochs(run_dir)
    assert [e["skipped_images"] for e in epochs] == [1, 1, 1, 1]
    assert "skipped images 1" in ran.stderr
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    # ckpt_every_epochs 0: a checkpoint at the end, and one whenever val top-1 improved
    run = json.loads((run_dir / "run.json").read_text())
    ckpts = {p.name for p in (run_dir / "checkpoints").iterdir()}
    best = f"e{run['best_epoch']:04d}-s{3 * run['best_epoch']:08d}.ckpt"
    assert ckpts <= {"best.ckpt", "latest.ckpt", "e0004-s00000012.ckpt", best}
    assert {"best.ckpt", "latest.ckpt", "e0004-s00000012.ckpt"} <= ckpts  # 3 full steps/epoch


def test_bad_config_and_missing_data_are_one_line_errors(folder, tmp_path):
    cfg = tiny_config(tmp_path, folder)
    result = ddrnet("train", "--config", str(cfg), "--set", "image_size=100", "--set", "warmup=3")
    assert result.returncode == 2
    assert "image_size: must be a multiple of 32" in result.stderr and "warmup: unknown key" in result.stderr
    result = ddrnet("train", "--config", str(cfg), "--set", f"data_url={tmp_path / 'nothing'}")
    assert result.returncode == 2 and "data_url: dataset folder not found" in result.stderr
    result = ddrnet("train", "--config", str(cfg), "--set", "num_classes=4")
    assert result.returncode == 2 and "num_classes is 4 but" in result.stderr
    result = ddrnet("train", "--config", str(cfg), "--set", "global_batch=32")
    assert result.returncode == 2 and ("global_batch: this config is written for a global batch of 32 "
                                       "(4 workers x 8, peak LR 0.05); this job is 1 worker(s) x 8 = 8") \
        in result.stderr, result.stderr
    result = ddrnet("train", "--config", str(cfg), "--set", "device_target=GPU")
    assert result.returncode == 2 and "device_target: GPU is not available" in result.stderr
    result = ddrnet("train", "--config", str(cfg), "--resume")
    assert result.returncode == 2 and "--resume: no checkpoint in" in result.stderr
    (tmp_path / "run" / "checkpoints").mkdir(parents=True, exist_ok=True)
    (tmp_path / "run" / "checkpoints" / "e0001-s00000003.ckpt").write_bytes(b"an older run")
    result = ddrnet("train", "--config", str(cfg))
    assert result.returncode == 2 and "already holds checkpoints (e0001-s00000003.ckpt" in result.stderr
    result = ddrnet("train", "--config", str(cfg), "--resume")  # a torn file is skipped, then nothing left
    assert result.returncode == 2 and "no usable checkpoint" in result.stderr
    result = ddrnet("eval", "--config", str(cfg), "--checkpoint", str(tmp_path / "none.ckpt"))
    assert result.returncode == 2 and "checkpoint not found" in result.stderr
    assert all("Traceback" not in r for r in (result.stderr,))
