"""`ddrnet bench` against a real server, with short (1 s) windows: a closed-loop sweep over gRPC and
HTTP with ``--raw`` writing the table, JSON and plot; an open-loop run over OIP; option errors. The
figures are checked for consistency (not for speed): counts, percentile order, the server-side split
from /metrics, and L computed from the raw figures."""

from __future__ import annotations

import json

import pytest

from cli.main import main
from ops import bench_metrics
from ops.bench import Level, parse_levels
from tests.support.client_testutil import ServerProcess, build_onnx_repository, sample_images


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    build_onnx_repository(root)
    with ServerProcess(root, "--max-batch-size", "4") as proc:
        yield proc, root


def test_closed_loop_sweep_with_raw_writes_table_json_and_plot(served, tmp_path, capsys):
    server, root = served
    images = [str(p) for p in sample_images()[:2]]
    rc = main([
        "bench", "--server", server.grpc, "--protocol", "grpc,http", "--http-server", server.http,
        "--model", "tiny", "--concurrency", "1,3", "--warmup-s", "0.3", "--measure-s", "1",
        "--images", *images, "--raw", "--model-repository", str(root), "--raw-batch-sizes", "1,4",
        "--raw-s", "0.3", "--instances", "1", "--threads", "1", "--raw-placements", "2x1",
        "--json", str(tmp_path / "bench.json"),
        "--plot", str(tmp_path / "bench.png"),
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "model tiny v1 (onnxruntime)" in out
    for row in ("grpc      c=1", "grpc      c=3", "http      c=1", "http      c=3"):
        assert row in out
    assert "raw: onnxruntime fp32 v1, 1 instance(s) x 1 threads, in-process" in out
    assert "L[fp32] = 1 / (" in out
    assert "raw: onnxruntime fp32 v1, 2 instance(s) x 1 threads, 2 worker processes at once" in out

    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["model"] == "tiny" and report["version"] == "1" and report["platform"] == "onnxruntime"
    assert report["payload"]["images"] == images
    levels = report["levels"]
    assert [(lv["protocol"], lv["concurrency"]) for lv in levels] == [("grpc", 1), ("grpc", 3), ("http", 1),
                                                                       ("http", 3)]
    for level in levels:
        assert level["mode"] == "closed" and level["errors"] == {}
        assert level["requests"] > 0 and level["images"] == level["requests"]
        assert level["throughput_img_s"] == pytest.approx(level["images"] / level["window_s"], rel=1e-2)
        lat = level["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        split = level["server"]
        # the server saw at least the window's requests (the scrape after the window sees a few more)
        assert split["requests"] >= level["requests"] - level["concurrency"]
        assert split["mean_batch_size"] >= 1 and split["inference_ms_per_batch"] > 0
        assert split["preprocess_ms_per_request"] > 0 and split["queue_ms_per_image"] >= 0
        assert 0 < split["instance_busy"] <= 1.05
        expected = level["throughput_img_s"] / report["raw"]["limit_img_s"]
        assert level["served_over_L"] == pytest.approx(expected, rel=1e-3)
    placements = report["raw_placements"]
    assert [(r["instances"], r["threads"], r["where"]) for r in placements] == [
        (1, 1, "in-process"), (2, 1, "2 worker processes at once")]
    for raw in placements:
        assert [b["batch_size"] for b in raw["batches"]] == [1, 4] and raw["runtime"] == "onnxruntime"
        for b in raw["batches"]:  # every instance finishes a batch per ms_per_batch
            expected = 1000.0 * raw["instances"] * b["batch_size"] / b["ms_per_batch"]
            assert b["img_s"] == pytest.approx(expected, rel=1e-3)
        best = max(raw["batches"], key=lambda b: b["img_s"])
        assert raw["best_batch_size"] == best["batch_size"]
        assert raw["model_ms_per_image"] == pytest.approx(1000.0 / best["img_s"], rel=1e-3)
        assert raw["limit_img_s"] == pytest.approx(
            1000.0 / (raw["model_ms_per_image"] + raw["preprocess_ms_per_image"]), rel=1e-3
        )
    assert report["raw"] == max(placements, key=lambda r: r["limit_img_s"])  # L: the fastest placement
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_open_loop_over_oip(served, tmp_path, capsys):
    server, _ = served
    rc = main([
        "bench", "--server", server.grpc, "--protocol", "oip-grpc", "--model", "tiny",
        "--metrics-url", f"http://{server.http}/metrics", "--request-rate", "20",
        "--request-distribution", "poisson", "--batch-size", "2", "--warmup-s", "0.2", "--measure-s", "1",
        "--json", str(tmp_path / "open.json"),
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "oip-grpc  r=20/s" in out
    (level,) = json.loads((tmp_path / "open.json").read_text())["levels"]
    assert level["mode"] == "open" and level["request_rate_target"] == 20
    assert level["requests"] > 0 and level["images"] == 2 * level["requests"]
    assert level["server"]["requests"] > 0


def test_metrics_split_from_two_scrapes():
    before = bench_metrics.parse(
        'ddrnet_batch_size_sum{model="m",version="1"} 10\nddrnet_batch_size_count{model="m",version="1"} 5\n'
        'ddrnet_inference_duration_seconds_sum{model="m",version="1"} 1.0\n'
        'ddrnet_inference_duration_seconds_count{model="m",version="1"} 5\n'
        'ddrnet_batch_size_sum{model="other",version="1"} 99\n'
    )
    after = bench_metrics.parse(
        'ddrnet_batch_size_sum{model="m",version="1"} 30\nddrnet_batch_size_count{model="m",version="1"} 10\n'
        'ddrnet_inference_duration_seconds_sum{model="m",version="1"} 1.5\n'
        'ddrnet_inference_duration_seconds_count{model="m",version="1"} 10\n'
        'ddrnet_batch_size_sum{model="m",version="2"} 2\nddrnet_batch_size_count{model="m",version="2"} 1\n'
    )
    split = bench_metrics.split(before, after, "m", window_s=2.0)
    assert split["mean_batch_size"] == pytest.approx(22 / 6)
    assert split["inference_ms_per_batch"] == pytest.approx(100.0)
    assert split["inference_ms_per_image"] == pytest.approx(500.0 / 22)
    assert split["instance_busy"] == pytest.approx(0.25)
    assert split["queue_ms_per_image"] is None


def test_level_parsing():
    assert parse_levels("1,4,16", None) == [Level(concurrency=1), Level(concurrency=4), Level(concurrency=16)]
    assert parse_levels(None, "5,7.5", "poisson") == [Level(rate=5.0, distribution="poisson"),
                                                      Level(rate=7.5, distribution="poisson")]
    for bad in (("0", None), ("x", None), (None, "-1"), ("1", "2")):
        with pytest.raises(ValueError):
            parse_levels(*bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protocol", "smtp"], "--protocol: unknown smtp"),
        (["--concurrency", "0"], "--concurrency values must be positive integers"),
        (["--raw"], "--raw needs --model-repository"),
        (["--raw", "--model-repository", ".", "--raw-placements", "2x"],
         "--raw-placements must be INSTANCESxTHREADS"),
        (["--raw", "--model-repository", ".", "--instances", "0"], "--instances must be at least 1, got 0"),
        (["--measure-s", "0"], "--measure-s must be in (0, 3600]"),
        (["--server", "127.0.0.1:9", "--protocol", "grpc,http"], "needs the server's http address"),
        (["--images", "/no/such/dir"], "--images: nothing found at /no/such/dir"),
    ],
)
def test_option_errors(args, message, capsys):
    assert main(["bench", *args]) == 2
    _, err = capsys.readouterr()
    assert message in err and "Traceback" not in err


def test_raw_placements_follow_the_server_defaults(monkeypatch):
    """The server's own placement first, then the alternatives; a --runtime-python worker (Lite 2.0,
    one thread) is compared with one single-threaded instance, not with a thread count it ignores."""
    import argparse
    import sys

    from cli import bench as cli_bench
    from inference import placement as placement_module

    monkeypatch.setattr(placement_module, "available_cores", lambda: 2)
    parser = argparse.ArgumentParser()
    cli_bench.add_arguments(parser)

    def placements(*argv: str) -> list[tuple[int, int]]:
        return cli_bench.raw_placements(parser.parse_args(list(argv)))

    assert placements() == [(1, 2), (2, 1)]
    assert placements("--instances", "2") == [(2, 1), (1, 2)]
    assert placements("--runtime-python", sys.executable) == [(2, 1), (1, 1)]
    assert placements("--raw-placements", "2x1,1x2,4x1") == [(1, 2), (2, 1), (4, 1)]
