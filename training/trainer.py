"""The training loop: model, AMP, optimizer, loss scale, clipping, epochs, eval, checkpoints, resume.

One :class:`Trainer` per process. Under msrun every worker runs the same loop on its data shard;
gradients are averaged in the step; rank 0 alone writes the run directory (config, run.json,
labels, log, checkpoints). The train step (forward, scaled loss, gradients, all-reduce, unscale,
finite check, dynamic scale update, global-norm clip, optimizer) is one function, compiled with
``mindspore.jit`` when ``jit`` is on. The learning rate follows the per-step schedule through the
optimizer's own ``global_step`` (``training.optim``).

Run directory (``output_dir``): ``config.yaml`` (resolved config), ``run.json`` (``training.run_info``:
what ``ddrnet export --run-dir`` needs — arch, num_classes, labels, model_variant, eval preprocess,
best/latest checkpoint, training folder — and the run's progress), ``labels.txt``,
``log.jsonl``, ``checkpoints/`` (see ``training.checkpointing``), ``bad_images.txt`` when any image
could not be decoded.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from training import checkpointing as ckpt
from training.config import TrainConfig
from training.curves import CURVES_FILE, draw, read_log
from training.data import (
    BadImageLog,
    DataError,
    check_splits,
    resolve_class_labels,
    scan_split,
    steps_per_epoch,
    train_dataset,
)
from training.distributed import DistInfo, any_rank, distribute_bn, gather_text, grad_reducer
from training.progress import LOG_FILE, EpochProgress, JsonlLog, epoch_summary
from training.run_info import RunInfo, write_run_info
from training.schedules import build_lr_schedule, lr_changes, lr_scale, lr_settings, lr_value

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.txt"
BAD_IMAGES_FILE = "bad_images.txt"


class TrainingError(RuntimeError):
    """A run cannot start or continue (bad resume target, corrupt image in fail mode, ...)."""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".partial-{os.getpid()}-{path.name}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def build_network(cfg: TrainConfig, rank: int = 0):
    """(network as created — parameters under their export names, network prepared for AMP). The
    drop-path masks are seeded by the run's seed and the rank (each rank drops its own samples)."""
    from model import create_model
    from training.device import apply_amp

    net = create_model(cfg.arch, num_classes=cfg.num_classes, drop_path_rate=cfg.drop_path_rate,
                       variant=cfg.model_variant, drop_path_mode=cfg.drop_path_mode,
                       drop_path_seed=cfg.seed * 1009 + rank)
    return net, apply_amp(net, cfg.amp_level, cfg.keep_bn_fp32)


def build_loss_scaler(cfg: TrainConfig):
    from mindspore import amp

    if cfg.is_dynamic_loss_scale:
        return amp.DynamicLossScaler(cfg.dynamic_scale_init, cfg.dynamic_scale_factor,
                                     cfg.dynamic_scale_window)
    return amp.StaticLossScaler(cfg.loss_scale)


class _StaticScaleState:
    """StaticLossScaler keeps a float; checkpoints want Parameters (same names as the dynamic one)."""

    def __init__(self, scaler) -> None:
        import mindspore as ms

        self.scale_value = scaler.scale_value
        self.counter = ms.Parameter(ms.Tensor(0, ms.int32), name="loss_scale.counter", requires_grad=False)


