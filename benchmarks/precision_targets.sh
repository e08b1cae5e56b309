#!/bin/bash
# Issue 16's precision table in one run: DDRNet-23-slim and DDRNet-23 at 224 (randomly initialised,
# 1000 classes: speed does not depend on the weights; agreement on such a network is a sanity check
# only, the trained figures come from the digits demo) exported with --precisions int8,bf16, each
# precision served with the server's defaults (--precision P, its runtime) and driven by
# `ddrnet bench --raw` over gRPC at concurrency 8 and 16 on real JPEGs; --raw measures the same
# precision's L (runtime, placements as the server's bench does). Prints `uptime` around each run and
# the table (img/s, p50/p99, served / L, ratio to served float32 on ONNX Runtime, agreement).
#
#   benchmarks/precision_targets.sh [OUT_DIR]   (default: precision-targets; ports 18642/18643)
#
# Needs the openvino extra and a CPU with bf16 (AVX512_BF16 or AMX) for the bf16 rows.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # python -m benchmarks.* from any directory
OUT=${1:-precision-targets}
REPO="$OUT/repo224"
mkdir -p "$OUT"
python -m benchmarks.sample_jpegs "$OUT/photos" || exit 1
for arch in ddrnet23_slim ddrnet23; do
  [ -f "$REPO/$arch/1/model.json" ] && continue
  python -c "import mindspore as ms, model; ms.set_seed(0); ms.save_checkpoint(model.create_model('$arch', num_classes=1000), '$OUT/$arch.ckpt')"
  # --min-agreement 0: a random network's agreement is not a property of the precision (speed-only export).
  ddrnet export --checkpoint "$OUT/$arch.ckpt" --arch "$arch" --repository "$REPO" --name "$arch" \
    --formats onnx --precisions int8,bf16 --calibration-dir "$OUT/photos" --calibration-images 16 \
    --min-agreement 0 || exit 1
done

group() { # tag model runtime precision
  local tag=$1 model=$2 rt=$3 prec=$4
  ddrnet serve --model-repository "$REPO" --models "$model" --http-port 18642 --grpc-port 18643 \
    --poll-interval-s 0 --runtime "$rt" --precision "$prec" > "$OUT/$tag.serve.log" 2>&1 &
  local spid=$!
  for _ in $(seq 1 240); do curl -sf http://127.0.0.1:18642/v2/health/ready >/dev/null && break; sleep 1; done
  echo "== $tag before: $(uptime)"
  ddrnet bench --server 127.0.0.1:18643 --protocol grpc --http-server 127.0.0.1:18642 --model "$model" \
    --images "$OUT/photos" --concurrency 8,16 --warmup-s 2 --measure-s 8 --raw --model-repository "$REPO" \
    --runtime "$rt" --precision "$prec" --raw-precisions "$prec" --raw-s 2 --json "$OUT/$tag.json" \
    2> "$OUT/$tag.bench.log" > "$OUT/$tag.txt" || echo "   bench failed: see $OUT/$tag.bench.log"
  echo "   after: $(uptime)"
  kill $spid; wait $spid
}
for model in ddrnet23_slim ddrnet23; do
  group "${model}_ort_fp32" "$model" onnxruntime fp32
  group "${model}_ov_fp32" "$model" openvino fp32
  group "${model}_ov_bf16" "$model" openvino bf16
  group "${model}_ort_int8" "$model" onnxruntime int8
  group "${model}_ov_int8" "$model" openvino int8
done
python -m benchmarks.precision_table "$OUT"
