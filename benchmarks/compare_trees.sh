#!/bin/bash
# Serving figures of two checkouts of this repository in ONE run, alternating them on the same model:
# DDRNet-23-slim at 224 (randomly initialised, 1000 classes; speed does not depend on the weights)
# served from an ONNX export on ONNX Runtime with the server's defaults, `ddrnet bench --raw` over
# gRPC at concurrency 1 and 8 on real JPEGs (the machine's limit L, and served img/s / latency).
# Rounds go A B A B ... so slow drift of the machine's load falls on both; `uptime` is printed
# around each run. Used for the architecture refactor: before (A) and after (B) must agree within noise.
#
#   benchmarks/compare_trees.sh A_CHECKOUT B_CHECKOUT [ROUNDS] [OUT_DIR]   (defaults: 3, compare-trees)
#
# Each checkout runs its own code from its own venv (CHECKOUT/.venv, `pip install -e '.[dev]'`);
# the model repository is exported once, with B. Ports 18642/18643 on 127.0.0.1.
set -u
A=$(cd "$1" && pwd); B=$(cd "$2" && pwd)
ROUNDS=${3:-3}
OUT=$(mkdir -p "${4:-compare-trees}" && cd "${4:-compare-trees}" && pwd)
REPO="$OUT/repo224"

# The payload: the sample photos of scikit-learn and scikit-image as JPEGs (quality 90).
(cd "$B" && .venv/bin/python - "$OUT/photos" <<'EOF'
import sys
from pathlib import Path
from PIL import Image
from model.samples import sample_photos
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
for path in sample_photos():
    Image.open(path).convert("RGB").save(out / (path.stem + ".jpg"), quality=90)
EOF
) || exit 1
if [ ! -f "$REPO/ddrnet23_slim/1/model.json" ]; then
  (cd "$B" && .venv/bin/python -c "import mindspore as ms, model; ms.set_seed(0); ms.save_checkpoint(model.create_model('ddrnet23_slim', num_classes=1000), '$OUT/slim.ckpt')" \
    && .venv/bin/ddrnet export --checkpoint "$OUT/slim.ckpt" --arch ddrnet23_slim --repository "$REPO" \
       --name ddrnet23_slim --formats onnx) || exit 1
fi

run() { # tag checkout
  local tag=$1 tree=$2
  (cd "$tree" && exec .venv/bin/ddrnet serve --model-repository "$REPO" --http-port 18642 --grpc-port 18643 \
     --poll-interval-s 0 --runtime onnxruntime) > "$OUT/$tag.serve.log" 2>&1 &
  local spid=$!
  for _ in $(seq 1 240); do curl -sf http://127.0.0.1:18642/v2/health/ready >/dev/null && break; sleep 1; done
  echo "== $tag ($tree) before: $(uptime)"
  (cd "$tree" && .venv/bin/ddrnet bench --server 127.0.0.1:18643 --protocol grpc --http-server 127.0.0.1:18642 \
     --model ddrnet23_slim --images "$OUT/photos" --concurrency 1,8 --warmup-s 2 --measure-s 8 --raw \
     --model-repository "$REPO" --runtime onnxruntime --raw-s 3 --json "$OUT/$tag.json") 2> "$OUT/$tag.bench.log" \
     | tail -n 3
  echo "   after: $(uptime)"
  kill $spid; wait $spid
}
for round in $(seq 1 "$ROUNDS"); do
  run "A$round" "$A"
  run "B$round" "$B"
done

(cd "$B" && .venv/bin/python benchmarks/ab_summary.py "$OUT" "$ROUNDS")
