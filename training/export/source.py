"""Where an export's facts come from: a training run's ``run.json``, a training config, or the command
line, and the one rule for which wins.

A model version needs its architecture, class count, labels, weight variant and eval preprocessing.
``ddrnet export --run-dir RUN`` takes them all from the run (``training.run_info``; the checkpoint is
the run's best unless one is named), ``--config CFG`` from a training config and the data set's class
folders, and with neither they come from the options and the architecture's defaults.
:func:`build_spec` applies the rule: an option given on the command line wins over the run or config,
which wins over the architecture's default (the preprocessing through
``model.preprocess_config.resolve_preprocess``). A value that cannot be resolved is an
:class:`~training.export.spec.ExportError` naming what to pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.preprocess_config import PreprocessConfig, resolve_preprocess
from training.export.spec import ExportError, ExportSpec

LOG = logging.getLogger(__name__)


@dataclass
class ModelFacts:
    """What a run or a config says about the model to export; None = it says nothing."""

    arch: str | None = None
    num_classes: int | None = None
    variant: str | None = None
    labels: list[str] | None = None
    preprocess: PreprocessConfig | None = None
    checkpoint: Path | None = None
    calibration_dir: Path | None = None
    origin: str = "options"


def facts_from_run(run_dir: Path) -> ModelFacts:
    """The facts ``ddrnet train`` recorded in ``<run_dir>/run.json``; the checkpoint is the run's best
    (ExportError when the run has none yet and no checkpoint is named)."""
    from training.run_info import RunInfoError, read_run_info

    try:
        info = read_run_info(run_dir)
    except RunInfoError as exc:
        raise ExportError(str(exc)) from None
    best = Path(run_dir) / info.checkpoint_best if info.checkpoint_best else None
    train_dir = Path(info.train_dir) if info.train_dir else _train_dir_of_old_run(info)
    return ModelFacts(
        arch=info.arch, num_classes=info.num_classes, variant=info.model_variant, labels=list(info.labels),
        preprocess=info.preprocess, checkpoint=best, calibration_dir=train_dir, origin=f"run {run_dir}",
    )


def _train_dir_of_old_run(info: Any) -> Path | None:
    """Runs recorded before ``train_dir`` existed name the data set root: its ``train`` split."""
    data_url = info.stats.get("data_url")
    return Path(data_url) / "train" if isinstance(data_url, str) else None


def facts_from_config(path: Path) -> ModelFacts:
    """arch, num_classes, variant, preprocessing and labels of a training config; the labels are the
    run's ``labels.txt`` when it wrote one, else the data set's class folders (as training named
    them), else none."""
    from training.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise ExportError(str(exc)) from None
    return ModelFacts(
        arch=cfg.arch, num_classes=cfg.num_classes, variant=cfg.model_variant, labels=_config_labels(cfg),
        preprocess=cfg.eval_preprocess(), calibration_dir=Path(cfg.data_url) / cfg.train_split,
        origin=f"config {path}",
    )


def _config_labels(cfg: Any) -> list[str] | None:
    from model.labels import read_labels_file
    from training.data import resolve_class_labels

    run_labels = Path(cfg.output_dir) / "labels.txt"
    if run_labels.is_file():
        return read_labels_file(run_labels)
    split = Path(cfg.data_url) / cfg.train_split
    if split.is_dir():
        classes = tuple(sorted(e.name for e in split.iterdir() if e.is_dir() and not e.name.startswith(".")))
        if len(classes) == cfg.num_classes:
            return resolve_class_labels(cfg.data_url, classes)
    LOG.warning("no labels.txt in %s and no class folders in %s: default labels", cfg.output_dir, split)
    return None


def _checkpoint_facts(checkpoint: Path) -> tuple[Any, str]:
    """The checkpoint's own account of its network (``model.weights.checkpoint_facts``) and "", or None
    and why it cannot say (no such file yet, unreadable, no DDRNet classifier): the spec check and the
    network load name those problems when they matter."""
    from model.weights import WeightLoadError, checkpoint_facts

    if not checkpoint.is_file():
        return None, f"checkpoint {checkpoint} does not exist"
    try:
        return checkpoint_facts(checkpoint), ""
    except WeightLoadError as exc:
        return None, str(exc)


def build_spec(
    facts: ModelFacts,
    *,
    repository: Path,
    name: str,
    checkpoint: Path | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    labels_file: Path | None = None,
    variant: str | None = None,
    preprocess: dict[str, Any] | None = None,
    calibration_dir: Path | None = None,
    **rest: Any,
) -> ExportSpec:
    """The :class:`ExportSpec` of ``facts`` with the options given (not None) winning; ``preprocess``
    holds single preprocessing options (``image_size``, ``crop_pct``, ...). ``rest`` are the spec's
    other fields (formats, version, tolerance, ...)."""
    from model.archs import ARCHS
    from model.labels import read_labels_file

    if arch is not None and arch not in ARCHS:
        raise ExportError(f"unknown architecture {arch!r}: choose from {', '.join(sorted(ARCHS))}")
    checkpoint = checkpoint or facts.checkpoint
    if checkpoint is None:
        if facts.origin.startswith("run"):
            raise ExportError(f"{facts.origin} has no best checkpoint yet: name one with --checkpoint")
        raise ExportError("--checkpoint is required (or --run-dir RUN, which exports the run's best)")
    held, unread = _checkpoint_facts(Path(checkpoint))
    if arch is not None and held is not None and held.arch is not None and arch != held.arch:
        raise ExportError(f"--arch {arch} contradicts {checkpoint}, which holds {held.describe()}: drop "
                          f"--arch or give --arch {held.arch}")
    if facts.arch and arch and arch != facts.arch:
        LOG.warning("--arch %s overrides the %s of %s", arch, facts.arch, facts.origin)
    arch = arch or facts.arch or (held.arch if held is not None else None)
    if not arch:
        why = f"{checkpoint} holds {held.describe()}" if held is not None else unread
        raise ExportError(f"--arch is required ({why}; or --run-dir / --config, which name the architecture)")
    if held is not None and held.num_classes is not None:
        if num_classes and num_classes != held.num_classes:
            raise ExportError(f"--num-classes {num_classes} contradicts {checkpoint}, whose classifier has "
                              f"{held.num_classes} classes: drop --num-classes or give {held.num_classes}")
        if not num_classes and facts.num_classes is None:
            num_classes = held.num_classes
    labels = facts.labels
    if labels_file is not None:
        if not labels_file.is_file():
            raise ExportError(f"label file {labels_file} does not exist")
        try:
            labels = read_labels_file(labels_file)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
    if num_classes and labels is not None and labels_file is None and len(labels) != num_classes:
        labels = None  # the run's labels belong to its class count, not to the one given here
    try:
        config = resolve_preprocess(arch, facts.preprocess, **(preprocess or {}))
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    return ExportSpec(
        checkpoint=Path(checkpoint),
        arch=arch,
        repository=Path(repository),
        name=name,
        num_classes=num_classes or facts.num_classes or (len(labels) if labels else 1000),
        labels=labels,
        preprocess=config,
        variant=variant or facts.variant,  # None: the checkpoint's own (training.export.spec)
        calibration_dir=calibration_dir or facts.calibration_dir,
        **rest,
    )
