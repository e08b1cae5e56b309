#!/bin/bash
# `ddrnet predict` throughput against `ddrnet bench --raw`'s L for the same model, in ONE run (issue 18's
# target: predict >= 0.95 L). Model: DDRNet-23-slim at 224 (randomly initialised, 1000 classes) on ONNX
# Runtime; payload: the sample photos of scikit-learn and scikit-image as JPEGs, copied COPIES times
# into one folder for predict. L = 1 / (model ms/img at the best batch + preprocess ms/img), measured by
# bench --raw in the server's placement and the alternatives (the machine's limit). Rounds go
# raw, predict, raw, predict ... with `uptime` around each.
#
#   benchmarks/predict_vs_raw.sh [ROUNDS] [COPIES] [OUT_DIR]   (defaults: 3, 40, predict-vs-raw)
set -u
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; COPIES=${2:-40}
OUT=$(mkdir -p "${3:-predict-vs-raw}" && cd "${3:-predict-vs-raw}" && pwd)
REPO="$OUT/repo224"
PY=.venv/bin/python

$PY - "$OUT/photos" "$OUT/many" "$COPIES" <<'PYEOF' || exit 1
import shutil, sys
from pathlib import Path
from PIL import Image
from model.samples import sample_photos
photos, many, copies = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
photos.mkdir(parents=True, exist_ok=True); many.mkdir(parents=True, exist_ok=True)
for path in sample_photos():
    Image.open(path).convert("RGB").save(photos / (path.stem + ".jpg"), quality=90)
for i in range(copies):
    for jpg in photos.glob("*.jpg"):
        shutil.copyfile(jpg, many / f"{i:03d}_{jpg.name}")
PYEOF
if [ ! -f "$REPO/ddrnet23_slim/1/model.json" ]; then
  $PY -c "import mindspore as ms, model; ms.set_seed(0); ms.save_checkpoint(model.create_model('ddrnet23_slim', num_classes=1000), '$OUT/slim.ckpt')" \
    && .venv/bin/ddrnet export --checkpoint "$OUT/slim.ckpt" --repository "$REPO" --name ddrnet23_slim \
       --formats onnx > /dev/null || exit 1
fi
echo "payload: $(ls "$OUT/many" | wc -l) JPEGs for predict, $(ls "$OUT/photos" | wc -l) for bench"

for round in $(seq 1 "$ROUNDS"); do
  .venv/bin/ddrnet serve --model-repository "$REPO" --http-port 18662 --grpc-port 18663 --poll-interval-s 0 \
    --runtime onnxruntime > "$OUT/serve$round.log" 2>&1 &
  spid=$!
  for _ in $(seq 1 240); do curl -sf http://127.0.0.1:18662/v2/health/ready >/dev/null && break; sleep 1; done
  echo "== raw $round before: $(uptime)"
  .venv/bin/ddrnet bench --server 127.0.0.1:18663 --protocol grpc --http-server 127.0.0.1:18662 \
    --model ddrnet23_slim --images "$OUT/photos" --concurrency 1 --warmup-s 1 --measure-s 2 --raw \
    --model-repository "$REPO" --runtime onnxruntime --raw-s 4 --json "$OUT/raw$round.json" \
    > "$OUT/raw$round.log" 2>&1
  kill $spid; wait $spid 2>/dev/null
  echo "== predict $round before: $(uptime)"
  .venv/bin/ddrnet predict --model-repository "$REPO" --model ddrnet23_slim "$OUT/many" \
    --output "$OUT/predict$round.jsonl" --runtime onnxruntime | tee "$OUT/predict$round.log"
  echo "   after: $(uptime)"
done

$PY - "$OUT" "$ROUNDS" <<'PYEOF'
import json, re, statistics, sys
from pathlib import Path
out, rounds = Path(sys.argv[1]), int(sys.argv[2])
limits = [json.loads((out / f"raw{r}.json").read_text())["raw"]["limit_img_s"] for r in range(1, rounds + 1)]
rates = [float(re.search(r"\(([\d.]+) img/s", (out / f"predict{r}.log").read_text()).group(1))
         for r in range(1, rounds + 1)]
print(f"L (bench --raw) img/s: {' '.join(f'{x:.1f}' for x in limits)}  median {statistics.median(limits):.1f}")
print(f"predict img/s:         {' '.join(f'{x:.1f}' for x in rates)}  median {statistics.median(rates):.1f}")
print(f"predict / L (medians): {statistics.median(rates) / statistics.median(limits):.3f}")
PYEOF
