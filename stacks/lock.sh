#!/usr/bin/env bash
# Regenerates the lock files from the short lists beside this script:
#   stacks/lock.sh            # both locked stacks
#   stacks/lock.sh current    # one of them
# Each lock lists every package of a stack at an exact version, resolved for Linux x86_64 and
# Python 3.11 (the CI machine's); the same versions install on 3.12 (the GPU machine's).
# Never edit a .lock by hand: change the .in / .overrides (or pyproject.toml) and rerun this.
set -euo pipefail
cd "$(dirname "$0")/.."
source stacks/uv.sh
stacks=("$@")
[ ${#stacks[@]} -gt 0 ] || stacks=(current stable)
for stack in "${stacks[@]}"; do
    overrides=()
    [ -f "stacks/$stack.overrides" ] && overrides=(--override "stacks/$stack.overrides")
    "$UV" pip compile pyproject.toml "stacks/$stack.in" --extra dev "${overrides[@]}" \
        --python-platform x86_64-manylinux_2_28 --python-version 3.11 --no-annotate \
        --custom-compile-command "stacks/lock.sh $stack" -o "stacks/$stack.lock"
done
