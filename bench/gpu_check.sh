#!/usr/bin/env bash
# The GPU check in one call (bench/gpu_check.py says what it runs), for a GPU machine without a package index.
#
#   bash bench/gpu_check.sh [--out DIR] [--device cuda|cpu] [--quick]     # DIR defaults to $OUT
#
# The machine gets a copy of the working tree: `make gpu-wheels` here downloads, into .whl/
# (git-ignored; carry it), the packages its image lacks (datasets and what it needs), for Python
# 3.12 on x86-64. They are installed into /tmp/site, never into the image's environment, and the
# package runs from the tree (PYTHONPATH), so nothing is built or fetched there.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [[ -d .whl ]] && ! "$PYTHON" -c "import datasets" 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "gpu_check: installing the carried wheels failed; the steps that need them will say so" >&2
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" bench/gpu_check.py "$@"
