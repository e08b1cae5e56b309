#!/bin/bash
# GPU readiness check for issue 16, one prepared run of at most ~8 minutes on a machine with an NVIDIA
# GPU (the `device` tool's H200): installs the project with onnxruntime-gpu (and TensorRT when
# WITH_TRT=1), exports a randomly initialised DDRNet-23 at 224 (1000 classes; speed does not depend on
# the weights) with --precisions fp16, serves it on the GPU with ONNX Runtime in fp32 and then fp16,
# drives each with `ddrnet bench --raw` over gRPC at concurrency 8 and 16, and prints served img/s,
# p50/p99, served / L and the fp16 record's agreement with float32. Nothing here is used by CI.
#
#   OUT=device-check WITH_TRT=0 bash benchmarks/device_check.sh
#
# Every phase is bounded (`timeout`); a missing GPU, driver or wheel stops the script with a message
# naming it (exit 3), never a silent CPU run.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-${ROOT}/device-check}
WITH_TRT=${WITH_TRT:-0}
mkdir -p "$OUT"
cd "$ROOT" || exit 1
say() { echo "device_check: $*"; }
fail() { say "$*" >&2; exit 3; }

command -v nvidia-smi >/dev/null || fail "no nvidia-smi: this machine has no NVIDIA driver"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || fail "nvidia-smi failed"
PY=$(command -v python3.11 || command -v python3)
say "python: $($PY --version 2>&1), $(nproc) cores; $(uptime)"

# 1. Environment (about 2-3 minutes): the project, then onnxruntime-gpu with its CUDA/cuDNN wheels in
#    place of the CPU onnxruntime (both install the same `onnxruntime` module).
if [ ! -x "$OUT/venv/bin/python" ]; then
  timeout 300 "$PY" -m venv "$OUT/venv" || fail "cannot create a venv"
  timeout 300 "$OUT/venv/bin/pip" install -q -e '.[train]' || fail "pip install -e '.[train]' failed (no package registry?)"
  "$OUT/venv/bin/pip" uninstall -q -y onnxruntime
  timeout 300 "$OUT/venv/bin/pip" install -q "onnxruntime-gpu[cuda,cudnn]>=1.20,<2" \
    || fail "cannot install onnxruntime-gpu[cuda,cudnn]"
  if [ "$WITH_TRT" = 1 ]; then
    timeout 300 "$OUT/venv/bin/pip" install -q "tensorrt-cu12>=10,<11" || say "tensorrt-cu12 not installed: CUDA EP only"
  fi
fi
export PATH="$OUT/venv/bin:$PATH"
python - <<'PY' || fail "onnxruntime has no CUDAExecutionProvider here"
import onnxruntime as ort
providers = ort.get_available_providers()
print("device_check: onnxruntime", ort.__version__, providers)
assert "CUDAExecutionProvider" in providers
PY

# 2. Photos and the export (about 1 minute).
python -m benchmarks.sample_jpegs "$OUT/photos" || exit 1
REPO="$OUT/repo"
if [ ! -f "$REPO/ddrnet23/1/model.json" ]; then
  timeout 120 python -c "import mindspore as ms, model; ms.set_seed(0); ms.save_checkpoint(model.create_model('ddrnet23', num_classes=1000), '$OUT/ddrnet23.ckpt')" \
    || fail "cannot write the checkpoint"
  timeout 240 ddrnet export --checkpoint "$OUT/ddrnet23.ckpt" --arch ddrnet23 --repository "$REPO" \
    --name ddrnet23 --formats onnx --precisions fp16 --calibration-dir "$OUT/photos" --min-agreement 0 \
    || fail "export failed"
fi

# 3. Serve and bench each precision on the GPU (about 1 minute each).
for prec in fp32 fp16; do
  ddrnet serve --model-repository "$REPO" --http-port 18652 --grpc-port 18653 --poll-interval-s 0 \
    --runtime onnxruntime --device gpu --precision "$prec" --instances 1 --max-batch-size 16 \
    > "$OUT/serve_$prec.log" 2>&1 &
  spid=$!
  for _ in $(seq 1 120); do curl -sf http://127.0.0.1:18652/v2/health/ready >/dev/null && break; sleep 1; done
  curl -sf http://127.0.0.1:18652/v2/health/ready >/dev/null || { tail -20 "$OUT/serve_$prec.log"; kill $spid; fail "server ($prec) not ready"; }
  say "$prec served: $(curl -s http://127.0.0.1:18652/v1/models)"
  timeout 150 ddrnet bench --server 127.0.0.1:18653 --protocol grpc --http-server 127.0.0.1:18652 \
    --model ddrnet23 --images "$OUT/photos" --concurrency 8,16 --warmup-s 3 --measure-s 10 --raw \
    --model-repository "$REPO" --runtime onnxruntime --device gpu --precision "$prec" \
    --raw-precisions "$prec" --raw-placements 1x4 --raw-batch-sizes 1,8,16 --raw-s 2 \
    --json "$OUT/bench_$prec.json" > "$OUT/bench_$prec.txt" 2> "$OUT/bench_$prec.err" \
    || say "bench $prec failed: $(tail -3 "$OUT/bench_$prec.err")"
  kill $spid; wait $spid 2>/dev/null
done

# 4. The figures.
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rec = json.loads((out / "repo/ddrnet23/1/model.json").read_text())["verification"].get("onnx_fp16", {})
print(f"fp16 verification: top-1 agreement {rec.get('top1_agreement')} on {rec.get('samples')} images, "
      f"max |logit diff| {rec.get('max_abs_diff')}")
print("| precision | c | img/s | p50 ms | p99 ms | served / L | L img/s |")
print("|---|---|---|---|---|---|---|")
for prec in ("fp32", "fp16"):
    path = out / f"bench_{prec}.json"
    if not path.is_file():
        print(f"| {prec} | - | bench failed | | | | |")
        continue
    report = json.loads(path.read_text())
    limit = (report.get("raw") or {}).get("limit_img_s")
    for level in report["levels"]:
        lat = level["latency_ms"]
        print(f"| {prec} | {level['concurrency']} | {level['throughput_img_s']:.1f} | {lat['p50']:.1f} | "
              f"{lat['p99']:.1f} | {level.get('served_over_L', '-')} | {limit} |")
PY
say "done; $(uptime)"
