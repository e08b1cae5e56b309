#!/bin/sh
# Image build step: replace the CPU onnxruntime with the requirement in $1 (e.g.
# "onnxruntime-gpu>=1.18,<2") and install the MindSpore Lite wheel at /context/$2, each when given.
# Both onnxruntime distributions ship the same `onnxruntime` package directory, so the replacement is
# force-reinstalled after the CPU one is removed.
set -eu
ONNXRUNTIME=${1:-}
LITE_WHEEL=${2:-}
if [ -n "$ONNXRUNTIME" ]; then
    pip uninstall --yes onnxruntime || true
    pip install --no-cache-dir --force-reinstall --no-deps "$ONNXRUNTIME"
    pip install --no-cache-dir "$ONNXRUNTIME"
fi
if [ -n "$LITE_WHEEL" ]; then
    pip install --no-cache-dir "/context/$LITE_WHEEL"
fi