def make_train_step(cfg: TrainConfig, net_amp, optimizer, scaler, reducer, batch_stage=None):
    """The per-step function ``(images, targets) -> (loss, grads_finite)``; with ``batch_stage``
    (``training.batch_ops.device_batch_stage``) it takes the uint8 batch and its plan instead, and
    normalises, erases and mixes on the device first."""
    import mindspore as ms
    from mindspore import amp, ops

    from training.loss import SoftTargetCrossEntropy

    loss_fn = SoftTargetCrossEntropy()
    dynamic = cfg.is_dynamic_loss_scale
    clip = cfg.clip_global_norm
    clip_value = float(cfg.clip_global_norm_value)

    def forward(images, targets):
        loss = loss_fn(net_amp(images), targets)
        return scaler.scale(loss), loss

    grad_fn = ms.value_and_grad(forward, None, optimizer.parameters, has_aux=True)

    def train_step(images, targets):
        (_, loss), grads = grad_fn(images, targets)
        grads = reducer(grads)
        grads = scaler.unscale(grads)
        finite = amp.all_finite(grads)
        if dynamic:
            scaler.adjust(finite)
        if finite:
            if clip:
                grads = ops.clip_by_global_norm(grads, clip_value)
            optimizer(grads)
        return loss, finite

    if batch_stage is None:
        return ms.jit(train_step) if cfg.jit else train_step

    def device_step(images, keys, epoch, boxes, colours, mix, cut, targets):
        return train_step(batch_stage(images, keys, epoch, boxes, colours, mix, cut), targets)

    return ms.jit(device_step) if cfg.jit else device_step


