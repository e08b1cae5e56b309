"""``model.json``: the manifest of one model version, its schema, and the one typed reader and writer.

Every consumer of ``model.json`` (the repository scanner, the exporter, the server, the runtime adapters
in their worker processes) goes through :class:`ModelManifest`: :func:`load_manifest` reads and
validates a version directory's file, :meth:`ModelManifest.from_dict` validates the same content when
it arrives as a message (the worker protocol), :func:`write_manifest` refuses to write what a reader
would refuse. Validation errors are :class:`ManifestError` naming the field (``'input.shape' must
be ...``). The eval preprocessing is held as the one config type, ``model.preprocess_config``'s
:class:`PreprocessConfig`.

Standard library only, Python 3.7 syntax: the MindSpore Lite worker (Python 3.7) reads manifests.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from model.preprocess_config import RECORDED_KEYS, PreprocessConfig

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
MANIFEST_NAME = "model.json"
WEIGHT_VARIANTS = ("zoo", "authors")
# Roles of single files in ``files``; ``fixed_batch`` maps a batch size to a file. ``onnx_int8`` (the
# int8 quantised ONNX model) and ``onnx_fp16`` (float16 weights and arithmetic, float32 inputs and
# outputs) are opt-in, served only when the server is asked for that precision (``inference.precision``).
FILE_ROLES = ("mindir", "onnx", "lite", "onnx_int8", "onnx_fp16")
DEFAULT_FILENAMES = {
    "mindir": "model.mindir", "onnx": "model.onnx", "lite": "model.ms", "onnx_int8": "model.int8.onnx",
    "onnx_fp16": "model.fp16.onnx",
}
CREATED_AT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

_VERSION_RE = re.compile(r"^[1-9][0-9]*$")
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_FILENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

PathLike = Union[str, "os.PathLike[str]"]


class ManifestError(ValueError):
    """``model.json`` is missing, unreadable or does not follow the schema; the message names the field."""




# ----------------------------------------------------------------------------------------------------
# validation helpers


def _fail(where: str, message: str) -> ManifestError:
    """``where`` is the dotted path of the offending field, e.g. ``input.shape``."""
    return ManifestError(f"{MANIFEST_NAME}: '{where}' {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float))) and not isinstance(value, bool)


def _require(data: dict[str, Any], key: str, where: str = "") -> Any:
    if key not in data:
        raise _fail(f"{where}{key}", "is missing")
    return data[key]


def _require_str(data: dict[str, Any], key: str, where: str = "", allow_empty: bool = False) -> str:
    value = _require(data, key, where)
    if not isinstance(value, str) or (not allow_empty and not value):
        raise _fail(f"{where}{key}", f"must be a non-empty string, got {value!r}")
    return value


def _require_dict(data: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = _require(data, key, where)
    if not isinstance(value, dict):
        raise _fail(f"{where}{key}", f"must be an object, got {type(value).__name__}")
    return value


def positive_int(value: Any, where: str) -> int:
    if not _is_int(value) or value < 1:
        raise _fail(where, f"must be a positive integer, got {value!r}")
    return value


def is_valid_model_name(name: str) -> bool:
    """Model names appear in URLs and directory names: letters, digits, ``_ . -``, not starting with
    a dot or dash, at most 128 characters."""
    return isinstance(name, str) and bool(_MODEL_NAME_RE.match(name))


def check_model_name(name: str) -> str:
    if not is_valid_model_name(name):
        raise ValueError(
            f"invalid model name {name!r}: use letters, digits, '_', '.', '-' (not first), at most 128 chars"
        )
    return name


def is_version_dirname(name: str) -> bool:
    """True for a canonical positive integer (``"1"``, ``"12"``; not ``"0"``, ``"01"``, ``".3"``)."""
    return bool(_VERSION_RE.match(name))


def _check_filename(value: Any, where: str) -> str:
    # A manifest must never point outside its own directory.
    if not isinstance(value, str) or not _FILENAME_RE.match(value) or ".." in value:
        raise _fail(where, f"must be a plain file name inside the version directory, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------
# manifest schema


@dataclass
class TensorSpec:
    """Name, dtype and shape of a model input or output; ``-1`` marks the dynamic batch dimension."""

    name: str
    dtype: str
    shape: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TensorSpec:
        if not isinstance(data, dict):
            raise _fail(where, f"must be an object, got {type(data).__name__}")
        name = _require_str(data, "name", f"{where}.")
        dtype = _require_str(data, "dtype", f"{where}.")
        shape = _require(data, "shape", f"{where}.")
        if not isinstance(shape, list) or not shape or not all(_is_int(d) for d in shape):
            raise _fail(f"{where}.shape", f"must be a list of integers, got {shape!r}")
        if shape[0] != -1 or any(d < 1 for d in shape[1:]):
            raise _fail(f"{where}.shape", f"must be [-1, ...positive dims] (dynamic batch), got {shape!r}")
        return cls(name=name, dtype=dtype, shape=list(shape))


@dataclass
class FileChecksum:
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


@dataclass
class ModelManifest:
    """The content of ``model.json``. ``from_dict`` validates and raises :class:`ManifestError`.

    ``files`` maps a role to a file name in the version directory: ``mindir``, ``onnx``, ``lite``,
    ``onnx_int8``, ``onnx_fp16`` (only those that exist) and ``fixed_batch``
    (``{"1": "model_b1.mindir", ...}``, possibly empty).
    ``checksums`` holds the SHA-256 and size of every listed file. ``verification`` maps each exported
    format (``mindir``, ``onnx``, ``lite``, ``mindir_b<N>``) to the comparison against the checkpoint
    network (``max_abs_diff``, ``top1_agreement``, ``tolerance``, ``samples``, ``runtime``). Records of
    reduced precisions (``onnx_int8``, ``onnx_int8_openvino``, ``onnx_bf16``, ``onnx_fp16``) carry
    ``precision`` and ``rule: top1_agreement`` with ``min_top1_agreement`` instead of a tolerance;
    ``inference.precision`` reads them (which precisions the version may be served at).
    """

    name: str
    version: int
    arch: str
    num_classes: int
    labels: list[str]
    weight_variant: str
    preprocess: PreprocessConfig
    input: TensorSpec
    output: TensorSpec
    files: dict[str, Any]
    checksums: dict[str, FileChecksum]
    source_checkpoint_sha256: str
    created_at: str
    verification: dict[str, dict[str, Any]] = field(default_factory=dict)
    exporter: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.preprocess, PreprocessConfig):  # a recorded dict: validate it here
            self.preprocess = _validate_preprocess(self.preprocess)

    # -- derived views ---------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.input.shape[2])

    @property
    def item_shape(self) -> tuple[int, ...]:
        """One input image's shape, ``(3, S, S)``."""
        return tuple(self.input.shape[1:])

    @property
    def fixed_batch_files(self) -> dict[int, str]:
        """Batch size -> fixed-batch MindIR file name, sorted by batch size."""
        fixed = self.files.get("fixed_batch") or {}
        return {int(k): fixed[k] for k in sorted(fixed, key=int)}

    def file_names(self) -> list[str]:
        """Every file name the manifest lists (excluding ``model.json`` itself)."""
        names = [self.files[r] for r in FILE_ROLES if self.files.get(r)]
        names.extend(self.fixed_batch_files.values())
        return names

    def has(self, role: str) -> bool:
        return bool(self.files.get(role))

    def path(self, version_dir: PathLike, role: str) -> Path:
        """Path of the file for ``role`` (``mindir``, ``onnx``, ``lite``, ``onnx_int8``); KeyError if the
        version has none."""
        filename = self.files.get(role)
        if not filename or role not in FILE_ROLES:
            raise KeyError(f"model {self.name!r} version {self.version} has no {role!r} file")
        return Path(version_dir) / filename

    def existing_path(self, version_dir: PathLike, role: str) -> str | None:
        """The file for ``role`` when the version lists it and it exists in ``version_dir``, else None
        (what a runtime adapter asks before choosing what to load)."""
        if not self.has(role):
            return None
        path = self.path(version_dir, role)
        return str(path) if path.is_file() else None

    def fixed_batch_paths(self, version_dir: PathLike) -> dict[int, str]:
        """Batch size -> path of each listed fixed-batch MindIR file that exists in ``version_dir``."""
        paths = {size: Path(version_dir) / name for size, name in self.fixed_batch_files.items()}
        return {size: str(path) for size, path in paths.items() if path.is_file()}

    def sha256(self, filename: str) -> str:
        """The recorded SHA-256 of one listed file (KeyError for a file the manifest does not list)."""
        return self.checksums[filename].sha256

    # -- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        files: dict[str, Any] = {r: self.files[r] for r in FILE_ROLES if self.files.get(r)}
        files["fixed_batch"] = {str(k): v for k, v in self.fixed_batch_files.items()}
        return {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "labels": list(self.labels),
            "weight_variant": self.weight_variant,
            "preprocess": self.preprocess.to_dict(),
            "input": self.input.to_dict(),
            "output": self.output.to_dict(),
            "files": files,
            "checksums": {k: v.to_dict() for k, v in sorted(self.checksums.items())},
            "source_checkpoint_sha256": self.source_checkpoint_sha256,
            "created_at": self.created_at,
            "verification": {k: dict(v) for k, v in self.verification.items()},
            "exporter": dict(self.exporter),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> ModelManifest:
        if not isinstance(data, dict):
            raise ManifestError(f"{MANIFEST_NAME}: must hold a JSON object, got {type(data).__name__}")
        fmt = _require(data, "format_version")
        if fmt not in SUPPORTED_FORMAT_VERSIONS or not _is_int(fmt):
            known = SUPPORTED_FORMAT_VERSIONS
            raise _fail("format_version", f"{fmt!r} is not supported (this reader knows {known})")
        name = _require_str(data, "name")
        if not is_valid_model_name(name):
            raise _fail("name", f"{name!r} is not a valid model name")
        version = positive_int(_require(data, "version"), "version")
        arch = _require_str(data, "arch")
        num_classes = positive_int(_require(data, "num_classes"), "num_classes")

        labels = _require(data, "labels")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise _fail("labels", "must be a list of strings")
        if len(labels) != num_classes:
            raise _fail("labels", f"has {len(labels)} entries but num_classes is {num_classes}")

        variant = _require_str(data, "weight_variant")
        if variant not in WEIGHT_VARIANTS:
            raise _fail("weight_variant", f"must be one of {WEIGHT_VARIANTS}, got {variant!r}")

        preprocess = _validate_preprocess(_require_dict(data, "preprocess"))

        spec_in = TensorSpec.from_dict(_require(data, "input"), "input")
        spec_out = TensorSpec.from_dict(_require(data, "output"), "output")
        size = preprocess.image_size
        if len(spec_in.shape) != 4 or spec_in.shape[1:] != [3, size, size]:
            raise _fail("input.shape", f"must be [-1, 3, {size}, {size}] (image_size), got {spec_in.shape}")
        if spec_out.shape != [-1, num_classes]:
            raise _fail("output.shape", f"must be [-1, {num_classes}] (num_classes), got {spec_out.shape}")

        files = _validate_files(_require_dict(data, "files"))
        checksums = _validate_checksums(_require_dict(data, "checksums"), files)

        sha = _require_str(data, "source_checkpoint_sha256")
        if not _SHA256_RE.match(sha):
            raise _fail("source_checkpoint_sha256", f"must be 64 lower-case hex digits, got {sha!r}")
        created_at = _require_str(data, "created_at")
        try:
            datetime.datetime.strptime(created_at, CREATED_AT_FORMAT)
        except ValueError:
            example = "2024-05-01T12:00:00Z"
            raise _fail("created_at", f"must be ISO UTC like {example}, got {created_at!r}") from None

        verification = data.get("verification", {})
        if not isinstance(verification, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in verification.items()
        ):
            raise _fail("verification", "must map a format name to an object")
        for fmt_name, result in verification.items():
            for key in ("max_abs_diff", "top1_agreement", "tolerance"):
                if key == "tolerance" and result.get("rule") == "top1_agreement":
                    continue  # int8 files are verified by top-1 agreement, not a logit tolerance
                if not _is_number(result.get(key)):
                    where = f"verification.{fmt_name}.{key}"
                    raise _fail(where, f"must be a number, got {result.get(key)!r}")
        exporter = data.get("exporter", {})
        if not isinstance(exporter, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in exporter.items()
        ):
            raise _fail("exporter", "must map a package name to a version string")

        return cls(
            name=name,
            version=version,
            arch=arch,
            num_classes=num_classes,
            labels=list(labels),
            weight_variant=variant,
            preprocess=preprocess,
            input=spec_in,
            output=spec_out,
            files=files,
            checksums=checksums,
            source_checkpoint_sha256=sha,
            created_at=created_at,
            verification={k: dict(v) for k, v in verification.items()},
            exporter=dict(exporter),
            format_version=fmt,
        )

    @classmethod
    def from_json(cls, text: str) -> ModelManifest:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ManifestError(f"{MANIFEST_NAME}: not valid JSON ({exc})") from None
        return cls.from_dict(data)


def _validate_preprocess(pre: Any) -> PreprocessConfig:
    try:
        return PreprocessConfig.from_dict(pre, required=RECORDED_KEYS)
    except ValueError as exc:
        raise ManifestError(f"{MANIFEST_NAME}: {exc}") from None


def _validate_files(files: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(files) - set(FILE_ROLES) - {"fixed_batch"})
    if unknown:
        raise _fail("files", f"has unknown roles {unknown} (known: {[*FILE_ROLES, 'fixed_batch']})")
    out: dict[str, Any] = {}
    for role in FILE_ROLES:
        if files.get(role) is not None:
            out[role] = _check_filename(files[role], f"files.{role}")
    fixed = files.get("fixed_batch") or {}
    if not isinstance(fixed, dict):
        raise _fail("files.fixed_batch", "must map a batch size to a file name")
    out_fixed: dict[str, str] = {}
    for key, value in fixed.items():
        if not isinstance(key, str) or not is_version_dirname(key):
            raise _fail("files.fixed_batch", f"key {key!r} is not a positive batch size")
        out_fixed[key] = _check_filename(value, f"files.fixed_batch.{key}")
    out["fixed_batch"] = out_fixed
    if not any(out.get(r) for r in FILE_ROLES) and not out_fixed:
        raise _fail("files", "lists no model file")
    names = [out[r] for r in FILE_ROLES if out.get(r)] + list(out_fixed.values())
    if len(set(names)) != len(names) or MANIFEST_NAME in names:
        raise _fail("files", f"lists a file twice or lists {MANIFEST_NAME}: {names}")
    return out


def _validate_checksums(checksums: dict[str, Any], files: dict[str, Any]) -> dict[str, FileChecksum]:
    listed = [files[r] for r in FILE_ROLES if files.get(r)] + list(files["fixed_batch"].values())
    out: dict[str, FileChecksum] = {}
    for filename in listed:
        entry = checksums.get(filename)
        if not isinstance(entry, dict):
            raise _fail(f"checksums.{filename}", "is missing (every listed file needs sha256 and size)")
        sha, size = entry.get("sha256"), entry.get("size")
        if not isinstance(sha, str) or not _SHA256_RE.match(sha):
            raise _fail(f"checksums.{filename}.sha256", f"must be 64 lower-case hex digits, got {sha!r}")
        if not _is_int(size) or size < 0:
            raise _fail(f"checksums.{filename}.size", f"must be a non-negative integer, got {size!r}")
        out[filename] = FileChecksum(sha256=sha, size=size)
    extra = sorted(set(checksums) - set(listed))
    if extra:
        raise _fail("checksums", f"names files that 'files' does not list: {extra}")
    return out


def utc_now_iso() -> str:
    # timezone.utc rather than datetime.UTC: the latter does not exist in Python 3.7.
    return datetime.datetime.now(datetime.timezone.utc).strftime(CREATED_AT_FORMAT)


# ----------------------------------------------------------------------------------------------------
# reading and writing model.json


def load_manifest(version_dir: PathLike) -> ModelManifest:
    """Read and validate ``<version_dir>/model.json``; also checks that it belongs to this directory
    (``version`` equals the directory name). Raises :class:`ManifestError`."""
    vdir = Path(version_dir)
    path = vdir / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: no {MANIFEST_NAME} (not a published version)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read ({exc})") from None
    try:
        manifest = ModelManifest.from_json(text)
    except ManifestError as exc:
        raise ManifestError(f"{vdir}: {exc}") from None
    if is_version_dirname(vdir.name) and int(vdir.name) != manifest.version:
        raise ManifestError(
            f"{path}: 'version' is {manifest.version} but the directory is version {vdir.name}"
        )
    return manifest


def write_manifest(directory: PathLike, manifest: ModelManifest) -> Path:
    """Validate ``manifest`` and write it as ``<directory>/model.json`` (write + fsync + rename)."""
    ModelManifest.from_dict(manifest.to_dict())  # refuse to write what readers would refuse
    path = Path(directory) / MANIFEST_NAME
    tmp = path.with_name(f".{MANIFEST_NAME}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
