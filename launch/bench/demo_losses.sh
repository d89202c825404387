#!/bin/bash
# The demo's data build and training (what `make demo` runs before its summary), from the tree in $1,
# writing under $2, with this checkout's .venv (or $PYTHON) and foundry imported from $1: compare two commits'
# per-batch losses (git worktree add /tmp/before REV; launch/bench/demo_losses.sh /tmp/before /tmp/out-before).
# usage: launch/bench/demo_losses.sh REPO OUT   -> OUT/losses.txt ("batch loss" per line, repr of the float)
set -euo pipefail
REPO=$1; OUT=$2
PY=${PYTHON:-$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/python}
cd "$REPO"
export PYTHONPATH="$REPO"
"$PY" -c "import foundry; print('foundry from', foundry.__file__)"
rm -rf "$OUT"; mkdir -p "$OUT"
# foundry.data's lazy export exists before and after the split, so the same line builds the data in both trees
"$PY" -c "import sys; from foundry.data import build_demo_data; build_demo_data(sys.argv[1], seq_len=128)" "$OUT/data"
"$(dirname "$PY")/composer" -n 2 "$REPO/launch/train.py" yamls/pretrain/demo.yaml \
  variables.data_root="$OUT/data" run_folder="$OUT/runs/{run_name}" save_folder="$OUT/checkpoints/{run_name}"
"$PY" -c "
import json, sys
rows = {}
for line in open(sys.argv[1]):
    m = json.loads(line)
    if 'loss/train/total' in m:
        rows[m['batch']] = m['loss/train/total']
with open(sys.argv[2], 'w') as f:
    for b in sorted(rows):
        f.write(f'{b} {rows[b]!r}\n')
print(len(rows), 'batches')
" "$OUT/runs/demo/metrics.jsonl" "$OUT/losses.txt"
