#!/usr/bin/env bash
# Create benchmarks/.venv-keras: TensorFlow for CPU, used ONLY by benchmarks/keras_lecture.py.
# TensorFlow is never a dependency of cnnlab; this environment is separate and git-ignored.
#
# Idempotent: a stamp file records the pinned versions; a second run with the same pins
# does nothing but print what is installed. Delete benchmarks/.venv-keras to start over.
#
# Usage: bash benchmarks/setup_keras_env.sh            (PY=python3.11 to choose the interpreter)
set -euo pipefail

# Verified on x86-64, Python 3.11.7 (PyPI has a tensorflow-cpu wheel for cp311 manylinux).
TF_PKG="tensorflow-cpu==2.21.0"
NUMPY_PKG="numpy>=1.26,<3"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-keras"
STAMP="$VENV/.installed"
WANT="$TF_PKG $NUMPY_PKG"
PY="${PY:-python3}"

show() {
    "$VENV/bin/python" - <<'EOF'
import sys, numpy, tensorflow as tf
print(f"keras env: python {sys.version.split()[0]}, tensorflow {tf.__version__}, "
      f"keras {tf.keras.__version__ if hasattr(tf.keras, '__version__') else '?'}, "
      f"numpy {numpy.__version__}")
EOF
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "keras env: up to date ($VENV)"
    TF_CPP_MIN_LOG_LEVEL=3 show
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "keras env: creating $VENV with $("$PY" --version 2>&1)"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
fi

echo "keras env: installing $WANT (about 250 MB download the first time)"
"$VENV/bin/pip" install -q "$TF_PKG" "$NUMPY_PKG"
printf '%s' "$WANT" > "$STAMP"
TF_CPP_MIN_LOG_LEVEL=3 show
