"""server/allocator.py: freed image blocks go back to the system, so the decode budget bounds RSS."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.support.server_fixtures import REPO_ROOT

SCRIPT = textwrap.dedent("""
    import sys, threading
    from PIL import Image
    if sys.argv[1] == "on":
        from server.allocator import return_large_blocks_to_the_system
        assert return_large_blocks_to_the_system()
    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    base = rss()
    barrier = threading.Barrier(8)
    def work():
        barrier.wait()
        for _ in range(3):  # what a decode thread does to a 16-bit image, 18 megapixels
            im = Image.new("I;16", (6000, 3000), 1000)
            im = im.point(lambda v: v * (1 / 257)).convert("L")
            del im
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(rss() - base)
""")


def retained_mib(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_freed_image_blocks_of_eight_decode_threads_leave_the_process() -> None:
    # Without the setting glibc keeps tens of MiB of freed blocks in its per-thread arenas (the
    # control); with it what 8 threads decoded is given back.
    assert retained_mib("off") >= 16
    assert retained_mib("on") < 16


def test_an_operators_malloc_setting_is_left_alone(monkeypatch) -> None:
    from server import allocator

    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert allocator.return_large_blocks_to_the_system() is False
    monkeypatch.setattr(allocator, "_applied", None)
