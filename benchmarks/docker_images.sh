#!/bin/bash
# Issue 19: build both image targets and run them for real, then print their figures.
#
#   benchmarks/docker_images.sh [OUT_DIR]      (default: docker-check; HTTP/gRPC on 127.0.0.1:18680/18681)
#
# 1. builds the serving image (the default target) and the train target (`--target train`) with
#    ../shared/tools/docker_local.sh where no container registry is reachable (DOCKER_LOCAL= to use a
#    plain `docker build` instead);
# 2. the train image exports the digits demo run (RUN_DIR, default: one built here with
#    `ddrnet quickstart --build-only`, about 2 minutes) into OUT_DIR/models, as uid 10001;
# 3. the serving image serves that repository read-only: waits for `healthy`, classifies real digit
#    images over HTTP (curl) and gRPC (`ddrnet classify`) and checks the labels, checks the user
#    (10001), that MindSpore is absent, that a SIGKILLed worker leaves no zombie (tini reaps), then
#    `docker stop` and exit code 0;
# 4. prints image sizes, container start -> ready seconds, first-answer latency.
# Exit 0 only when every check passed. Needs a Docker daemon (docker_local.sh starts Debian's).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-docker-check}" && cd "${1:-docker-check}" && pwd)
DOCKER_LOCAL=${DOCKER_LOCAL-$ROOT/../shared/tools/docker_local.sh}
SERVE=ddrnet-serve:check TRAIN=ddrnet-serve:check-train
NAME=ddrnet-serve-check
HTTP=127.0.0.1:18680 GRPC=127.0.0.1:18681
FAILED=0
cd "$ROOT" || exit 1
say() { echo "docker_images: $*"; }
check() { if eval "$2"; then say "ok: $1"; else say "FAILED: $1"; FAILED=1; fi; }
build() { # tag [docker build args]
  local tag=$1; shift
  local start=$SECONDS
  if [ -n "$DOCKER_LOCAL" ]; then bash "$DOCKER_LOCAL" "$tag" "$@" > "$OUT/build_${tag##*:}.log" 2>&1
  else docker build -t "$tag" "$@" . > "$OUT/build_${tag##*:}.log" 2>&1; fi || {
    tail -30 "$OUT/build_${tag##*:}.log"; say "build of $tag failed"; exit 1; }
  say "built $tag in $((SECONDS - start)) s"
}
size_mb() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f", $1 / 1e6}'; }
now() { date +%s.%N; }

say "$(uptime)"
build "$SERVE"
build "$TRAIN" --target train
SERVE_MB=$(size_mb "$SERVE") TRAIN_MB=$(size_mb "$TRAIN")

# -- the train image: a job that exports -------------------------------------------------------------
RUN_DIR=${RUN_DIR:-$OUT/demo/run}
if [ ! -f "$RUN_DIR/run.json" ]; then
  say "training the digits demo on the host for the export job (RUN_DIR unset)"
  ddrnet quickstart --build-only --workdir "$OUT/demo" > "$OUT/quickstart.log" 2>&1 || { tail -20 "$OUT/quickstart.log"; exit 1; }
fi
rm -rf "$OUT/models" && mkdir -p "$OUT/models" && chmod 0777 "$OUT/models"
t0=$(now)
docker run --rm --user 10001:10001 -v "$RUN_DIR:/run-in:ro" -v "$OUT/models:/models" "$TRAIN" --help > /dev/null
TRAIN_HELP_S=$(echo "$(now) - $t0" | bc)
t0=$(now)
docker run --rm -v "$RUN_DIR:/run-in:ro" -v "$OUT/models:/models" "$TRAIN" \
  export --run-dir /run-in --repository /models --name digits --formats onnx > "$OUT/export.log" 2>&1
check "train image exports the run (as uid 10001)" '[ -f "$OUT/models/digits/1/model.onnx" ]'
EXPORT_S=$(echo "$(now) - $t0" | bc)
tail -3 "$OUT/export.log"

# -- the serving image -------------------------------------------------------------------------------
docker rm -f "$NAME" > /dev/null 2>&1
t0=$(now)
docker run -d --name "$NAME" -p "$HTTP:8000" -p "$GRPC:8001" -v "$OUT/models:/models:ro" "$SERVE" > /dev/null
READY_S=""
for _ in $(seq 1 240); do
  if curl -sf "http://$HTTP/v2/health/ready" > /dev/null; then READY_S=$(echo "$(now) - $t0" | bc); break; fi
  sleep 0.25
