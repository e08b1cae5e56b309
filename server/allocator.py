"""The C allocator setting that makes the decode budget hold for the process's memory, not only for
the bytes alive at once.

:class:`~server.preprocessing.DecodeBudget` bounds the image memory alive at once. glibc's malloc,
left to itself, raises its mmap threshold after the first large block is freed, so later image blocks
(Pillow allocates 16 MiB blocks) come from per-thread arenas and stay resident after they are freed:
measured with ``benchmarks/hostile.py`` (4 concurrent requests of 4 × 36-megapixel 16-bit PNGs,
8 decode threads, a 572 MiB budget), the server's peak RSS grew 997 MiB; with the threshold fixed at
4 MiB it grew 509 MiB. Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``, which also stops the
dynamic adjustment) makes every block of 4 MiB or more an mmap returned to the system when freed; the
cost is an mmap/munmap pair per large block, small beside decoding it.

There is no library for this one call; ``ctypes`` reaches glibc's documented ``mallopt``. Nothing is
changed when ``MALLOC_MMAP_THRESHOLD_`` is set (the operator chose) or the C library is not glibc
(musl and others do not keep freed large blocks the same way).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc malloc.h
MMAP_THRESHOLD_BYTES = 4 << 20
_applied: bool | None = None


def return_large_blocks_to_the_system() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES` (once per process). Returns whether
    it is in effect from this call; False (with the reason logged at debug) where it is not applied."""
    global _applied
    if _applied is not None:
        return _applied
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        log.debug("MALLOC_MMAP_THRESHOLD_ is set: the allocator is left as configured")
        _applied = False
    elif platform.libc_ver()[0] != "glibc":
        log.debug("not glibc (%s): mmap threshold left alone", platform.libc_ver()[0] or "unknown")
        _applied = False
    else:
        try:
            _applied = bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
        except (OSError, AttributeError) as exc:
            log.debug("mallopt unavailable: %s", exc)
            _applied = False
    return _applied
