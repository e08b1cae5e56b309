"""The precision switch end to end: ``ddrnet export --precisions`` writes and verifies each reduced
precision (records with precision, runtime, agreement and logit difference), the OpenVINO runtime runs
fp32/bf16/int8, and every refusal path names its cause: an unknown or unserved precision, a CPU
without bf16, a missing runtime, a missing file, a version not verified for the precision (the
server then refuses that model, counts it and serves the others)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference import precision as prec
from inference.runtimes.base import ModelFileError, RuntimeUnavailableError
from model import repository as repo
from tests.export.conftest import IMAGE_SIZE, NUM_CLASSES
from training.export import ExportError, ExportSpec, export_model

openvino = pytest.importorskip("openvino", reason="openvino (the openvino extra) is not installed")
NO_BF16 = {"fpu", "sse2", "avx2", "avx512f"}  # a CPU flag set without AVX512_BF16 / AMX


def _spec(checkpoint: Path, repository: Path, **kw) -> ExportSpec:
    base = {
        "checkpoint": checkpoint, "arch": "ddrnet23_slim", "repository": repository, "name": "slim",
        "num_classes": NUM_CLASSES, "preprocess": {"image_size": IMAGE_SIZE}, "formats": ("onnx",),
        "calibration_images": 10, "min_agreement": 0.5,
    }
    base.update(kw)
    return ExportSpec(**base)


@pytest.fixture(scope="module")
def all_precisions(checkpoint, train_dir, tmp_path_factory) -> Path:
    """A version exported with --precisions int8,bf16,fp16 (this CPU has bf16: the suite's machine)."""
    prec.check_cpu_bf16()  # the suite runs where bf16 can be verified; the refusals are tested below
    repository = tmp_path_factory.mktemp("repo")
    spec = _spec(checkpoint, repository, calibration_dir=train_dir, precisions=("int8", "bf16", "fp16"))
    return export_model(spec).version_dir


@pytest.fixture(scope="module")
def fp32_only(checkpoint, tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("repo32")
    return export_model(_spec(checkpoint, repository, name="plain")).version_dir


# -- the export ------------------------------------------------------------------------------------------


def test_export_records_every_reduced_precision(all_precisions):
    manifest = repo.load_manifest(all_precisions)
    files = (manifest.files["onnx_int8"], manifest.files["onnx_fp16"])
    assert files == ("model.int8.onnx", "model.fp16.onnx")
    records = manifest.verification
    expected = {"onnx_int8": ("int8", "onnxruntime", "model.int8.onnx"),
                "onnx_int8_openvino": ("int8", "openvino", "model.int8.onnx"),
                "onnx_bf16": ("bf16", "openvino", "model.onnx"),
                "onnx_fp16": ("fp16", "onnxruntime", "model.fp16.onnx")}
    for key, (precision, runtime, file) in expected.items():
        rec = records[key]
        assert (rec["precision"], rec["runtime"], rec["file"], rec["rule"]) == (precision, runtime, file,
                                                                                 "top1_agreement")
        assert rec["samples"] > 6  # the sample photos plus held-out training images
        assert 0.5 <= rec["top1_agreement"] <= 1.0 and 0.0 <= rec["max_abs_diff"] < 5.0
    # 16-bit floats stay close to float32; int8 moves logits further
    assert records["onnx_fp16"]["max_abs_diff"] < 0.1 and records["onnx_bf16"]["max_abs_diff"] < 0.5
    summary = prec.precision_summary(records)
    assert set(summary) == {"fp32", "int8", "bf16", "fp16"}
    assert summary["int8"]["runtimes"] == ["onnxruntime", "openvino"]
    assert prec.check_verified(records, "bf16", "slim", 1) == ["openvino"]


def test_export_refuses_what_it_cannot_verify(checkpoint, tmp_path, monkeypatch):
    with pytest.raises(ExportError, match=r"unknown precision\(s\) \['fp8'\]"):
        export_model(_spec(checkpoint, tmp_path, precisions=("fp8",)))
    with pytest.raises(ExportError, match=r"precision bf16 runs the version's model.onnx: keep onnx"):
        export_model(_spec(checkpoint, tmp_path, formats=("mindir",), precisions=("bf16",)))
    with pytest.raises(ExportError, match=r"precision int8 .* needs calibration images"):
        export_model(_spec(checkpoint, tmp_path, precisions=("int8",)))
    monkeypatch.setattr(prec, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": set(NO_BF16))
    with pytest.raises(ExportError, match=r"cannot verify bf16 on this machine: .*AVX512_BF16 or AMX"):
        export_model(_spec(checkpoint, tmp_path, precisions=("bf16",)))
    monkeypatch.setattr("inference.runtimes.is_installed", lambda name: name != "openvino")
    with pytest.raises(ExportError, match=r"verified by OpenVINO, which is not installed: .*\[openvino\]"):
        export_model(_spec(checkpoint, tmp_path, precisions=("bf16",)))
    assert repo.list_versions(tmp_path, "slim") == []


def test_export_fails_below_the_agreement(checkpoint, train_dir, tmp_path, monkeypatch):
    """A reduced precision whose top-1 disagrees is refused with its figures; nothing is published."""
    from training.export import checks

    real = checks._run_reduced

    def shuffled(runtime, staging, manifest, batch, precision):
        out = real(runtime, staging, manifest, batch, precision)
        return {k: v[:, ::-1].copy() for k, v in out.items()}  # a different top-1 everywhere

    monkeypatch.setattr(checks, "_run_reduced", shuffled)
    with pytest.raises(ExportError, match=r"onnx_bf16: top-1 agreement 0\.\d+ on \d+ images \(minimum 0\.5"):
        export_model(_spec(checkpoint, tmp_path, calibration_dir=train_dir, precisions=("bf16",)))
    assert repo.list_versions(tmp_path, "slim") == []


# -- the runtimes ----------------------------------------------------------------------------------------


def _photos(version_dir: Path) -> np.ndarray:
    from training.export.verify import sample_batch

    return sample_batch(repo.load_manifest(version_dir).preprocess)


def test_openvino_runs_fp32_bf16_int8(all_precisions):
    """Each precision through a real worker process, as it is served (MindSpore already ran CPU
    kernels in this test process, which keeps an in-process OpenVINO off bf16: see checks.py)."""
    import sys

    from training.export.verify import run_in_process, run_in_worker

    manifest = repo.load_manifest(all_precisions)
    batch = _photos(all_precisions)
    outs, infos = {}, {}
    for runtime, precision in (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"),
                               ("openvino", "int8"), ("onnxruntime", "fp16")):
        options = {"precision": precision}
        if runtime == "openvino":
            outs[runtime, precision], infos[runtime, precision] = run_in_worker(
                runtime, all_precisions, manifest, batch, python=sys.executable, threads=1, options=options)
        else:
            outs[runtime, precision] = run_in_process(runtime, all_precisions, manifest, batch, options)
    for precision in ("fp32", "bf16", "int8"):
        info = infos["openvino", precision]
        assert (info["runtime"], info["precision"]) == ("openvino", precision)
        assert info["inference_precision"].endswith("'bfloat16'>" if precision == "bf16" else "'float32'>")
        assert info["file"] == ("model.int8.onnx" if precision == "int8" else "model.onnx")
    reference = outs["onnxruntime", "fp32"]["full"]
    assert np.abs(outs["openvino", "fp32"]["full"] - reference).max() < 1e-3
    for key in (("openvino", "bf16"), ("openvino", "int8"), ("onnxruntime", "fp16")):
        full = outs[key]["full"]
        assert full.shape == reference.shape and np.isfinite(full).all()
        assert np.abs(full[:1] - outs[key]["single"]).max() < 0.05  # the batch axis is dynamic
    assert 0 < np.abs(outs["openvino", "bf16"]["full"] - reference).max() < 0.5  # really bf16, near fp32


def test_openvino_refusals_name_the_cause(all_precisions, fp32_only, monkeypatch):
    from inference.runtimes.openvino_rt import OpenVinoRuntime

    manifest = repo.load_manifest(all_precisions)
    with pytest.raises(RuntimeUnavailableError, match=r"serves device cpu only, not gpu .*Intel GPUs"):
        OpenVinoRuntime().load(str(all_precisions), manifest, "gpu", 0, {})
    with pytest.raises(RuntimeUnavailableError, match=r"serves fp32, bf16 and int8 on the CPU, not fp16"):
        OpenVinoRuntime().load(str(all_precisions), manifest, "cpu", 0, {"precision": "fp16"})
    with pytest.raises(ModelFileError, match=r"has no model.int8.onnx .* --precisions int8"):
        OpenVinoRuntime().load(str(fp32_only), repo.load_manifest(fp32_only), "cpu", 0, {"precision": "int8"})

    class NoBf16(OpenVinoRuntime):
        def capabilities(self, core):
            return ["FP32", "INT8"]

    with pytest.raises(RuntimeUnavailableError, match=r"OpenVINO reports no BF16 on this CPU .*refused"):
        NoBf16().load(str(all_precisions), manifest, "cpu", 0, {"precision": "bf16"})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with pytest.raises(RuntimeUnavailableError, match=r"ONEDNN_MAX_CPU_ISA=AVX2 .* unset it"):
        OpenVinoRuntime().load(str(all_precisions), manifest, "cpu", 0, {"precision": "bf16"})


def test_other_runtimes_refuse_precisions_they_do_not_serve(all_precisions, fp32_only):
    from inference.runtimes.mindspore_rt import MindSporeRuntime
    from inference.runtimes.onnxruntime_rt import OnnxRuntime

    manifest = repo.load_manifest(all_precisions)
    with pytest.raises(RuntimeUnavailableError, match=r"the mindspore runtime serves fp32 only, not bf16"):
        MindSporeRuntime().load(str(all_precisions), manifest, "cpu", 0, {"precision": "bf16"})
    with pytest.raises(ValueError, match=r"unknown precision 'bf16': expected fp32, fp16 or int8"):
        OnnxRuntime().load(str(all_precisions), manifest, "cpu", 0, {"precision": "bf16"})
    with pytest.raises(ModelFileError, match=r"has no model.fp16.onnx .* --precisions fp16"):
        OnnxRuntime().load(str(fp32_only), repo.load_manifest(fp32_only), "cpu", 0, {"precision": "fp16"})


def test_auto_takes_only_verified_runtimes(all_precisions, fp32_only, monkeypatch):
    from inference import runtimes

    manifest = repo.load_manifest(all_precisions)
    vdir = str(all_precisions)
    assert runtimes.auto_candidates(vdir, manifest, "bf16") == ["openvino"]
    assert runtimes.auto_candidates(vdir, manifest, "int8") == ["openvino", "onnxruntime"]
    assert runtimes.auto_candidates(vdir, manifest, "fp16", "gpu") == ["onnxruntime"]
    assert runtimes.auto_candidates(vdir, manifest, "fp16", "cpu") == []
    # int8 verified on ONNX Runtime only (a version exported before OpenVINO was installed)
    only_ort = dict(manifest.verification)
    only_ort.pop("onnx_int8_openvino")
    monkeypatch.setattr(manifest, "verification", only_ort)
    assert runtimes.auto_candidates(vdir, manifest, "int8") == ["onnxruntime"]
    plain = repo.load_manifest(fp32_only)
    with pytest.raises(RuntimeUnavailableError, match=r"no runtime for precision bf16 on cpu"):
        runtimes.select_runtime("auto", str(fp32_only), plain, "bf16")
    monkeypatch.setattr(runtimes, "is_installed", lambda name: name != "openvino")
    with pytest.raises(RuntimeUnavailableError, match=r"'openvino' package.*'ddrnet-serve\[openvino\]'"):
        runtimes.select_runtime("openvino", vdir, manifest)


# -- the switch's rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "runtime", "device", "message"),
    [
        ("fp16", "auto", "cpu", "precision fp16 is not served on device cpu: on gpu by onnxruntime, lite"),
        ("bf16", "onnxruntime", "cpu", "precision bf16 on cpu is served by openvino, not by 'onnxruntime'"),
        ("bf16", "auto", "gpu", "precision bf16 is not served on device gpu: on cpu by openvino"),
        ("int8", "mindspore", "cpu", "precision int8 on cpu is served by openvino, onnxruntime, not by"),
        ("fp64", "auto", "cpu", "unknown precision 'fp64': expected one of fp32, bf16, fp16, int8"),
    ],
)
def test_unserved_combinations_are_named(precision, runtime, device, message):
    with pytest.raises(prec.PrecisionError, match=message):
        prec.check_combination(precision, runtime, device)


def test_cpu_bf16_check(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx512f avx512_bf16\n\nprocessor : 1\n")
    assert "avx512_bf16" in prec.cpu_flags(str(cpuinfo))
    prec.check_cpu_bf16(prec.cpu_flags(str(cpuinfo)))
    prec.check_cpu_bf16({"amx_bf16"})
    with pytest.raises(prec.PrecisionError, match=r"needs a CPU with bf16 instructions .* fp32 or int8 here"):
        prec.check_cpu_bf16(set(NO_BF16))
    assert prec.cpu_flags(str(tmp_path / "missing")) is None  # not Linux: OpenVINO's own check decides


def test_server_settings_refuse_unservable_precisions(tmp_path, monkeypatch):
    from pydantic import ValidationError

    from server.settings import ServerSettings

    with pytest.raises(ValidationError, match=r"precision fp16 is not served on device cpu"):
        ServerSettings(model_repository=tmp_path, precision="fp16")
    with pytest.raises(ValidationError, match=r"bf16 on cpu is served by openvino, not by 'mindspore'"):
        ServerSettings(model_repository=tmp_path, precision="bf16", runtime="mindspore")
    assert ServerSettings(model_repository=tmp_path, precision="fp16", device="gpu").precision == "fp16"
    monkeypatch.setattr(prec, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": set(NO_BF16))
    with pytest.raises(ValidationError, match=r"precision bf16 needs a CPU with bf16 instructions"):
        ServerSettings(model_repository=tmp_path, precision="bf16")


def test_cli_serve_names_a_refused_precision(tmp_path, capsys):
    from cli.main import main

    assert main(["serve", "--model-repository", str(tmp_path), "--precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "precision fp16 is not served on device cpu" in err and "Traceback" not in err


# -- the server ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_server_serves_only_verified_precisions(all_precisions, fp32_only, tmp_path):
    """``ddrnet serve --precision bf16``: a bf16-verified version is served by OpenVINO in bf16; an
    fp32-only model published while it runs is refused with a log line naming the export option and
    counted, and the first keeps serving; started on the fp32-only model alone, the server stops with
    that message. Real server, real HTTP client."""
    import io
    import os
    import shutil
    import subprocess
    import sys

    import httpx
    from PIL import Image

    from clients import HttpClient
    from tests.support import server_fixtures as sf

    repository = tmp_path / "repo"
    shutil.copytree(all_precisions.parent, repository / "slim")
    server = sf.ServerProcess(repository, tmp_path / "server.log", "--precision", "bf16", "--instances", "1",
                              "--threads-per-instance", "1", "--poll-interval-s", "0.3").start()
    try:
        buf = io.BytesIO()
        Image.new("RGB", (80, 60), (200, 30, 30)).save(buf, format="PNG")
        with HttpClient(server.http_url.removeprefix("http://")) as client:
            result = client.classify(buf.getvalue(), model="slim", top_k=3)
            assert len(result.predictions) == 3 and result.model_version == "1"
            listing = httpx.get(f"{server.http_url}/v1/models").json()["models"]
            served = [(m["name"], m["runtime"], m["precision"]) for m in listing]
            assert served == [("slim", "openvino", "bf16")]
            shutil.copytree(fp32_only.parent, repository / "plain")
            failure = 'ddrnet_model_load_failures_total{model="plain",reason="unverified_precision"} 1.0'
            assert sf.wait_until(lambda: failure in httpx.get(f"{server.http_url}/metrics").text, 30)
            assert httpx.get(f"{server.http_url}/v2/models/plain/ready").status_code == 503  # not ready
            assert client.classify(buf.getvalue(), model="slim", top_k=1).model_version == "1"
        log = server.log_tail()
        assert "model plain version 1 was not verified for precision bf16" in log
        assert "ddrnet export ... --precisions bf16" in log and "Traceback" not in log
    finally:
        server.kill()
    shutil.rmtree(repository / "slim")
    command = [sys.executable, "-m", "cli.main", "serve", "--model-repository", str(repository),
               "--precision", "bf16", "--http-port", "0", "--grpc-port", "-1", "--poll-interval-s", "0"]
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=sf.REPO_ROOT, env=env)
    assert done.returncode != 0 and "not verified for precision bf16" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
