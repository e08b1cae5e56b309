"""model.ms_device: setting the device again after kernels ran is fine when it is the same device."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_same_device_after_kernels_ran_is_a_no_op_and_another_device_still_raises() -> None:
    done = _run("""
        import mindspore as ms, numpy as np
        from model.ms_device import use_device
        x = ms.Tensor(np.ones(3, np.float32))
        assert float((x + x).sum().asnumpy()) == 6.0   # the runtime is initialised, on CPU
        try:
            ms.set_device("CPU", 0)
        except RuntimeError:
            print("plain set_device raised")
        use_device("CPU", 0)
        print("use_device ok")
        try:
            use_device("GPU", 0)
        except (RuntimeError, ValueError) as exc:
            print("other device raised")
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:3] == ["plain set_device raised", "use_device ok", "other device raised"]
