#!/bin/bash
# Issue 7's target tables in one run: for DDRNet-23-slim and DDRNet-23 at 224 (randomly initialised,
# 1000 classes: speed does not depend on the weights) and each runtime here (ONNX Runtime fp32 and
# int8, MindSpore, MindSpore Lite 2.0.0 under .venv-lite37 when it exists), serve the model with the
# server's defaults and run `ddrnet bench --raw` over gRPC and HTTP at concurrency 1, 8 and 16 on real
# JPEGs; --raw measures the server's placement and 1 x CORES (Lite: 1 x 1), L from the fastest. Then
# one throughput-vs-p99 sweep over concurrency 1..32 with its plot. Prints `uptime` around each run.
#
#   benchmarks/perf_targets.sh [OUT_DIR]        (default: perf-targets; ports 18632/18633 on 127.0.0.1)
#
# OUT_DIR gets the model repository (repo224/), the JPEG payload (photos/), each bench's JSON and log.
set -u
OUT=${1:-perf-targets}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # python -m benchmarks.* from any directory
LITE_PY="$ROOT/.venv-lite37/bin/python"
REPO="$OUT/repo224"
mkdir -p "$OUT"

# The payload: the sample photos of scikit-learn and scikit-image as JPEGs (quality 90).
python -m benchmarks.sample_jpegs "$OUT/photos" || exit 1

formats=mindir,onnx,onnx_int8
[ -x "$LITE_PY" ] && formats="$formats,lite"
for arch in ddrnet23_slim ddrnet23; do
  [ -f "$REPO/$arch/1/model.json" ] && continue
  python -c "import mindspore as ms, model; ms.set_seed(0); ms.save_checkpoint(model.create_model('$arch', num_classes=1000), '$OUT/$arch.ckpt')"
  # --int8-min-agreement 0: a random network's agreement means nothing (speed-only export).
  ddrnet export --checkpoint "$OUT/$arch.ckpt" --arch "$arch" --repository "$REPO" --name "$arch" \
    --formats "$formats" --calibration-dir "$OUT/photos" --calibration-images 16 --int8-min-agreement 0 \
    || exit 1
done

group() { # tag model runtime precision concurrency [serve/raw args...]
  local tag=$1 model=$2 rt=$3 prec=$4 levels=$5; shift 5
  local rawextra=()
  [ "$rt" = lite ] && rawextra=(--runtime-python "$LITE_PY" --raw-placements 1x1)
  ddrnet serve --model-repository "$REPO" --models "$model" --http-port 18632 --grpc-port 18633 \
    --poll-interval-s 0 --runtime "$rt" --precision "$prec" "$@" > "$OUT/$tag.serve.log" 2>&1 &
  local spid=$!
  for _ in $(seq 1 240); do curl -sf http://127.0.0.1:18632/v2/health/ready >/dev/null && break; sleep 1; done
  echo "== $tag before: $(uptime)"
  ddrnet bench --server 127.0.0.1:18633 --protocol grpc,http --http-server 127.0.0.1:18632 --model "$model" \
    --images "$OUT/photos" --concurrency "$levels" --warmup-s 2 --measure-s 8 --raw --model-repository "$REPO" \
    --runtime "$rt" --precision "$prec" --raw-s 3 "${rawextra[@]}" --json "$OUT/$tag.json" \
    ${PLOT:+--plot "$OUT/$tag.png"} 2> "$OUT/$tag.bench.log"
  echo "   after: $(uptime)"
  kill $spid; wait $spid
}
lite=()
[ -x "$LITE_PY" ] && lite=(--runtime-python "$LITE_PY")
for model in ddrnet23_slim ddrnet23; do
  short=${model/ddrnet23_slim/slim224}; short=${short/ddrnet23/d23_224}
  group "perf_${short}_ort_fp32" "$model" onnxruntime fp32 1,8,16
  group "perf_${short}_ort_int8" "$model" onnxruntime int8 1,8,16
  group "perf_${short}_ms_fp32" "$model" mindspore fp32 1,8,16
  [ -x "$LITE_PY" ] && group "perf_${short}_lite_fp32" "$model" lite fp32 1,8,16 "${lite[@]}"
done
PLOT=1 group perf_slim224_ort_fp32_sweep ddrnet23_slim onnxruntime fp32 1,2,4,8,16,32
