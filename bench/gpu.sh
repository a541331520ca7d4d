#!/usr/bin/env bash
# The GPU benchmark in one line, on a machine with no internet: `bash bench/gpu.sh`.
#
# Needs: a Python 3.11+ with torch (CUDA build) and pip; the wheels of everything else in
# .bench-wheels/ (made beforehand where there is internet: `make bench-wheels`). Installs
# them with pip --no-index into .bench-site/ (no venv, nothing of the machine's changed),
# then runs bench/count.py and bench/generate.py (full size, random weights, every arm,
# interleaved, within --budget-seconds) and writes their output and JSON to $OUT (default
# out/bench). Arguments go to generate.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.bench-wheels}
SITE=.bench-site
OUT=${OUT:-out/bench}
mkdir -p "$OUT"

version=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
requirements="$WHEELS/requirements-$version.txt"
if [ ! -f "$requirements" ]; then
    echo "no wheels for Python $version in $WHEELS: run bench/wheels.py --python $version" >&2
    exit 2
fi
"$PY" -c 'import torch, numpy; print("torch", torch.__version__, "cuda", torch.version.cuda,
"available", torch.cuda.is_available())' || {
    echo "this Python must bring torch (a CUDA build) and numpy" >&2
    exit 2
}
started=$(date +%s)
"$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
    --find-links "$WHEELS" --target "$SITE" --upgrade -r "$requirements"
echo "installed $(wc -l <"$requirements") wheels in $(($(date +%s) - started)) s"

export PYTHONPATH="$PWD/$SITE:$PWD:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" bench/count.py 2>&1 | tee "$OUT/count.txt"
"$PY" bench/generate.py --json "$OUT/generate.json" "$@" 2>&1 | tee "$OUT/generate.txt"
