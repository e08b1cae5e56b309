"""Training configuration: the zoo recipe's keys plus run keys, validated when loaded.

A config is a flat YAML mapping (the MindSpore model zoo's ``ddrnet23_imagenet_*.yaml`` keys, plus the
run keys below the recipe block of :class:`TrainConfig`). :func:`load_config` reads a file, applies
``--set key=value`` overrides (values parsed as YAML scalars) and validates everything with pydantic:
an unknown key, a wrong type or an out-of-range value raises :class:`ConfigError` naming the key.
Checks that depend on the machine (is the device there, can it run the chosen AMP level) happen in
``training.device`` when a run starts, and fail the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model.archs import ARCHS
from model.preprocess_config import PreprocessConfig, resolve_preprocess

#: Eval resize modes (the eval transform is recorded in run.json for export).
EVAL_RESIZE_MODES = ("squash", "shorter_side")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


class TrainConfig(BaseModel):
    """Every key a training config may hold. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    # ----- recipe keys (names as in the zoo's yaml) -----
    arch: str = Field("ddrnet23", description="registered model name (model.list_models())")
    data_url: str = Field(..., description="dataset root holding <train_split>/ and <val_split>/ folders")
    set: Literal["ImageNet"] = Field("ImageNet", description="dataset layout: ImageNet-style class folders")
    num_classes: int = Field(1000, ge=2, description="classifier outputs; must equal the class folder count")
    mix_up: float = Field(0.8, ge=0.0, description="mixup Beta(alpha, alpha); 0 disables mixup")
    cutmix: float = Field(1.0, ge=0.0, description="cutmix Beta(alpha, alpha); 0 disables cutmix")
    color_jitter: float = Field(0.4, ge=0.0, description="brightness/contrast/saturation jitter; only "
                                "applied when auto_augment is off (as timm and the zoo do)")
    auto_augment: str | None = Field("rand-m9-mstd0.5-inc1", description="timm RandAugment policy or null")
    interpolation: Literal["bicubic", "bilinear", "nearest", "random"] = Field(
        "bicubic", description="train-time resampling (RandomResizedCrop, RandAugment geometry)")
    re_prob: float = Field(0.25, ge=0.0, le=1.0, description="random erasing probability per image")
    re_mode: Literal["const", "rand", "pixel"] = Field("pixel", description="random erasing fill")
    re_count: int = Field(1, ge=1, le=16, description="random erasing boxes per erased image")
    mixup_prob: float = Field(1.0, ge=0.0, le=1.0, description="probability a batch is mixed at all")
    switch_prob: float = Field(0.5, ge=0.0, le=1.0, description="P(cutmix) when both are enabled")
    mixup_mode: Literal["batch"] = Field("batch", description="one lambda per batch (timm 'batch')")
    mixup_off_epoch: int = Field(0, ge=0, description="epoch from which mixing stops; 0 = never")
    image_size: int = Field(224, ge=64, le=1024, description="train crop and eval crop side, multiple of 32")
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="RandomResizedCrop area range")
    crop_ratio: tuple[float, float] = Field((0.75, 4 / 3), description="RandomResizedCrop aspect range")
    hflip: float = Field(0.5, ge=0.0, le=1.0, description="horizontal flip probability")
    crop_pct: float = Field(0.875, gt=0.0, le=1.0, description="eval: resize to int(image_size/crop_pct)")
    optimizer: Literal["momentum", "sgd", "adamw", "rmsprop"] = "momentum"
    use_nesterov: bool = Field(True, description="Nesterov momentum (momentum/sgd optimizers)")
    base_lr: float = Field(0.1, gt=0.0, le=10.0, description="LR for a global batch of 256 (scaled)")
    warmup_lr: float = Field(1e-6, ge=0.0, description="LR at step 0 of the linear warmup (scaled)")
    min_lr: float = Field(1e-5, ge=0.0, description="final LR of the cosine schedule (scaled)")
    lr_scheduler: Literal["cosine_lr", "multistep_lr", "constant_lr"] = "cosine_lr"
    warmup_length: int = Field(10, ge=0, description="warmup epochs")
    lr_adjust: int = Field(30, ge=1, description="multistep_lr: LR x0.1 every lr_adjust epochs")
    amp_level: Literal["O0", "O1", "O2", "O3"] = "O2"
    keep_bn_fp32: bool = Field(True, description="BatchNorm stays float32 under AMP")
    beta: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    clip_global_norm_value: float = Field(5.0, gt=0.0, description="global gradient norm limit")
    clip_global_norm: bool = Field(True, description="clip gradients by global norm")
    is_dynamic_loss_scale: bool = Field(True, description="dynamic loss scale (else fixed loss_scale)")
    epochs: int = Field(300, ge=1, le=100_000)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    loss_scale: float = Field(1024.0, ge=1.0, description="fixed loss scale (is_dynamic_loss_scale false)")
    weight_decay: float = Field(1e-4, ge=0.0, lt=1.0, description="not applied to BN params and biases")
    decay: float = Field(0.9, ge=0.0, lt=1.0, description="RMSProp decay")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="momentum/sgd/rmsprop momentum")
    batch_size: int = Field(128, ge=1, le=65536, description="images per device (worker) per step")
    global_batch: int | None = Field(
        None, ge=1, description="the global batch (batch_size x workers) this config is written for; a job "
        "with another number of workers stops naming the LR it would get (null: any)")
    num_parallel_workers: int = Field(8, ge=1, le=128, description="data pipeline workers per process")
    device_target: Literal["CPU", "GPU", "Ascend"] = "Ascend"
    drop_path_rate: float = Field(0.1, ge=0.0, lt=1.0, description="stochastic depth of the last block")
    drop_path_mode: Literal["zoo", "branch"] = Field(
        "zoo", description="zoo: drop the shortcut with the model zoo's rates (the published recipe); "
        "branch: drop the residual branch (timm)")
    device_id: int | None = Field(
        None, ge=0, le=4095, description="device of a single-process run; null: msrun negotiates one per "
        "worker, mpirun uses the local rank, one process uses device 0")

    # ----- run keys (not in the zoo recipe) -----
    output_dir: str = Field("runs/ddrnet", description="run directory: checkpoints, logs, config")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seeds init, shuffling and augmentation")
    train_split: str = Field("train", min_length=1, description="train subfolder of data_url")
    val_split: str = Field("val", min_length=1, description="val subfolder of data_url")
    model_variant: Literal["zoo", "authors"] = Field(
        "zoo", description="network numerics (model.create_model)")
    eval_resize_mode: Literal["squash", "shorter_side"] = Field(
        "squash", description="eval resize: squash to a square (zoo) or shorter side (timm)")
    eval_interpolation: Literal["bicubic", "bilinear", "nearest"] = Field(
        "bicubic", description="eval resampling (recorded for export/serving)")
    eval_batch_size: int | None = Field(None, ge=1, description="eval batch; null = batch_size")
    eval_every_epochs: int = Field(1, ge=1, description="run val every N epochs (and after the last)")
    ckpt_every_epochs: int = Field(1, ge=0, description="checkpoint every N epochs; 0 = only at the end")
    ckpt_every_steps: int = Field(0, ge=0, description="also checkpoint every N steps; 0 = off")
    ckpt_keep_last: int = Field(3, ge=1, description="periodic checkpoints kept (plus best.ckpt)")
    log_every_steps: int = Field(20, ge=1, description="JSON-lines log / progress refresh interval")
    corrupt_images: Literal["skip", "fail"] = Field(
        "fail", description="an undecodable image: skip it (counted, listed) or stop naming its path")
    dynamic_scale_init: float = Field(4096.0, ge=1.0, description="initial dynamic loss scale")
    dynamic_scale_factor: int = Field(2, ge=2, description="dynamic loss scale growth/backoff factor")
    dynamic_scale_window: int = Field(1000, ge=1, description="finite steps before the scale grows")
    opt_eps: float = Field(1e-8, gt=0.0, lt=1.0, description="AdamW/RMSProp epsilon")
    device_batch_ops: Literal["auto", "on", "off"] = Field(
        "auto", description="ship uint8 batches and normalise, erase and mix on the device (4x fewer bytes "
        "to the device); auto: on unless device_target is CPU")
    python_multiprocessing: bool = Field(
        False, description="run the Python decode/augment ops in worker processes instead of threads")
    jit: bool = Field(True, description="compile the train step with mindspore.jit (graph mode)")
    max_steps_per_epoch: int = Field(0, ge=0, description="cap steps per epoch (smoke runs); 0 = all")

    @field_validator("arch", mode="before")
    @classmethod
    def _arch_known(cls, value: Any) -> Any:
        if isinstance(value, str):
            name = value.lower()  # the zoo spells it DDRNet23
            if name not in ARCHS:
                raise ValueError(f"unknown arch {value!r}; known: {', '.join(sorted(ARCHS))}")
            return name
        return value

    @field_validator("image_size")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        if value % 32:
            raise ValueError(f"must be a multiple of 32 (DDRNet downsamples 32x), got {value}")
        return value

    @field_validator("auto_augment", mode="before")
    @classmethod
    def _policy_parses(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        if isinstance(value, str):
            from training.augment import parse_rand_augment

            parse_rand_augment(value)  # raises ValueError naming the bad part
        return value

    @field_validator("beta")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError(f"both betas must be in [0, 1), got {list(value)}")
        return value

    @field_validator("crop_scale", "crop_ratio")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < value[0] <= value[1]:
            raise ValueError(f"must be [low, high] with 0 < low <= high, got {list(value)}")
        return value

    @field_validator("data_url", "output_dir")
    @classmethod
    def _non_empty_path(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a non-empty path")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.warmup_length > self.epochs:
            raise ValueError(f"warmup_length ({self.warmup_length}) exceeds epochs ({self.epochs})")
        if self.min_lr > self.base_lr:
            raise ValueError(f"min_lr ({self.min_lr}) exceeds base_lr ({self.base_lr})")
        if self.crop_scale[1] > 1.0:
            raise ValueError(f"crop_scale upper bound must be <= 1, got {self.crop_scale[1]}")
        if self.global_batch is not None and self.global_batch % self.batch_size:
            raise ValueError(f"global_batch ({self.global_batch}) is not a multiple of batch_size "
                             f"({self.batch_size})")
        if self.mixup_off_epoch > self.epochs:
            raise ValueError(f"mixup_off_epoch ({self.mixup_off_epoch}) exceeds epochs ({self.epochs})")
        return self

    # ----- derived values -----
    @property
    def mixing(self) -> bool:
        """Whether mixup or cutmix is on at all."""
        return self.mix_up > 0.0 or self.cutmix > 0.0

    @property
    def batch_ops_on_device(self) -> bool:
        """Whether train batches travel as uint8 and are normalised, erased and mixed on the device."""
        auto = self.device_batch_ops == "auto" and self.device_target != "CPU"
        return self.device_batch_ops == "on" or auto

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or self.batch_size

    def eval_preprocess(self) -> PreprocessConfig:
        """The eval transform this config trains for (what eval uses and ``run.json`` records for
        export): its eval keys over the architecture's default, by the one resolver."""
        return resolve_preprocess(
            self.arch, image_size=self.image_size, crop_pct=self.crop_pct,
            interpolation=self.eval_interpolation, resize_mode=self.eval_resize_mode,
        )

    def to_yaml(self) -> str:
        """The resolved config as YAML (what the run directory keeps as config.yaml)."""
        data = self.model_dump(mode="json")
        return yaml.safe_dump(data, sort_keys=False)


def _format_errors(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing" if len(err["loc"]) == 1 else "value missing (too few items)"
        value = err.get("input")
        quiet = err["type"] in ("missing", "extra_forbidden") or isinstance(value, dict)
        shown = "" if quiet else f" (got {value!r})"
        parts.append(f"{key}: {msg}{shown}")
    return f"{source}: " + "; ".join(parts)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` → dict; values are YAML scalars (``epochs=2``, ``beta=[0.9,0.99]``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    return out


def validate_config(data: dict[str, Any], source: str = "config") -> TrainConfig:
    """Validate a mapping; :class:`ConfigError` lists every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{source}: keys must be strings, got {bad!r}")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, apply ``key=value`` overrides, validate.

    A relative ``data_url``/``output_dir`` in the file is taken relative to the working directory
    (as the zoo does), not to the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    data.update(parse_overrides(overrides))
    return validate_config(data, source=str(path))
