"""Typed results the clients return: :class:`Prediction`, :class:`ImageResult` (one image),
:class:`ClassifyResult` (several images) and :class:`Logits` (OIP v2 raw outputs).

They are plain frozen dataclasses with ``to_dict`` for JSON output; the same types come back from the
HTTP and the gRPC clients, so code written against one works with the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """One class of one image: its human-readable ``label``, ``index`` in the model's output and
    softmax ``score``."""

    label: str
    index: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "score": self.score}


@dataclass(frozen=True)
class ImageResult:
    """The top-k predictions of one image (best first) and the model version that made them."""

    predictions: tuple[Prediction, ...]
    model_name: str = ""
    model_version: str = ""

    @property
    def top(self) -> Prediction:
        """The best prediction."""
        return self.predictions[0]

    @property
    def indices(self) -> list[int]:
        return [p.index for p in self.predictions]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "predictions": [p.to_dict() for p in self.predictions],
        }


@dataclass(frozen=True)
class ClassifyResult:
    """Results of several images, in request order. ``model_version`` is the version of the first
    result; when a request was split into several calls and the server swapped versions between them,
    each :class:`ImageResult` still names its own."""

    model_name: str
    model_version: str
    results: tuple[ImageResult, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[ImageResult]:
        return iter(self.results)

    def __getitem__(self, index: int) -> ImageResult:
        return self.results[index]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "results": [{"predictions": [p.to_dict() for p in r.predictions]} for r in self.results],
        }


@dataclass(frozen=True, eq=False)
class Logits:
    """The model's raw output for a batch of images (Open Inference Protocol v2 ``infer``)."""

    model_name: str
    model_version: str
    values: np.ndarray  # float32 [N, num_classes]


def result_from_json(data: dict[str, Any]) -> ClassifyResult:
    """A :class:`ClassifyResult` from the HTTP classify answer
    (``{"model_name", "model_version", "results": [{"predictions": [...]}]}``)."""
    name = str(data["model_name"])
    version = str(data["model_version"])
    results = tuple(
        ImageResult(
            tuple(
                Prediction(str(p["label"]), int(p["index"]), float(p["score"])) for p in item["predictions"]
            ),
            name,
            version,
        )
        for item in data["results"]
    )
    return ClassifyResult(name, version, results)


def result_from_proto(message: Any) -> ClassifyResult:
    """A :class:`ClassifyResult` from a ``ddrnet.v1.ClassifyResponse``."""
    name, version = message.model_name, message.model_version
    results = tuple(
        ImageResult(
            tuple(Prediction(p.label, int(p.index), float(p.score)) for p in item.predictions), name, version
        )
        for item in message.results
    )
    return ClassifyResult(name, version, results)


def merge(parts: list[ClassifyResult]) -> ClassifyResult:
    """Concatenate the results of several calls (in order)."""
    if not parts:
        raise ValueError("no results to merge")
    results = tuple(r for part in parts for r in part.results)
    return ClassifyResult(parts[0].model_name, parts[0].model_version, results)
