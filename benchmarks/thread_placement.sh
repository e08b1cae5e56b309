#!/bin/bash
# Thread placement (issue 7, item 4): serve one model with each instances x threads setting, one
# after the other, and load it with `ddrnet bench` (gRPC, concurrency 8); prints each bench table
# with the load average before and after. The measurement behind server.settings.derive_defaults.
#
#   benchmarks/thread_placement.sh REPOSITORY MODEL [OUT_DIR]
#
# LEVELS (default 8): the bench's --concurrency levels; IMAGES: payload files/folder (default: the
# bench's sample photos); ONLY: a space-separated subset of the run tags below.
# REPOSITORY/MODEL: an exported version with model.mindir, model.onnx and model.ms (Lite runs
# under .venv-lite37 when it exists). Ports 18612/18613 on 127.0.0.1.
set -u
REPO=${1:?repository}; MODEL=${2:?model name}; OUT=${3:-thread-placement}
LEVELS=${LEVELS:-8}; ONLY=${ONLY:-}
images=(); [ -n "${IMAGES:-}" ] && images=(--images "$IMAGES")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
run() { # tag runtime instances threads [extra serve args]
  local tag=$1 rt=$2 inst=$3 thr=$4; shift 4
  [ -n "$ONLY" ] && [[ " $ONLY " != *" $tag "* ]] && return
  ddrnet serve --model-repository "$REPO" --models "$MODEL" --http-port 18612 --grpc-port 18613 \
     --poll-interval-s 0 --runtime "$rt" --instances "$inst" --threads-per-instance "$thr" \
     --preprocess-workers 2 "$@" > "$OUT/$tag.serve.log" 2>&1 &
  local spid=$!
  for _ in $(seq 1 240); do curl -sf http://127.0.0.1:18612/v2/health/ready >/dev/null && break; sleep 1; done
  echo "== $tag ($inst instances x $thr threads, $rt) before: $(uptime)"
  ddrnet bench --server 127.0.0.1:18613 --protocol grpc --http-server 127.0.0.1:18612 --model "$MODEL" \
     --concurrency "$LEVELS" --warmup-s 3 --measure-s 12 "${images[@]}" --json "$OUT/$tag.json" 2>/dev/null
  echo "   after: $(uptime)"
  kill $spid; wait $spid
}
run ort_1x2 onnxruntime 1 2
run ort_2x1 onnxruntime 2 1
run ms_1x2 mindspore 1 2
run ms_2x1 mindspore 2 1
if [ -x "$ROOT/.venv-lite37/bin/python" ]; then
  run lite_1x1 lite 1 1 --runtime-python "$ROOT/.venv-lite37/bin/python"
  run lite_2x1 lite 2 1 --runtime-python "$ROOT/.venv-lite37/bin/python"
fi
run ort_1x2b onnxruntime 1 2
run ort_2x1b onnxruntime 2 1
