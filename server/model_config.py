"""Per-model settings: ``<repository>/<model>/config.yaml`` overrides the server's settings for that model.

A model's file may set any of :data:`OVERRIDABLE` (runtime, precision, instances × threads, batching,
queue size, timeout), in the same names and units as the server's options (``ddrnet serve --help``):

    max_batch_size: 16
    preferred_batch_sizes: [4, 8, 16]
    max_queue_delay_ms: 2
    instances: 2
    threads_per_instance: 1
    precision: int8

The merged values are validated by the server's own model (``server.settings.ServerSettings``), so a
value means and is checked exactly as the option would be, cross-field rules included (a preferred
batch size above the maximum, a precision its runtime cannot serve). Setting only ``instances`` (or
only ``threads_per_instance``) re-derives the other from the cores, as the options do. A missing file
means no overrides. A file that is not a mapping, names another key, holds a bad value or exceeds
:data:`MAX_BYTES` is a :class:`ModelConfigError` naming the file and the key; the model manager then
refuses that model (log line, ``ddrnet_model_load_failures_total{reason="invalid_config"}``) and
serves the others. The version policy, labels and traffic split (``server.versions``) are set in the
same file. The file is read when the model's versions are scanned (each poll, an explicit load): the
versions, labels and split apply at once; changed settings reload the served versions with them (a
drain-free swap each; one that fails to load keeps the version serving as it was, logged and counted).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from server.metrics import ServerMetrics
from server.settings import ServerSettings
from server.versions import KEYS as VERSION_KEYS
from server.versions import VersionPolicy

log = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"
MAX_BYTES = 64 * 1024
OVERRIDABLE = (
    "runtime", "precision", "instances", "threads_per_instance", "max_batch_size", "preferred_batch_sizes",
    "max_queue_delay_ms", "preprocess_wait_ms", "max_queue_size", "request_timeout_ms",
)
_PAIRED = {"instances": "threads_per_instance", "threads_per_instance": "instances"}


class ModelConfigError(ValueError):
    """A model's ``config.yaml`` cannot be used; the message names the file and the problem."""


def read_overrides(model_dir: Path) -> tuple[dict[str, Any], str]:
    """(overrides, stamp) from ``model_dir/config.yaml``: ({}, "") without a file; the stamp (SHA-256 of
    the bytes) tells a changed file from a known one. ModelConfigError for an unusable file."""
    path = Path(model_dir) / CONFIG_NAME
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ModelConfigError(f"{path}: larger than {MAX_BYTES} bytes")
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, ""
    except OSError as exc:
        raise ModelConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    stamp = hashlib.sha256(raw).hexdigest()
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}, stamp
    if not isinstance(data, dict):
        raise ModelConfigError(f"{path}: must be a mapping of setting: value, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in OVERRIDABLE and k not in VERSION_KEYS)
    if unknown:
        raise ModelConfigError(f"{path}: {', '.join(unknown)} cannot be set per model (settable: "
                               f"{', '.join(OVERRIDABLE + VERSION_KEYS)})")
    return dict(data), stamp


def settings_part(overrides: dict[str, Any]) -> dict[str, Any]:
    """What a config.yaml sets of the server's settings (without the versions, labels and split)."""
    return {k: v for k, v in overrides.items() if k not in VERSION_KEYS}


def version_policy(overrides: dict[str, Any], where: str = CONFIG_NAME) -> VersionPolicy:
    """The versions, labels and traffic split the file sets; ModelConfigError naming the problem."""
    try:
        return VersionPolicy.from_config(overrides)
    except ValueError as exc:
        raise ModelConfigError(f"{where}: {exc}") from None


def effective_settings(
    base: ServerSettings, overrides: dict[str, Any], where: str = CONFIG_NAME
) -> ServerSettings:
    """The server's settings with ``overrides`` applied and validated as a whole; ModelConfigError
    naming each bad key (``where`` is the file, for the message)."""
    if not overrides:
        return base
    data = base.model_dump()
    data.update({k: v for k, v in overrides.items() if k not in VERSION_KEYS})
    for key, other in _PAIRED.items():
        if key in overrides and other not in overrides:
            data[other] = None  # re-derived from the cores for the new value, as the options do
    try:
        return ServerSettings(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ModelConfigError(f"{where}: {problems}") from None


class ModelConfigs:
    """The effective settings of every model of a repository, re-read when a model's file changes."""

    def __init__(self, settings: ServerSettings, repository: Path, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.repository = Path(repository)
        self.metrics = metrics
        # model -> (config.yaml stamp, effective settings, what the file sets)
        self._known: dict[str, tuple[str, ServerSettings, dict[str, Any]]] = {}
        self._policies: dict[str, VersionPolicy] = {}
        self._reported: set[tuple[str, str]] = set()  # (model, error) already logged and counted

    def settings_for(self, name: str) -> ServerSettings:
        entry = self._known.get(name)
        return entry[1] if entry else self.settings

    def policy_for(self, name: str) -> VersionPolicy:
        """The model's version policy, labels and traffic split (default: the newest version)."""
        return self._policies.get(name) or VersionPolicy()

    def overrides_for(self, name: str) -> dict[str, Any]:
        entry = self._known.get(name)
        return dict(entry[2]) if entry else {}

    def refresh(self, name: str) -> bool:
        """Read model ``name``'s config.yaml when it changed; False when the file is unusable and the
        model has no settings yet (do not load it: logged and counted once per problem). A model that
        has settings keeps them when its file turns bad."""
        model_dir = self.repository / name
        try:
            overrides, stamp = read_overrides(model_dir)
            known = self._known.get(name)
            if known is not None and known[0] == stamp:
                return True
            merged = effective_settings(self.settings, overrides, str(model_dir / CONFIG_NAME))
            policy = version_policy(overrides, str(model_dir / CONFIG_NAME))
        except ModelConfigError as exc:
            if (name, str(exc)) not in self._reported:
                self._reported.add((name, str(exc)))
                keeps = " (it keeps its current settings)" if name in self._known else ""
                log.error("model %s: its settings are refused%s: %s", name, keeps, exc)
                self.metrics.model_load_failures_total.labels(name, "invalid_config").inc()
            return name in self._known
        if overrides:
            log.info("model %s: settings from %s: %s", name, CONFIG_NAME, overrides)
        self._known[name] = (stamp, merged, overrides)
        self._policies[name] = policy
        return True
