"""Which versions of a model are served, what its labels point at, and where a request goes.

Set per model in ``<repository>/<model>/config.yaml`` (read with the other per-model settings,
``server.model_config``), after TensorFlow Serving's ``version_labels`` and Triton's
``version_policy``:

    version_policy: {latest: 2}        # the newest 2 complete versions (default: {latest: 1})
    # version_policy: {specific: [3, 5]}
    version_labels: {stable: 3, canary: 5}
    traffic_split: {stable: 90, canary: 10}   # optional: requests naming no version nor label

A labelled version is served whatever the policy says (a label never points at nothing on purpose).
A request names a version (``/v2/models/m/versions/3/...``), or a label (``/v1/models/m/labels/
canary/classify``, the OIP parameter ``version_label``, gRPC ``ClassifyRequest.version_label``), or
neither: then it goes by ``traffic_split`` (weighted at random among labels whose version is served),
or to the newest served version. Metrics and responses name the version that answered.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from server.errors import ErrorKind, ServingError

KEYS = ("version_policy", "version_labels", "traffic_split")
LABEL_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
MAX_VERSIONS = 16  # served at once per model: each is a set of worker processes


class VersionPolicy(BaseModel):
    """``version_policy`` + ``version_labels`` + ``traffic_split`` of one model, validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latest: int | None = Field(None, ge=1, le=MAX_VERSIONS)
    specific: tuple[int, ...] | None = Field(None, min_length=1, max_length=MAX_VERSIONS)
    labels: dict[str, int] = Field(default_factory=dict, max_length=MAX_VERSIONS)
    traffic: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> VersionPolicy:
        if self.latest is not None and self.specific is not None:
            raise ValueError("version_policy takes latest or specific, not both")
        if self.specific is not None and any(v < 1 for v in self.specific):
            raise ValueError(
                f"version_policy.specific: versions are positive integers, got {list(self.specific)}"
            )
        for label, version in self.labels.items():
            if not LABEL_PATTERN.match(label):
                raise ValueError(f"version_labels: {label!r} is not a label (a letter, then letters, digits, "
                                 "'_', '.', '-'; at most 63)")
            if version < 1:
                raise ValueError(f"version_labels.{label}: versions are positive integers, got {version}")
        for label, weight in self.traffic.items():
            if label not in self.labels:
                raise ValueError(f"traffic_split: {label!r} is not one of version_labels "
                                 f"({', '.join(self.labels) or 'none'})")
            if not (weight >= 0 and weight < float("inf")):
                raise ValueError(f"traffic_split.{label}: a weight is a finite number >= 0, got {weight}")
        if self.traffic and sum(self.traffic.values()) <= 0:
            raise ValueError("traffic_split: the weights add up to 0")
        return self

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> VersionPolicy:
        """From the ``KEYS`` of a config.yaml mapping; ValueError naming the key and the problem."""
        policy = data.get("version_policy") or {}
        if not isinstance(policy, Mapping):
            raise ValueError("version_policy must be a mapping: {latest: N} or {specific: [V, ...]}")
        unknown = sorted(str(k) for k in policy if k not in ("latest", "specific"))
        if unknown:
            raise ValueError(f"version_policy: {', '.join(unknown)} is not a policy (latest, specific)")
        try:
            return cls(latest=policy.get("latest"), specific=policy.get("specific"),
                       labels=data.get("version_labels") or {}, traffic=data.get("traffic_split") or {})
        except ValidationError as exc:
            names = {"labels": "version_labels", "traffic": "traffic_split",
                     "latest": "version_policy.latest", "specific": "version_policy.specific"}
            problems = "; ".join(
                f"{'.'.join(names.get(str(p), str(p)) for p in err['loc']) or 'versions'}: "
                f"{err['msg'].removeprefix('Value error, ')}"
                for err in exc.errors()
            )
            raise ValueError(problems) from None

    def select(self, available: Sequence[int]) -> list[int]:
        """The versions to serve from ``available`` (complete, loadable), newest first."""
        ordered = sorted(set(available), reverse=True)
        if self.specific is not None:
            chosen = [v for v in ordered if v in self.specific]
        else:
            chosen = ordered[: self.latest or 1]
        chosen += [v for v in ordered if v in self.labels.values() and v not in chosen]
        return sorted(chosen, reverse=True)[:MAX_VERSIONS]

    def describe(self) -> dict[str, Any]:
        if self.specific is not None:
            policy: dict[str, Any] = {"specific": list(self.specific)}
        else:
            policy = {"latest": self.latest or 1}
        return {"version_policy": policy, "version_labels": dict(self.labels),
                "traffic_split": dict(self.traffic)}


def route(
    model: str,
    served: Sequence[str],
    policy: VersionPolicy,
    version: str | None,
    label: str | None,
    rng: random.Random | None = None,
) -> str:
    """The served version (of ``served``, newest first) that takes a request naming ``version`` and/or
    ``label``; ServingError NOT_FOUND naming what is served or labelled, INVALID_ARGUMENT when the two
    disagree."""
    if label:
        target = policy.labels.get(label)
        if target is None:
            labels = ", ".join(f"{k}={v}" for k, v in policy.labels.items()) or "none"
            raise ServingError(ErrorKind.NOT_FOUND, f"model {model!r} has no version label {label!r} "
                               f"(labels: {labels})", reason="unknown_label")
        if version not in (None, "") and version != str(target):
            raise ServingError(ErrorKind.INVALID_ARGUMENT, f"model {model!r}: label {label!r} is version "
                               f"{target}, but the request names version {version}")
        if str(target) not in served:
            raise ServingError(ErrorKind.NOT_FOUND, f"model {model!r}: label {label!r} is version {target}, "
                               f"which is not being served (serving {', '.join(served)})",
                               reason="unknown_version")
        return str(target)
    if version not in (None, ""):
        if version not in served:
            raise ServingError(ErrorKind.NOT_FOUND, f"model {model!r} has no version {version!r} being "
                               f"served (serving version {', '.join(served)})", reason="unknown_version")
        return version
    if policy.traffic:
        choices = [(str(policy.labels[k]), w) for k, w in policy.traffic.items()
                   if w > 0 and str(policy.labels[k]) in served]
        if choices:
            versions, weights = zip(*choices, strict=True)
            return (rng or random).choices(versions, weights)[0]
    return served[0]
