#!/usr/bin/env bash
# Create the Python 3.7 virtual environment that runs the MindSpore Lite worker:
# PyPI's mindspore-lite 2.0.0 ships cp37 wheels only, and cannot share a process with MindSpore 2.10.
#
#   scripts/setup_lite_py37.sh [VENV_DIR]      (default: .venv-lite37 at the repository root)
#
# Idempotent and quick when the venv is already complete (it only checks the imports). Needs a
# Python 3.7 interpreter: $LITE_PYTHON37, else pyenv's 3.7.x, else python3.7 on PATH. Exits 0 with
# a message and no venv when none exists (tests then skip the Lite cases, saying why).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv-lite37}"
LITE_VERSION="${LITE_VERSION:-2.0.0}"
NUMPY_SPEC="${NUMPY_SPEC:-numpy>=1.21,<1.22}"   # the last numpy line with cp37 wheels

check() {
    "$VENV/bin/python" -c "import mindspore_lite, numpy; assert mindspore_lite.__version__ == '$LITE_VERSION'" \
        >/dev/null 2>&1
}

if [ -x "$VENV/bin/python" ] && check; then
    echo "MindSpore Lite $LITE_VERSION venv ready: $VENV/bin/python"
    exit 0
fi

PY37="${LITE_PYTHON37:-}"
if [ -z "$PY37" ] && command -v pyenv >/dev/null 2>&1; then
    for candidate in "$(pyenv root)"/versions/3.7*/bin/python3.7; do
        [ -x "$candidate" ] && PY37="$candidate"
    done
fi
if [ -z "$PY37" ] && command -v python3.7 >/dev/null 2>&1; then
    PY37="$(command -v python3.7)"
fi
if [ -z "$PY37" ] || ! "$PY37" -c 'import sys; assert sys.version_info[:2] == (3, 7)' 2>/dev/null; then
    echo "No Python 3.7 interpreter found (set LITE_PYTHON37 or install 3.7 with pyenv); Lite venv not created."
    exit 0
fi

echo "Creating $VENV with $PY37 ..."
"$PY37" -m venv --clear "$VENV"
if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "mindspore-lite==$LITE_VERSION" "$NUMPY_SPEC" || ! check; then
    rm -rf "$VENV"   # no half-made venv: the Lite tests skip instead of failing on it
    echo "Installing mindspore-lite $LITE_VERSION into $VENV failed (is PyPI reachable?)." >&2
    exit 1
fi
echo "MindSpore Lite $LITE_VERSION venv ready: $VENV/bin/python"
