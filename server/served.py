"""What a server is serving: each model's loaded versions (:class:`ServedVersion`), a :class:`Lane`
(batcher + instances) per served version, and the :class:`ServedModel` that routes a request to a lane
by version, label or traffic split (``server.versions``). The model manager builds and replaces them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.precision import precision_summary
from model.manifest import ModelManifest
from model.preprocess import EvalTransform
from server.batcher import Batcher
from server.instance import ManagedInstance
from server.versions import VersionPolicy, route


@dataclass(eq=False)
class ServedVersion:
    """One loaded version of a model: manifest, transform and warmed instances."""

    model: str
    version: str
    version_dir: Path
    manifest: ModelManifest
    transform: EvalTransform
    instances: list[ManagedInstance]
    runtime: str
    device: str
    load_seconds: float
    precision: str = "fp32"
    overrides: dict[str, Any] = field(default_factory=dict)  # the model's config.yaml

    @property
    def labels(self) -> list[str]:
        return self.manifest.labels

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest.input.shape[1:])

    @property
    def input_name(self) -> str:
        return self.manifest.input.name

    @property
    def output_name(self) -> str:
        return self.manifest.output.name

    @property
    def ready(self) -> bool:
        return any(instance.ready for instance in self.instances)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "arch": self.manifest.arch,
            "runtime": self.runtime,
            "device": self.device,
            "precision": self.precision,
            "settings": dict(self.overrides),
            "verified_precisions": precision_summary(self.manifest.verification),
            "instances": [instance.worker.describe() for instance in self.instances],
            "load_seconds": round(self.load_seconds, 3),
        }


@dataclass(eq=False)
class Lane:
    """One served version of a model: its batcher and instances. ``versions`` also holds the old
    instances of a reload of the same version while they finish (a drain-free swap)."""

    batcher: Batcher
    current: ServedVersion
    versions: dict[str, ServedVersion] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.current.ready and self.batcher.accepting

    def version(self, version: str) -> ServedVersion:
        """The loaded version named ``version`` (the one a reservation was made for)."""
        return self.versions[version]


@dataclass(eq=False)
class ServedModel:
    """A model being served: a :class:`Lane` per served version (``server.versions`` picks them and
    routes requests), and lanes of versions no longer wanted that are finishing their work."""

    name: str
    lanes: dict[str, Lane] = field(default_factory=dict)
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    retiring: list[Lane] = field(default_factory=list)

    @property
    def served_versions(self) -> list[str]:
        """Newest first; the first takes requests that name no version, label or split."""
        return sorted(self.lanes, key=int, reverse=True)

    @property
    def default(self) -> Lane:
        return self.lanes[self.served_versions[0]]

    @property
    def current(self) -> ServedVersion:
        return self.default.current

    @property
    def batcher(self) -> Batcher:
        """The batcher of the newest served version."""
        return self.default.batcher

    @property
    def ready(self) -> bool:
        return bool(self.lanes) and all(lane.ready for lane in self.lanes.values())

    def route(self, version: str | None, label: str | None) -> Lane:
        return self.lanes[route(self.name, self.served_versions, self.policy, version, label)]

    def all_lanes(self) -> list[Lane]:
        """Every lane, serving or finishing its work."""
        return [*self.lanes.values(), *self.retiring]

    def loaded(self) -> list[ServedVersion]:
        """Every loaded version, serving or finishing its work."""
        return [v for lane in self.all_lanes() for v in lane.versions.values()]
