"""CPU kernel selection for MindSpore 2.10 (imports no MindSpore).

MindSpore 2.10's CPU convolutions go through oneDNN 3.10. When oneDNN may use AVX-512 (as on this
machine's AMD EPYC), it runs MindSpore's plain NCHW 3x3 convolutions with ``jit_uni_ncsp:conv+ref``,
a reference kernel: measured here (ONEDNN_VERBOSE) at ~2 s for one 64→64 3x3 conv on 56x56, DDRNet-23-slim
at 0.2 img/s and a 64x64 training step 13x slower than needed. Capped at AVX2, oneDNN picks its
im2col + JIT GEMM kernel (``x64:gemm:jit``): the same network runs ~50x faster (see BENCHMARKS.md).

oneDNN reads ``ONEDNN_MAX_CPU_ISA`` once, when it creates its first primitive, so this must run
before the first MindSpore CPU convolution of the process (importing MindSpore itself is fine).
An explicit ``ONEDNN_MAX_CPU_ISA`` in the environment is left alone.
"""

from __future__ import annotations

import os

DEFAULT_MAX_CPU_ISA = "AVX2"


def configure_onednn() -> str:
    """Cap oneDNN's instruction set (unless the environment already sets it); returns the value in force."""
    return os.environ.setdefault("ONEDNN_MAX_CPU_ISA", DEFAULT_MAX_CPU_ISA)