class Trainer:
    """Builds everything for ``cfg`` and runs the epochs. Call :meth:`run`."""

    def __init__(self, cfg: TrainConfig, dist: DistInfo | None = None, *, resume: str | bool | None = None,
                 show_bar: bool | None = None, stop_after: int | None = None) -> None:
        self.cfg = cfg
        self.stop_after = stop_after
        self.dist = dist or DistInfo()
        self.resume = resume
        self.show_bar = sys.stderr.isatty() if show_bar is None else show_bar
        self.out = Path(cfg.output_dir)
        self.ckpts = ckpt.CheckpointManager(self.out / "checkpoints", cfg.ckpt_keep_last)

    # ------------------------------------------------------------------ setup
    def _prepare_data(self) -> None:
        cfg = self.cfg
        self._check_global_batch()
        root = Path(cfg.data_url)
        if not root.is_dir():
            raise DataError(f"data_url: dataset folder not found: {root}")
        self.train_split = scan_split(root / cfg.train_split)
        self.val_split = scan_split(root / cfg.val_split)
        check_splits(cfg, self.train_split, self.val_split)
        self.labels = resolve_class_labels(root, self.train_split.classes)
        spe = steps_per_epoch(len(self.train_split), cfg.batch_size, self.dist.world_size)
        if spe < 1:
            raise DataError(
                f"batch_size: {cfg.batch_size} x {self.dist.world_size} worker(s) is more than the "
                f"{len(self.train_split)} train images (no full batch per epoch)"
            )
        if cfg.max_steps_per_epoch:
            spe = min(spe, cfg.max_steps_per_epoch)
        self.steps_per_epoch = spe
        self.total_steps = spe * cfg.epochs

    def _prepare_run_dir(self) -> None:
        if not self.dist.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.ckpts.folder.mkdir(parents=True, exist_ok=True)
        self.ckpts.clean_partials()
        _atomic_write_text(self.out / CONFIG_FILE, self.cfg.to_yaml())
        from model.labels import write_labels_file

        write_labels_file(self.out / LABELS_FILE, self.labels)
        self._write_run_json(status="running")

    def _run_info(self, status: str, **extra: Any) -> RunInfo:
        import mindspore as ms

        cfg = self.cfg
        best = self.ckpts.folder / ckpt.BEST_NAME
        latest = self.ckpts.folder / ckpt.LATEST_NAME
        stats = {
            "status": status,
            "best_top1": self.state.best_top1 if self.state.best_top1 >= 0 else None,
            "best_epoch": self.state.best_epoch if self.state.best_epoch >= 0 else None,
            "epochs_done": self.state.epoch,
            "steps_done": self.state.step,
            "world_size": self.dist.world_size,
            "global_batch": cfg.batch_size * self.dist.world_size,
            "devices": list(self.dist.devices),
            "device_selection": self.dist.device_selection,
            "train_images": len(self.train_split),
            "val_images": len(self.val_split),
            "data_url": str(Path(cfg.data_url).resolve()),
            "mindspore_version": ms.__version__,
            "updated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            **extra,
        }
        return RunInfo(
            arch=cfg.arch,
            num_classes=cfg.num_classes,
            labels=list(self.labels),
            model_variant=cfg.model_variant,
            preprocess=cfg.eval_preprocess(),
            checkpoint_best=str(best.relative_to(self.out)) if best.exists() else None,
            checkpoint_latest=str(latest.relative_to(self.out)) if latest.exists() else None,
            train_dir=str(Path(self.train_split.root).resolve()),
            stats=stats,
        )

    def _draw_curves(self) -> None:
        """Redraw ``curves.png`` from the log (rank 0, after each epoch); a plotting failure is a
        warning, never the end of a training run."""
        try:
            draw([read_log(self.out)], self.out / CURVES_FILE, title=f"{self.cfg.arch}: {self.out.name}")
        except Exception as exc:  # matplotlib missing or failing must not stop training
            log.warning("could not draw %s: %s", CURVES_FILE, exc)

    def _write_run_json(self, status: str, **extra: Any) -> None:
        if self.dist.is_main:
            write_run_info(self.out, self._run_info(status, **extra))

    def _build(self) -> None:
        import mindspore as ms

        from training.optim import build_optimizer

        cfg = self.cfg
        ms.set_seed(cfg.seed)  # same initial weights on every rank
        self.net, self.net_amp = build_network(cfg, self.dist.rank)
        self.net_amp.set_train(True)  # batch statistics in BatchNorm, drop-path on
        self.lrs = build_lr_schedule(cfg, self.steps_per_epoch, self.dist.world_size)
        self.optimizer = build_optimizer(cfg, self.net, self.lrs)
        self.scaler = build_loss_scaler(cfg)
        self.scale_state = self.scaler if cfg.is_dynamic_loss_scale else _StaticScaleState(self.scaler)
        reducer = grad_reducer(self.optimizer.parameters, self.dist)
        stage = None
        if cfg.batch_ops_on_device:
            from training.batch_ops import device_batch_stage

            stage = device_batch_stage(cfg)
        self.train_step = make_train_step(cfg, self.net_amp, self.optimizer, self.scaler, reducer, stage)

    def _resume(self) -> None:
        cfg = self.cfg
        current_lr = lr_settings(cfg, self.dist.world_size)
        self.state = ckpt.TrainState(world_size=self.dist.world_size, seed=cfg.seed,
                                     steps_per_epoch=self.steps_per_epoch, arch=cfg.arch,
                                     num_classes=cfg.num_classes, lr_settings=current_lr)
        self.resume_notes: list[str] = []
        if not self.resume:
            existing = self.ckpts.periodic()
            if existing:
                raise TrainingError(
                    f"output_dir {self.out} already holds checkpoints ({existing[-1].name}, ...): continue "
                    "that run with --resume, or start a new one elsewhere (--set output_dir=DIR)")
            return
        if isinstance(self.resume, str):
            candidates = [Path(self.resume)]
        else:
            candidates = self.ckpts.resume_candidates()
            if not candidates:
                raise TrainingError(f"--resume: no checkpoint in {self.ckpts.folder}")
        errors = []
        for path in candidates:
            try:
                state = ckpt.restore(path, self.net, self.optimizer, self.scale_state, arch=cfg.arch,
                                     num_classes=cfg.num_classes)
            except ckpt.CheckpointError as exc:
                if isinstance(self.resume, str):
                    raise TrainingError(f"--resume: {exc}") from None
                log.warning("skipping unusable checkpoint: %s", exc)
                errors.append(str(exc))
                continue
            self._check_resumable(path, state)
            self.resume_notes = self._lr_notes(state.lr_settings, current_lr)
            state.lr_settings, state.arch, state.num_classes = current_lr, cfg.arch, cfg.num_classes
            self.state = state
            self.resumed_from = path
            return
        raise TrainingError("--resume: no usable checkpoint: " + "; ".join(errors))

    def _check_global_batch(self) -> None:
        cfg, world = self.cfg, self.dist.world_size
        actual = cfg.batch_size * world
        if cfg.global_batch is None or cfg.global_batch == actual:
            return
        want_lr, got_lr = cfg.base_lr * lr_scale(cfg.global_batch), cfg.base_lr * lr_scale(actual)
        raise TrainingError(
            f"global_batch: this config is written for a global batch of {cfg.global_batch} "
            f"({cfg.global_batch // cfg.batch_size} workers x {cfg.batch_size}, peak LR {want_lr:g}); this "
            f"job is {world} worker(s) x {cfg.batch_size} = {actual} (peak LR {got_lr:g}). Launch "
            f"{cfg.global_batch // cfg.batch_size} workers, or --set global_batch=null to train at {actual}"
        )

    def _lr_notes(self, saved: dict, current: dict) -> list[str]:
        """What a resumed run changes in its LR schedule, and the LR at the step it resumes from."""
        from training.optim import lr_position

        position = lr_position(self.optimizer)
        now = float(self.lrs[min(position, len(self.lrs) - 1)])
        if not saved:
            return [f"the checkpoint predates recorded LR settings: the schedule now comes from this "
                    f"config (LR {now:.6g} at step {position})"]
        changes = lr_changes(saved, current)
        if not changes:
            return []
        before = lr_value(saved, position, self.steps_per_epoch)
        return [f"LR schedule changed on resume: {', '.join(changes)}; recomputed from step {position} "
                f"(LR {before:.6g} → {now:.6g})"]

    def _check_resumable(self, path: Path, state: ckpt.TrainState) -> None:
        if state.steps_per_epoch != self.steps_per_epoch or state.world_size != self.dist.world_size:
            raise TrainingError(
                f"--resume: {path} was written with {state.steps_per_epoch} steps/epoch on "
                f"{state.world_size} worker(s); this run has {self.steps_per_epoch} on "
                f"{self.dist.world_size} (change batch_size/workers back to resume exactly)"
            )
        if state.epoch >= self.cfg.epochs:
            raise TrainingError(f"--resume: {path} already finished all {self.cfg.epochs} epochs "
                                "(raise epochs with --set epochs=N to train further)")

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        """Train to ``epochs``; returns the final state and last val metrics."""

        from training.optim import lr_position

        cfg = self.cfg
        self._prepare_data()
        self._build()
        self.resumed_from = None
        self._resume()
        self._prepare_run_dir()
        main = self.dist.is_main
        self.jlog = JsonlLog(self.out / LOG_FILE if main else None)
        # other ranks keep their list outside the run directory (rank 0 alone writes there)
        self.bad_log = BadImageLog(self.out / BAD_IMAGES_FILE if main else Path(tempfile.gettempdir()) /
                                   f"ddrnet-bad-images-rank{self.dist.rank}-{os.getpid()}.txt")
        self.bad_log.clear()
        global_batch = cfg.batch_size * self.dist.world_size
        self.jlog.write("start", resumed_from=str(self.resumed_from) if self.resumed_from else None,
                        epoch=self.state.epoch, step=self.state.step, steps_per_epoch=self.steps_per_epoch,
                        world_size=self.dist.world_size, global_batch=global_batch,
                        devices=list(self.dist.devices), device_selection=self.dist.device_selection,
                        lr_scale=lr_scale(global_batch), train_images=len(self.train_split),
                        val_images=len(self.val_split))
        for note in self.resume_notes:
            self.jlog.write("resume_change", message=note)
            if main:
                self._say(note)
        if main:
            what = f"resuming from {self.resumed_from} at epoch {self.state.epoch + 1}" if self.resumed_from \
                else "starting"
            self._say(f"{what}: {cfg.arch} on {len(self.train_split)} train / {len(self.val_split)} val "
                      f"images, {cfg.num_classes} classes, {self.dist.world_size} worker(s) x batch "
                      f"{cfg.batch_size}, "
                      f"{self.steps_per_epoch} steps/epoch, {cfg.epochs} epochs")
            if self.dist.devices:
                self._say(f"devices by rank: {', '.join(self.dist.devices)} ({self.dist.device_selection})")
        metrics: dict[str, float] | None = None
        last_metrics: dict[str, float] | None = None
        last_epoch = cfg.epochs
        if self.stop_after:
            last_epoch = min(cfg.epochs, self.state.epoch + self.stop_after)
        while self.state.epoch < last_epoch:
            epoch = self.state.epoch
            progress = EpochProgress(epoch, cfg.epochs, self.steps_per_epoch, global_batch, enabled=main,
                                     show_bar=self.show_bar, log=self.jlog, log_every=cfg.log_every_steps,
                                     initial=self.state.step_in_epoch)
            data = train_dataset(cfg, self.train_split, epoch, self.bad_log, rank=self.dist.rank,
                                 world_size=self.dist.world_size, skip_batches=self.state.step_in_epoch)
            iterator = data.create_tuple_iterator(num_epochs=1, output_numpy=True)
            lr = self._lr_now(lr_position)
            bad_seen = self.bad_log.size()
            try:
                for row in iterator:
                    if self.state.step_in_epoch >= self.steps_per_epoch:
                        break
                    lr = self._lr_now(lr_position)
                    loss, finite = self.train_step(*self._step_inputs(row, epoch))
                    self.state.step += 1
                    self.state.step_in_epoch += 1
                    loss_value = float(loss.asnumpy())
                    if not math.isfinite(loss_value) and cfg.amp_level == "O0":
                        raise TrainingError(f"loss became {loss_value} at step {self.state.step} "
                                            "(lower base_lr or enable clip_global_norm)")
                    scale = float(self.scale_state.scale_value.asnumpy())
                    progress.update(self.state.step, loss_value, lr, scale, overflow=not bool(finite))
                    bad_seen = self._poll_bad_images(bad_seen)
                    if (cfg.ckpt_every_steps and self.state.step % cfg.ckpt_every_steps == 0
                            and self.state.step_in_epoch < self.steps_per_epoch):
                        distribute_bn(self.net, self.dist)  # what rank 0 saves is every rank's model
                        self._save(is_best=False)
            finally:
                iterator.stop()
            seconds = progress.close()
            bad_seen = self._poll_bad_images(bad_seen)
            self.state.epoch += 1
            self.state.step_in_epoch = 0
            distribute_bn(self.net, self.dist)  # one model on every rank: evaluated, chosen and saved
            last = self.state.epoch == cfg.epochs
            pausing = self.state.epoch == last_epoch
            metrics = None
            if last or self.state.epoch % cfg.eval_every_epochs == 0:
                metrics = self.evaluate()
            last_metrics = metrics or last_metrics
            is_best = bool(metrics is not None and metrics["top1"] > self.state.best_top1)
            if is_best:
                self.state.best_top1, self.state.best_epoch = float(metrics["top1"]), self.state.epoch
            skipped = len(self.bad_log.entries()) if main else 0
            if last or pausing or (cfg.ckpt_every_epochs and self.state.epoch % cfg.ckpt_every_epochs == 0):
                self._save(is_best=is_best)
            elif is_best:
                self._save(is_best=True)
            if main:
                self._say(epoch_summary(self.state.epoch, cfg.epochs, loss=progress.mean_loss, lr=lr,
                                        img_per_s=progress.images_per_second, seconds=seconds,
                                        metrics=metrics, skipped=skipped))
                self.jlog.write("epoch", epoch=self.state.epoch, step=self.state.step,
                                loss=round(progress.mean_loss, 6), lr=lr,
                                img_per_s=round(progress.images_per_second, 2), seconds=round(seconds, 2),
                                val=metrics, skipped_images=skipped)
                self._write_run_json("running", last_val=metrics or last_metrics)
                self._draw_curves()
        status = "finished" if self.state.epoch >= cfg.epochs else "stopped"
        self._write_run_json(status, last_val=metrics or last_metrics)
        self.jlog.write("finish", epoch=self.state.epoch, step=self.state.step,
                        best_top1=self.state.best_top1, last_val=metrics or last_metrics)
        self.jlog.close()
        return {"epoch": self.state.epoch, "step": self.state.step, "best_top1": self.state.best_top1,
                "best_epoch": self.state.best_epoch, "last_val": metrics or last_metrics}

    def _step_inputs(self, row, epoch: int) -> list:
        """One pipeline row as the train step's arguments (the epoch goes to the device batch stage)."""
        import mindspore as ms
        import numpy as np

        tensors = [ms.Tensor(value) for value in row]
        if self.cfg.batch_ops_on_device:
            tensors.insert(2, ms.Tensor(np.int32(epoch)))
        return tensors

    def _lr_now(self, lr_position) -> float:
        """The LR the next update uses, read from the optimizer (its schedule at its position)."""
        from training.optim import current_lr

        return current_lr(self.optimizer)

    def _say(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def _poll_bad_images(self, seen: int) -> int:
        """Act on images that could not be decoded since the log had ``seen`` bytes. With
        ``corrupt_images: fail`` on several ranks this is collective (every rank calls it at the same
        points): a corrupt file met by one rank stops every rank with the same message, instead of
        one rank raising while the others wait in the next all-reduce forever."""
        new = self.bad_log.size() != seen
        if self.dist.enabled and self.cfg.corrupt_images == "fail":
            new = any_rank(new, self.dist)
        return self._check_bad_images() if new else seen

    def _check_bad_images(self) -> int:
        """Apply ``corrupt_images``: fail naming the path, or note the skip. Returns the log size seen."""
        entries = self.bad_log.entries()
        if self.cfg.corrupt_images == "fail":
            mine = ""
            if entries:
                path, reason = entries[0]
                mine = f"{path}: {reason}"
                if len(entries) > 1:
                    mine += f" (and {len(entries) - 1} more, listed in {self.bad_log.path})"
            reports = gather_text(mine, self.dist)  # collective when several ranks: see _poll_bad_images
            failing = [(rank, text) for rank, text in enumerate(reports) if text]
            if failing:
                rank, text = failing[0]
                where = f" (read by rank {rank} of {self.dist.world_size})" if self.dist.enabled else ""
                raise DataError(f"corrupt image {text}{where}; fix or remove it, or set "
                                "corrupt_images: skip")
        if entries:
            self.jlog.write("skipped_images", count=len(entries), list=self.bad_log.path)
            log.warning("skipping %d undecodable image(s), listed in %s", len(entries), self.bad_log.path)
        return self.bad_log.size()

    def _save(self, is_best: bool) -> None:
        if not self.dist.is_main:
            return
        path = self.ckpts.save(self.net, self.optimizer, self.scale_state, self.state, is_best)
        self.jlog.write("checkpoint", path=str(path), epoch=self.state.epoch, step=self.state.step,
                        best=is_best)

    def evaluate(self) -> dict[str, float]:
        from training.evaluate import evaluate

        before = self.bad_log.size()
        metrics = evaluate(self.net_amp, self.cfg, self.val_split, self.dist, self.bad_log, show_bar=False)
        self._poll_bad_images(before)
        return metrics


def copy_config_file(src: str | os.PathLike[str], run_dir: Path) -> None:
    """Keep the user's original config file beside the resolved one (``config.source.yaml``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, run_dir / "config.source.yaml")
