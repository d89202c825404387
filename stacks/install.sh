#!/usr/bin/env bash
# Installs one stack into a virtual environment, exactly:
#   stacks/install.sh current .venv          # the lock, then foundry itself (editable)
#   stacks/install.sh stable  .venv-stable
#   stacks/install.sh latest  .venv-latest   # resolved now: the newest torch/transformers/streaming
# The lock is installed as the complete package set (uv pip sync: no dependency resolution, and
# packages not in the lock are removed), then foundry with --no-deps, so Composer's and streaming's
# stale upper pins (torch<2.7.1, transformers<5, numpy<2.2) can never drag the stack back.
set -euo pipefail
stack=${1:?usage: stacks/install.sh current|stable|latest VENV}
venv=${2:?usage: stacks/install.sh current|stable|latest VENV}
cd "$(dirname "$0")/.."
source stacks/uv.sh
case "$stack" in
    current|stable) lock="stacks/$stack.lock" ;;
    latest)
        mkdir -p "$venv"
        lock="$venv/latest.lock"
        "$UV" pip compile --quiet pyproject.toml --extra dev --override stacks/latest.overrides \
            --python-platform x86_64-manylinux_2_28 --python-version 3.11 --no-annotate -o "$lock" ;;
    *) echo "stacks/install.sh: unknown stack '$stack': use current, stable or latest" >&2; exit 2 ;;
esac
test -x "$venv/bin/python" || ${PYTHON:-python3} -m venv "$venv"
"$UV" pip sync --quiet --python "$venv/bin/python" "$lock"
"$UV" pip install --quiet --python "$venv/bin/python" --no-deps -e .
"$venv/bin/python" -m foundry.stack_report "$stack"
