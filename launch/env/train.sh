#!/usr/bin/env bash
# Start foundry training on this node of a multi-node job, configured by environment variables
# (Kubernetes, a cloud batch service, ssh by hand; launch/slurm/train.sbatch uses it too):
#
#   MASTER_ADDR       address of node 0, reachable from every node
#   MASTER_PORT       a free TCP port on node 0
#   NODE_RANK         this node's index, 0 .. nodes-1
#   WORLD_SIZE        processes (GPUs) across ALL nodes: nodes x LOCAL_WORLD_SIZE
#   LOCAL_WORLD_SIZE  processes (GPUs) on this node
#
# Usage:   launch/env/train.sh [--dry-run] YAML [key=value ...]
# Runs:    python -m foundry.launch --world_size $WORLD_SIZE --node_rank $NODE_RANK --nproc $LOCAL_WORLD_SIZE
#                   --master_addr $MASTER_ADDR --master_port $MASTER_PORT launch/train.py YAML [key=value ...]
# Options (environment):
#   FOUNDRY_DRY_RUN=1   print the composer command line instead of running it (same as --dry-run)
#   FOUNDRY_LOG_DIR=d   keep every rank's stdout/stderr in d/rank{rank}.{stdout,stderr}.txt (composer
#                       discards them for all but local rank 0 otherwise)
#   COMPOSER=path       the launcher to run (default: `python -m foundry.launch`, Composer's launcher with
#                       SIGTERM/SIGUSR1 passed on to the ranks, which checkpoint and exit with status 75)
set -euo pipefail

prog=launch/env/train.sh
die() { echo "$prog: error: $*" >&2; exit 2; }

dry_run=${FOUNDRY_DRY_RUN:-0}
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
[[ $# -ge 1 ]] || die "usage: $prog [--dry-run] YAML [key=value ...]"

missing=()
for var in MASTER_ADDR MASTER_PORT NODE_RANK WORLD_SIZE LOCAL_WORLD_SIZE; do
  [[ -n "${!var:-}" ]] || missing+=("$var")
done
if (( ${#missing[@]} )); then
  die "missing environment variable(s): ${missing[*]}. Set MASTER_ADDR (node 0's address), MASTER_PORT," \
      "NODE_RANK (0..nodes-1), WORLD_SIZE (GPUs on all nodes) and LOCAL_WORLD_SIZE (GPUs on this node)."
fi
for var in MASTER_PORT NODE_RANK WORLD_SIZE LOCAL_WORLD_SIZE; do
  [[ "${!var}" =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer, got '${!var}'"
done
(( LOCAL_WORLD_SIZE >= 1 )) || die "LOCAL_WORLD_SIZE must be at least 1, got $LOCAL_WORLD_SIZE"
(( MASTER_PORT >= 1 && MASTER_PORT <= 65535 )) || die "MASTER_PORT must be in 1..65535, got $MASTER_PORT"
if (( WORLD_SIZE < LOCAL_WORLD_SIZE || WORLD_SIZE % LOCAL_WORLD_SIZE )); then
  die "WORLD_SIZE ($WORLD_SIZE) must be a multiple of LOCAL_WORLD_SIZE ($LOCAL_WORLD_SIZE): it counts" \
      "processes on all nodes (nodes x LOCAL_WORLD_SIZE), not nodes"
fi
nodes=$(( WORLD_SIZE / LOCAL_WORLD_SIZE ))
(( NODE_RANK < nodes )) || die "NODE_RANK ($NODE_RANK) must be below the number of nodes," \
  "WORLD_SIZE / LOCAL_WORLD_SIZE = $nodes"

yaml=$1
[[ -f "$yaml" ]] || die "config file not found: $yaml (relative paths are taken from $(pwd))"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ -n "${COMPOSER:-}" ]]; then launcher=("$COMPOSER"); else launcher=(python -m foundry.launch); fi
cmd=("${launcher[@]}"
     --world_size "$WORLD_SIZE" --node_rank "$NODE_RANK" --nproc "$LOCAL_WORLD_SIZE"
     --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
if [[ -n "${FOUNDRY_LOG_DIR:-}" ]]; then
  mkdir -p "$FOUNDRY_LOG_DIR"
  cmd+=(--stdout "$FOUNDRY_LOG_DIR/rank{rank}.stdout.txt" --stderr "$FOUNDRY_LOG_DIR/rank{rank}.stderr.txt")
fi
cmd+=("$root/launch/train.py" "$@")

if [[ "$dry_run" == 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
command -v "${launcher[0]}" >/dev/null || die "'${launcher[0]}' not found: activate foundry's venv" \
  "(source .venv/bin/activate) or set COMPOSER to the launcher's path"
echo "$prog: node $NODE_RANK of $nodes, $LOCAL_WORLD_SIZE processes, master $MASTER_ADDR:$MASTER_PORT" >&2
exec "${cmd[@]}"
