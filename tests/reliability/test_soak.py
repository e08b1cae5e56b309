"""The soak benchmark (``benchmarks/soak.py``) in miniature: half a minute of mixed valid and hostile
traffic while versions are hot-swapped, a worker is SIGKILLed and a half-written version appears. The
10-minute run and its figures are in RELIABILITY.md; this keeps the benchmark and the server honest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import soak

pytestmark = pytest.mark.timeout(300)


def test_short_soak_loses_nothing_and_answers_everything_correctly(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    rc = soak.main(["--minutes", "0.5", "--swap-every-s", "7", "--kill-every-s", "9", "--warmup-s", "4",
                    "--clients", "2", "--workdir", str(tmp_path / "work"), "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["wrong_answers"] == []
    assert report["undocumented_5xx"] == []
    assert report["lost"] == []
    assert report["unexpected"] == []
    assert report["shm_files_left"] == []
    assert report["exit_code"] == 0
    assert report["tracebacks_in_log"] == 0
    assert report["liveness"]["failed"] == 0
    # The chaos happened and the server healed: swaps, a kill, the broken version refused, the last
    # good version served.
    assert any("SIGKILLed" in e for e in report["events"])
    assert any("half written" in e for e in report["events"])
    assert report["server_counters"]["worker_restarts"] >= 1
    assert report["server_counters"]["load_failures"] >= 1
    assert report["served_versions_at_end"] == [str(report["last_good_version"])]
    assert report["last_good_version"] >= 3
    assert report["server_counters"]["answered_499"] >= 1
    # Every kind of traffic ran and was answered as documented.
    kinds = {k.split(":")[0] for k in report["outcomes"]}
    assert {"http raw", "http multipart", "http json", "http oip", "grpc classify", "grpc stream",
            "grpc oip", "bad huge pixel count", "bad gzip bomb"} <= kinds
    assert rc == 0
