#!/usr/bin/env bash
# The real training path on one GPU, in one command (the logic is in check.py beside this file):
#
#   bash launch/gpu/check.sh                   # on the GPU machine, from the repository root
#   bash launch/gpu/check.sh --out DIR         # figures and logs there (default: $OUT, else ./gpu_check_out)
#   bash launch/gpu/check.sh --cpu-smoke       # every step on a CPU: tiny model, a few batches (about 3 min on 2 cores)
#
# Needs: Python 3.12 with torch (CUDA) and transformers installed, and the wheelhouse `make gpu-wheels`
# built (.whl/gpu, carried with the working tree). Installs what the machine lacks into .gpu-site/
# (pip --target; nothing of the machine's own environment changes), builds MDS data, trains mpt-125m
# and mpt-1b through `composer -n 1 launch/train.py`, kills and resumes a run, exports to Hugging Face;
# under 8 minutes on one H200. PYTHON=/path/to/python picks the interpreter (default: python3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "launch/gpu/check.sh: $PY cannot import torch; set PYTHON to the interpreter that has torch" >&2
    exit 2
fi
exec "$PY" "$here/check.py" "$@"