done
check "serving image becomes ready" '[ -n "$READY_S" ]'
IMG=$(find "$RUN_DIR/../data" -path "*/val/7/*" -type f 2>/dev/null | head -1)
[ -n "$IMG" ] || IMG=$(python -c "from tests.support.server_fixtures import photo_paths; print(photo_paths()[0])")
t1=$(now)
FIRST=$(curl -s -F "file=@$IMG" "http://$HTTP/v1/models/digits/classify")
FIRST_MS=$(echo "($(now) - $t1) * 1000" | bc)
say "first answer: $FIRST"
HEALTHY_S=""
for _ in $(seq 1 300); do
  if [ "$(docker inspect -f '{{.State.Health.Status}}' "$NAME")" = healthy ]; then
    HEALTHY_S=$(echo "$(now) - $t0" | bc); break
  fi
  sleep 0.25
done
check "docker reports healthy" '[ "$(docker inspect -f "{{.State.Health.Status}}" "$NAME")" = healthy ]'
RIGHT=0 TOTAL=0
for digit in 0 1 2 3 4 5 6 7 8 9; do
  for f in $(find "$RUN_DIR/../data" -path "*/val/$digit/*" -type f 2>/dev/null | head -3); do
    TOTAL=$((TOTAL + 1))
    label=$(curl -s -F "file=@$f" "http://$HTTP/v1/models/digits/classify" \
      | python -c "import json,sys; print(json.load(sys.stdin)['results'][0]['predictions'][0]['label'])")
    [ "$label" = "$digit" ] && RIGHT=$((RIGHT + 1))
  done
done
say "HTTP: $RIGHT of $TOTAL digit images labelled right"
check "HTTP answers right (>= 90 %)" '[ "$TOTAL" -gt 0 ] && [ $((RIGHT * 10)) -ge $((TOTAL * 9)) ]'
GRPC_OUT=$(ddrnet classify --server "$GRPC" --protocol grpc --model digits "$IMG" 2>&1)
echo "$GRPC_OUT" | tail -2
check "gRPC answers" 'echo "$GRPC_OUT" | grep -q "1 classified, 0 failed"'
check "runs as uid 10001" '[ "$(docker exec "$NAME" id -u)" = 10001 ]'
check "no MindSpore in the serving image" \
  'docker exec "$NAME" python -c "import importlib.util as u, sys; sys.exit(u.find_spec(\"mindspore\") is not None)"'
# A worker killed by SIGKILL: the server restarts it; nothing stays a zombie under tini.
WORKERS='import os; print(" ".join(p for p in os.listdir("/proc") if p.isdigit() and p != str(os.getpid()) and b"inference.worker_main" in open("/proc/%s/cmdline" % p, "rb").read()))'
BEFORE=$(docker exec "$NAME" python -c "$WORKERS")
docker exec "$NAME" python -c "import os, signal; os.kill(${BEFORE%% *}, signal.SIGKILL)"
sleep 5
AFTER=$(docker exec "$NAME" python -c "$WORKERS")
say "workers before the kill: $BEFORE; after: $AFTER"
check "the killed worker was replaced" '[ -n "$BEFORE" ] && [ -n "$AFTER" ] && [ "$BEFORE" != "$AFTER" ]'
ZOMBIES=$(docker exec "$NAME" sh -c 'cat /proc/[0-9]*/stat 2>/dev/null' | awk '$3 == "Z"' | wc -l)
check "no zombie after a worker is killed ($ZOMBIES)" '[ "$ZOMBIES" = 0 ]'
check "answers after the worker restart" \
  'curl -sf -F "file=@$IMG" "http://$HTTP/v1/models/digits/classify" > /dev/null'
docker stop -t 30 "$NAME" > /dev/null
EXIT=$(docker inspect -f '{{.State.ExitCode}}' "$NAME")
check "docker stop: exit code 0 ($EXIT)" '[ "$EXIT" = 0 ]'
docker logs "$NAME" > "$OUT/serve.log" 2>&1
docker rm "$NAME" > /dev/null

echo
BASE_MB=$(size_mb "$(grep -m1 -oE '^FROM +[^ ]+' Dockerfile | awk '{print $2}')")
r() { printf "%.2f" "${1:-nan}"; }
echo "| target | image size (base ${BASE_MB} MB) | start -> ready | start -> docker healthy | first answer | job |"
echo "|---|---|---|---|---|---|"
echo "| serve (default) | ${SERVE_MB} MB | $(r "$READY_S") s | $(r "$HEALTHY_S") s | $(r "$FIRST_MS") ms | - |"
echo "| train | ${TRAIN_MB} MB | $(r "$TRAIN_HELP_S") s (\`ddrnet --help\`) | - | - | export $(r "$EXPORT_S") s |"
say "$(uptime)"
[ "$FAILED" = 0 ] && say "all checks passed" || say "some checks FAILED"
exit "$FAILED"
