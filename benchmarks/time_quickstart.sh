#!/bin/bash
# Issue 9's check, timed: README command 1 in a fresh clone of this repository, from `python3.11 -m
# venv` to the printed curl line answering with the right digit. Prints the elapsed seconds of each
# step (from the quickstart's own "==>" lines), the curl answer, then stops the server (SIGTERM).
#
#   benchmarks/time_quickstart.sh [CLONE_DIR]      (default: /tmp/ddrnet-fresh; removed first)
set -u
SRC=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-/tmp/ddrnet-fresh}
rm -rf "$DIR" && git clone -q "$SRC" "$DIR" && cd "$DIR" || exit 1
LOG=$DIR/quickstart.log
start=$(date +%s.%N)
stamp() { printf '%7.1f s  %s\n' "$(echo "$(date +%s.%N) - $start" | bc)" "$1"; }
echo "uptime before: $(uptime)"
# README line 1, verbatim, in its own process group so it can be stopped with everything it started.
setsid bash -c 'python3.11 -m venv .venv && .venv/bin/pip install -e ".[train]" && PATH=$PWD/.venv/bin:$PATH ddrnet quickstart' \
  > "$LOG" 2>&1 &
pid=$!
seen=""
while kill -0 $pid 2>/dev/null; do
  while IFS= read -r line; do
    case "$seen" in *"|$line|"*) continue ;; esac
    seen="$seen|$line|"
    stamp "$line"
  done < <(grep -E '^(==>|Successfully installed|ddrnet-serve is ready)' "$LOG" | cut -c1-100)
  grep -q "^  curl " "$LOG" && break
  sleep 1
done
curl_line=$(grep -m1 "^  curl " "$LOG" | sed 's/^  //')
[ -n "$curl_line" ] || { echo "no curl line; log tail:"; tail -30 "$LOG"; kill -- -$pid; exit 1; }
answer=$(eval "$curl_line")
stamp "curl answered: $answer"
echo "curl line: $curl_line"
echo "uptime after: $(uptime)"
kill -TERM -- -$pid; wait $pid; echo "quickstart exit status after SIGTERM: $?"
