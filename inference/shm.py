"""Shared-memory tensors between the server and its worker processes.

A :class:`ShmArray` is a fixed-size numpy array whose memory is a file in ``/dev/shm`` mapped with
``mmap`` by both processes: the server writes a batch into the input array, the worker runs its
runtime on a view of it and writes the logits into the output array, and no tensor bytes cross the
control pipe.

Why file-backed mmap and not ``multiprocessing.shared_memory``: the worker may run under Python 3.7
(PyPI's mindspore-lite), which lacks that module (3.8+); and its resource tracker would unlink a
segment it believes leaked when an unrelated process (the other interpreter) attached it. A named
file in tmpfs is what ``shared_memory`` uses underneath on Linux anyway (``shm_open`` is a file in
``/dev/shm``), works the same under every Python, and ``mmap`` gives zero-copy ``np.ndarray`` views.

The creating side owns the file: it unlinks it as soon as the worker reports it has mapped it
(:meth:`ShmArray.unlink`), so nothing is left in ``/dev/shm`` even when a process is SIGKILLed
later; the mappings stay valid until both sides close them. A server killed in the short window
between creating a file and its worker mapping it leaves the file behind: :func:`remove_stale`
(run at server start-up) removes those of processes that no longer exist. Python 3.7 compatible.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import tempfile
import uuid
from typing import Any

import numpy as np

SHM_DIR = "/dev/shm"
PREFIX = "ddrnet-"


def default_dir() -> str:
    """``/dev/shm`` (RAM-backed) where it exists, else the temp directory (still page-cache backed)."""
    return SHM_DIR if os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK) else tempfile.gettempdir()


def _reserve(fd: int, nbytes: int, directory: str) -> None:
    """Size the file and claim its pages now: a tmpfs that is too small (Docker's /dev/shm is 64 MiB by
    default) then fails here with a clear error, instead of SIGBUS at the first write into the map."""
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"no room for {nbytes} bytes of shared memory in {directory} (enlarge it, e.g. "
                "docker run --shm-size, or choose another directory)",
            ) from None
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        os.ftruncate(fd, nbytes)  # a file system without fallocate


def remove_stale(directory: str | None = None) -> list[str]:
    """Remove the shared-memory files of servers that are gone: ``ddrnet-<pid>-*`` files of this user
    whose creating process no longer exists (a server SIGKILLed between creating a file and handing it
    to its worker leaves one behind; nothing else does). Files of live processes are never touched.
    Returns the paths removed; the server calls this at start-up."""
    directory = directory or default_dir()
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        parts = name[len(PREFIX):].split("-", 1) if name.startswith(PREFIX) else []
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        path = os.path.join(directory, name)
        try:
            if os.stat(path).st_uid != os.getuid() or _alive(int(parts[0])):
                continue
            os.unlink(path)
            removed.append(path)
        except OSError:
            continue
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class ShmArray:
    """A numpy array of ``shape``/``dtype`` living in a memory-mapped file ``path``."""

    def __init__(self, path: str, shape: tuple[int, ...], dtype: str, mm: mmap.mmap, owner: bool) -> None:
        self.path = path
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self._mmap: mmap.mmap | None = mm
        self.owner = owner
        self.array: np.ndarray = np.ndarray(self.shape, dtype=self.dtype, buffer=mm)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @classmethod
    def create(cls, shape: tuple[int, ...], dtype: str = "float32", directory: str | None = None) -> ShmArray:
        """Create, reserve and map a new zero-filled file; the caller owns and must unlink it."""
        directory = directory or default_dir()
        nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        path = os.path.join(directory, f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _reserve(fd, nbytes, directory)
            mm = mmap.mmap(fd, nbytes)
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)  # the mapping keeps the memory; the descriptor is not needed
        return cls(path, shape, dtype, mm, owner=True)

    @classmethod
    def attach(cls, path: str, shape: tuple[int, ...], dtype: str = "float32") -> ShmArray:
        """Map an existing file created by the other process (which still owns it)."""
        nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < nbytes:
                raise ValueError(f"shared memory file {path} holds {size} bytes, {nbytes} expected")
            mm = mmap.mmap(fd, nbytes)
        finally:
            os.close(fd)
        return cls(path, shape, dtype, mm, owner=False)

    def spec(self) -> dict[str, Any]:
        """What the other process needs to :meth:`attach` (sent in the worker's load message)."""
        return {"path": self.path, "shape": list(self.shape), "dtype": self.dtype.name}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ShmArray:
        return cls.attach(str(spec["path"]), tuple(spec["shape"]), str(spec["dtype"]))

    def unlink(self) -> None:
        """Remove the file name (owner only); existing mappings stay valid. Idempotent."""
        if self.owner:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def close(self) -> None:
        """Drop the array view and the mapping (and the file, for the owner). Idempotent.

        Views handed out earlier must not be used afterwards; the server copies results out first."""
        self.unlink()
        self.array = np.empty((0,), dtype=self.dtype)
        mm, self._mmap = self._mmap, None
        if mm is not None:
            # BufferError: a view is still exported somewhere; GC unmaps it later.
            with contextlib.suppress(BufferError):
                mm.close()

    def __enter__(self) -> ShmArray:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
