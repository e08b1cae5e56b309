#!/bin/bash
# Tracing overhead (issue 17) in ONE run: the same server with tracing off (A) and on (B: every request
# sampled, OTEL_TRACES_SAMPLER=always_on, spans exported by OTLP/HTTP to a local receiver that decodes
# them), alternated A B A B ... on DDRNet-23-slim at 224 (ONNX Runtime, the server's defaults),
# `ddrnet bench` at concurrency 1 and 8 over gRPC and over HTTP on real JPEGs. `uptime` is printed
# around each run; the receiver's span count shows every request was traced.
#
#   benchmarks/tracing_overhead.sh [ROUNDS] [OUT_DIR]   (defaults: 3, tracing-overhead)
#   SAMPLER=traceidratio SAMPLER_ARG=0.1 benchmarks/tracing_overhead.sh ...   (B samples a tenth)
#
# Needs the otel extra (part of [dev]). Ports 18652/18653 (server) on 127.0.0.1.
set -u
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
OUT=$(mkdir -p "${2:-tracing-overhead}" && cd "${2:-tracing-overhead}" && pwd)
REPO="$OUT/repo224"
PY=.venv/bin/python

$PY - "$OUT/photos" <<'PYEOF' || exit 1
import sys
from pathlib import Path
from PIL import Image
from model.samples import sample_photos
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
for path in sample_photos():
    Image.open(path).convert("RGB").save(out / (path.stem + ".jpg"), quality=90)
PYEOF
if [ ! -f "$REPO/ddrnet23_slim/1/model.json" ]; then
  $PY -c "import mindspore as ms, model; ms.set_seed(0); ms.save_checkpoint(model.create_model('ddrnet23_slim', num_classes=1000), '$OUT/slim.ckpt')" \
    && .venv/bin/ddrnet export --checkpoint "$OUT/slim.ckpt" --arch ddrnet23_slim --repository "$REPO" \
       --name ddrnet23_slim --formats onnx > /dev/null || exit 1
fi

# The OTLP/HTTP receiver (the tests' own), printing its span count when stopped.
$PY - "$OUT/receiver.url" <<'PYEOF' &
import signal, sys, time
from pathlib import Path
from tests.support.otlp_receiver import HttpReceiver
receiver = HttpReceiver()
Path(sys.argv[1]).write_text(receiver.endpoint)
signal.signal(signal.SIGTERM, lambda *_: (print(f"receiver: {len(receiver.spans)} spans"), sys.exit(0)))
while True:
    time.sleep(1)
PYEOF
RECEIVER=$!
for _ in $(seq 1 50); do [ -s "$OUT/receiver.url" ] && break; sleep 0.1; done

run() { # tag protocol [tracing options...]
  local tag=$1 protocol=$2; shift 2
  OTEL_TRACES_SAMPLER=${SAMPLER:-always_on} OTEL_TRACES_SAMPLER_ARG=${SAMPLER_ARG:-} .venv/bin/ddrnet serve --model-repository "$REPO" --http-port 18652 \
    --grpc-port 18653 --poll-interval-s 0 --runtime onnxruntime "$@" > "$OUT/$tag.serve.log" 2>&1 &
  local spid=$!
  for _ in $(seq 1 240); do curl -sf http://127.0.0.1:18652/v2/health/ready >/dev/null && break; sleep 1; done
  echo "== $tag $protocol ${*:-tracing off} before: $(uptime)"
  local server=127.0.0.1:18653; [ "$protocol" = http ] && server=127.0.0.1:18652
  .venv/bin/ddrnet bench --server $server --protocol "$protocol" --http-server 127.0.0.1:18652 \
     --model ddrnet23_slim --images "$OUT/photos" --concurrency 1,8 --warmup-s 2 --measure-s 8 \
     --json "$OUT/$tag.json" 2> "$OUT/$tag.bench.log" | tail -n 3
  echo "   after: $(uptime)"
  kill $spid; wait $spid
}
for protocol in grpc http; do
  mkdir -p "$OUT/$protocol"
  for round in $(seq 1 "$ROUNDS"); do
    run "$protocol/A$round" "$protocol"
    run "$protocol/B$round" "$protocol" --otel-endpoint "$(cat "$OUT/receiver.url")"
  done
  echo "-- $protocol: A = tracing off, B = tracing on (sampler ${SAMPLER:-always_on} ${SAMPLER_ARG:-})"
  $PY benchmarks/ab_summary.py "$OUT/$protocol" "$ROUNDS"
done
kill $RECEIVER; wait $RECEIVER
