#!/usr/bin/env bash
# Data-parallel training with MindSpore's own launcher, msrun:
#
#   scripts/train_distributed.sh NUM_WORKERS CONFIG [msrun options] [-- ddrnet train options]
#
# One machine, 8 workers:
#   scripts/train_distributed.sh 8 training/configs/ddrnet23_imagenet_gpu.yaml
# Two machines x 8 workers (run on each; node 0's address as master):
#   scripts/train_distributed.sh 16 CONFIG --local_worker_num=8 --master_addr=10.0.0.1 --node_rank=0
#   scripts/train_distributed.sh 16 CONFIG --local_worker_num=8 --master_addr=10.0.0.1 --node_rank=1
# Options after "--" go to `ddrnet train` (e.g. -- --resume --set epochs=2).
#
# NUM_WORKERS is the total (msrun --worker_num); --local_worker_num defaults to it (one machine).
# Other msrun options (--master_port, --log_dir, --join, --cluster_time_out, ...) pass through.
# Worker logs go to --log_dir (default: <output_dir of the config>/msrun_logs is not known here,
# so ./msrun_logs). msrun starts `python` from PATH, so this script puts the venv's bin first.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
workers=$1
config=$2
shift 2
if ! [[ $workers =~ ^[1-9][0-9]*$ ]]; then
  echo "train_distributed.sh: NUM_WORKERS must be a positive integer, got '$workers'" >&2
  exit 2
fi
if [[ ! -f $config ]]; then
  echo "train_distributed.sh: config file not found: $config" >&2
  exit 2
fi

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$here/.venv}
if [[ -x $venv/bin/python ]]; then
  export PATH="$venv/bin:$PATH"
fi
command -v msrun >/dev/null || { echo "train_distributed.sh: msrun not found (install mindspore)" >&2; exit 2; }
ddrnet=$(command -v ddrnet) || { echo "train_distributed.sh: ddrnet not found (pip install -e .)" >&2; exit 2; }

msrun_opts=()
train_opts=()
local_set=0
log_set=0
join_set=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --) shift; train_opts=("$@"); break ;;
    --local_worker_num|--local_worker_num=*) local_set=1; msrun_opts+=("$1") ;;
    --log_dir|--log_dir=*) log_set=1; msrun_opts+=("$1") ;;
    --join|--join=*) join_set=1; msrun_opts+=("$1") ;;
    *) msrun_opts+=("$1") ;;
  esac
  # options given as "--name value" keep their value with them
  if [[ $1 == --* && $1 != *=* && $# -gt 1 && $2 != --* ]]; then
    msrun_opts+=("$2")
    shift
  fi
  shift
done
[[ $local_set == 1 ]] || msrun_opts+=("--local_worker_num=$workers")
[[ $log_set == 1 ]] || msrun_opts+=("--log_dir=msrun_logs")
[[ $join_set == 1 ]] || msrun_opts+=("--join=True")

# msrun runs "python <script> <args>": the ddrnet console script is a Python file.
exec msrun --worker_num="$workers" "${msrun_opts[@]}" "$ddrnet" train --config "$config" --no-progress "${train_opts[@]}"
