"""Shared readers for the deploy tests: the Dockerfile's stages, `ddrnet serve` options, manifests.

Kept free of test logic so test_dockerfile.py and test_manifests.py check the same facts the same way.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dockerfile_parse import DockerfileParser

from server.settings import ServerSettings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DEPLOY = REPO / "deploy"
K8S_DIR = DEPLOY / "kubernetes"
KSERVE_DIR = DEPLOY / "kserve"
HEALTHCHECK_SCRIPT = DEPLOY / "docker" / "healthcheck.py"

# Open Inference Protocol v2 health endpoints (protocol-defined paths, see ARCHITECTURE.md)
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"


@dataclass
class Instruction:
    name: str  # upper-case instruction, e.g. "RUN"
    value: str  # everything after the instruction word, continuation lines joined
    line: int  # 1-based line of the instruction


@dataclass
class Stage:
    image: str
    alias: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, name: str) -> list[Instruction]:
        return [ins for ins in self.instructions if ins.name == name]

    def last(self, name: str) -> Instruction | None:
        found = self.all(name)
        return found[-1] if found else None


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The Dockerfile split into build stages (dockerfile-parse does the parsing)."""
    parser = DockerfileParser(path=str(path))
    stages: list[Stage] = []
    for item in parser.structure:
        name = item["instruction"]
        if name == "COMMENT":
            continue
        ins = Instruction(name, item["value"].strip(), item["startline"] + 1)
        if name == "FROM":
            words = ins.value.split()
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], alias))
        elif stages:
            stages[-1].instructions.append(ins)
    return stages


def exec_form(value: str) -> list[str]:
    """The JSON array of an exec-form instruction (ENTRYPOINT/CMD/VOLUME); ValueError otherwise."""
    parsed = json.loads(value)
    if not isinstance(parsed, list) or not all(isinstance(word, str) for word in parsed):
        raise ValueError(f"not an exec-form JSON array of strings: {value}")
    return parsed


def settings_field(flag: str) -> str:
    """ServerSettings field named by a `ddrnet serve` option (--http-port -> http_port)."""
    return flag.removeprefix("--").replace("-", "_")


def serve_options(args: Sequence[str]) -> dict[str, str]:
    """`--option value` pairs of a `ddrnet serve` command line, keyed by settings field.

    Every option must name a ServerSettings field and carry a value (no bare flags are used in our
    manifests); anything else raises ValueError naming the offending word.
    """
    options: dict[str, str] = {}
    words = list(args)
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--"):
            raise ValueError(f"expected an --option, got {word!r}")
        name, eq, inline = word.partition("=")
        key = settings_field(name)
        if key not in ServerSettings.model_fields:
            raise ValueError(f"{name} is not a ddrnet serve option (no ServerSettings.{key})")
        if eq:
            options[key] = inline
            i += 1
        else:
            if i + 1 >= len(words):
                raise ValueError(f"{name} has no value")
            options[key] = words[i + 1]
            i += 2
    return options


def env_settings(env: dict[str, str]) -> dict[str, str]:
    """DDRNET_<FIELD> variables keyed by settings field; ValueError for any other name."""
    prefix = ServerSettings.model_config["env_prefix"]
    out = {}
    for name, value in env.items():
        if not name.startswith(prefix):
            raise ValueError(f"{name} is not a DDRNET_* variable")
        key = name[len(prefix) :].lower()
        if key not in ServerSettings.model_fields:
            raise ValueError(f"{name} names no server setting (no ServerSettings.{key})")
        out[key] = value
    return out


def setting_default(name: str) -> Any:
    return ServerSettings.model_fields[name].default


def yaml_docs(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as handle:
        for doc in yaml.safe_load_all(handle):
            if doc is not None:
                yield doc


def manifests(directory: Path, recursive: bool = True) -> list[tuple[Path, dict[str, Any]]]:
    """(file, document) for every YAML document under directory, kustomization files excluded."""
    pattern = "**/*.yaml" if recursive else "*.yaml"
    out = []
    for path in sorted(directory.glob(pattern)):
        if path.name == "kustomization.yaml":
            continue
        out.extend((path, doc) for doc in yaml_docs(path))
    return out


def find(kind: str, directory: Path = K8S_DIR, recursive: bool = False) -> dict[str, Any]:
    """The one object of this kind in directory (top level only unless recursive)."""
    found = [doc for _, doc in manifests(directory, recursive) if doc["kind"] == kind]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} in {directory}, found {len(found)}")
    return found[0]


def project() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)
