"""The versioned model repository on disk: layout, listing, completeness checks and atomic publishing.

Layout::

    <repository>/<model_name>/<version>/model.json        # the manifest (``model.manifest``)
                                        model.mindir      # MindIR, dynamic batch dimension
                                        model.onnx        # ONNX, dynamic batch dimension
                                        model.ms          # MindSpore Lite model (optional)
                                        model_b<N>.mindir # fixed-batch MindIR files (optional)

Versions are directories named by a positive integer (``1``, ``2`` … no leading zeros). Anything else in
a model directory (hidden staging directories of exporters in progress, ``tmp``, ``3.bak``) is ignored.
A version is *complete* when its ``model.json`` parses and validates, and every file it lists exists with
the size and SHA-256 recorded in the manifest; the server serves the newest complete version only, so a
half-written or corrupted version is never served.

Publishing is atomic: an exporter writes into a hidden staging directory created *inside*
``<repository>/<model_name>/`` (same file system), fsyncs it, and renames it into place under an
exclusive lock, refusing to replace an existing version.

Standard library only, Python 3.7 syntax (like ``model.manifest``, which it builds on).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from model.manifest import (
    MANIFEST_NAME,
    FileChecksum,
    ManifestError,
    ModelManifest,
    PathLike,
    check_model_name,
    is_valid_model_name,
    is_version_dirname,
    load_manifest,
    positive_int,
    write_manifest,
)

LOG = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
LOCK_NAME = ".publish.lock"


class IncompleteVersionError(Exception):
    """A version directory is not servable: bad manifest, or a listed file missing or not as recorded."""


class VersionExistsError(FileExistsError):
    """Publishing was refused because the target version directory already exists."""


# ----------------------------------------------------------------------------------------------------
# checksums (cached: the server polls the repository, and re-hashing 100 MB files every poll is waste)

_HASH_CACHE: dict[tuple[str, int, int, int, int], str] = {}
_HASH_CACHE_LOCK = threading.Lock()


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_sha256(path: Path) -> str:
    st = path.stat()
    # A file replaced or rewritten changes inode, size or mtime, so the cached hash is never stale
    # for a version directory written once by an exporter.
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _HASH_CACHE_LOCK:
        cached = _HASH_CACHE.get(key)
    if cached is not None:
        return cached
    digest = sha256_file(path)
    with _HASH_CACHE_LOCK:
        if len(_HASH_CACHE) > 4096:
            _HASH_CACHE.clear()
        _HASH_CACHE[key] = digest
    return digest


def checksum_entry(path: PathLike) -> FileChecksum:
    p = Path(path)
    return FileChecksum(sha256=sha256_file(p), size=p.stat().st_size)


# ----------------------------------------------------------------------------------------------------
# reading a repository


def model_dir(repo: PathLike, name: str) -> Path:
    return Path(repo) / check_model_name(name)


def version_dir(repo: PathLike, name: str, version: int) -> Path:
    return model_dir(repo, name) / str(positive_int(version, "version"))


def list_models(repo: PathLike) -> list[str]:
    """Names of the model directories in ``repo`` (sorted); hidden and invalid names are ignored.
    A missing repository directory yields ``[]`` (the server keeps running when it vanishes)."""
    try:
        entries = list(os.scandir(repo))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.name for e in entries if is_valid_model_name(e.name) and e.is_dir())


def list_versions(repo: PathLike, name: str) -> list[int]:
    """Integer version directories of model ``name``, ascending; complete or not (see
    :func:`newest_complete_version`). Hidden, temporary and non-integer directories are ignored."""
    try:
        entries = list(os.scandir(model_dir(repo, name)))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(e.name) for e in entries if is_version_dirname(e.name) and e.is_dir())


def check_version(version_dir: PathLike, verify_hashes: bool = True) -> ModelManifest:
    """Return the manifest of a complete version or raise :class:`IncompleteVersionError` saying why.

    Complete: the manifest validates and every file it lists exists with the recorded size and (when
    ``verify_hashes``) SHA-256. Hashes are cached per (inode, size, mtime), so polling is cheap after
    the first check."""
    vdir = Path(version_dir)
    try:
        manifest = load_manifest(vdir)
    except ManifestError as exc:
        raise IncompleteVersionError(str(exc)) from None
    for filename in manifest.file_names():
        path = vdir / filename
        expected = manifest.checksums[filename]
        try:
            size = path.stat().st_size
        except OSError:
            raise IncompleteVersionError(f"{path}: listed in {MANIFEST_NAME} but missing") from None
        if size != expected.size:
            raise IncompleteVersionError(
                f"{path}: size {size} bytes, {MANIFEST_NAME} records {expected.size}"
            )
        if verify_hashes:
            try:
                actual = _cached_sha256(path)
            except OSError as exc:
                raise IncompleteVersionError(f"{path}: cannot read ({exc})") from None
            if actual != expected.sha256:
                raise IncompleteVersionError(f"{path}: sha256 {actual} differs from {MANIFEST_NAME}'s")
    return manifest


def iter_complete_versions(
    repo: PathLike, name: str, verify_hashes: bool = True
) -> Iterator[tuple[int, ModelManifest]]:
    """(version, manifest) of complete versions, newest first; incomplete ones are logged and skipped."""
    for version in reversed(list_versions(repo, name)):
        try:
            manifest = check_version(model_dir(repo, name) / str(version), verify_hashes=verify_hashes)
        except IncompleteVersionError as exc:
            LOG.warning("model %s version %d is not complete, skipped: %s", name, version, exc)
            continue
        if manifest.name != name:
            LOG.warning(
                "model %s version %d is skipped: its manifest names model %r", name, version, manifest.name
            )
            continue
        yield version, manifest


def newest_complete_version(repo: PathLike, name: str, verify_hashes: bool = True) -> int | None:
    """The highest complete version of ``name``, or None when there is none."""
    for version, _manifest in iter_complete_versions(repo, name, verify_hashes=verify_hashes):
        return version
    return None


def next_version(repo: PathLike, name: str) -> int:
    """One more than the highest existing version directory (complete or not), 1 for a new model."""
    versions = list_versions(repo, name)
    return versions[-1] + 1 if versions else 1


# ----------------------------------------------------------------------------------------------------
# writing a repository


def create_staging_dir(repo: PathLike, name: str) -> Path:
    """A fresh hidden directory inside ``<repo>/<name>/`` (created as needed) for an exporter to write
    into; same file system as the versions, so :func:`publish_version` can rename it atomically."""
    mdir = model_dir(repo, name)
    mdir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=str(mdir)))


def _make_readable(directory: Path) -> None:
    """Directories 0755, files 0644: mkdtemp creates 0700 and exporters (ms.export, the Lite
    converter) write 0400 files, while server workers may run as another user."""
    for root, dirs, files in os.walk(directory):
        os.chmod(root, 0o755)
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


def remove_stale_staging(repo: PathLike, name: str, max_age_s: float = 24 * 3600.0) -> list[Path]:
    """Delete staging directories older than ``max_age_s`` (left by crashed exporters)."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(model_dir(repo, name)))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time()
    for entry in entries:
        if (
            entry.name.startswith(STAGING_PREFIX)
            and entry.is_dir(follow_symlinks=False)
            and now - entry.stat(follow_symlinks=False).st_mtime > max_age_s
        ):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _fsync_path(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    for root, _dirs, files in os.walk(directory):
        for filename in files:
            _fsync_path(Path(root) / filename)
        _fsync_path(Path(root))


class _PublishLock:
    """Exclusive ``flock`` on ``<repo>/<name>/.publish.lock``: serialises exporters choosing and
    claiming version numbers (rename(2) would silently replace an *empty* existing directory, so a
    check-then-rename must not race)."""

    def __init__(self, mdir: Path) -> None:
        self.path = mdir / LOCK_NAME
        self.fd = -1

    def __enter__(self) -> _PublishLock:
        self.fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def publish_version(
    staging_dir: PathLike, repo: PathLike, name: str, version: int | None = None
) -> int:
    """Atomically rename ``staging_dir`` to ``<repo>/<name>/<version>`` and return the version.

    ``staging_dir`` must come from :func:`create_staging_dir` for the same model and hold a valid
    ``model.json`` whose files are all present as recorded. With ``version=None`` the next integer is
    chosen under the lock and written into the staged manifest. Raises :class:`VersionExistsError`
    when the version exists (the staging directory is left for the caller to remove)."""
    staging = Path(staging_dir).resolve()
    mdir = model_dir(repo, name).resolve()
    if staging.parent != mdir or not staging.name.startswith(STAGING_PREFIX):
        raise ValueError(f"staging directory {staging} is not a staging directory inside {mdir}")
    if version is not None:
        positive_int(version, "version")
    with _PublishLock(mdir):
        chosen = next_version(repo, name) if version is None else version
        target = mdir / str(chosen)
        if os.path.lexists(str(target)):
            raise VersionExistsError(f"model {name!r} version {chosen} already exists at {target}")
        manifest = check_version(staging, verify_hashes=True)
        if manifest.name != name:
            raise ManifestError(
                f"staged {MANIFEST_NAME} names model {manifest.name!r}, publishing as {name!r}"
            )
        if manifest.version != chosen:
            manifest.version = chosen
            write_manifest(staging, manifest)
        _make_readable(staging)
        _fsync_tree(staging)
        try:
            os.rename(str(staging), str(target))
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise VersionExistsError(f"model {name!r} version {chosen} already exists") from None
            raise
        _fsync_path(mdir)
    LOG.info("published model %s version %d at %s", name, chosen, target)
    return chosen
