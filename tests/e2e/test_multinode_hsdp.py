"""HSDP across two simulated nodes, then resumed on one: the multi-node path on one CPU box.

Two `launch/env/train.sh` processes (NODE_RANK 0 and 1, WORLD_SIZE 4, LOCAL_WORLD_SIZE 2, master
127.0.0.1) form one 4-rank gloo job, exactly as two machines would. `fsdp_config` asks for
HYBRID_SHARD, which puts a shard group on each node and replicates across the nodes. Evidence
checked, all of it produced by the run itself:

- every rank logs its mesh coordinate and its parameters' DTensor placements: (Replicate(), Shard(0))
  on a (data_parallel_replicate=2, data_parallel_shard=2) mesh, half of each weight held locally;
- after training, ranks holding the same shard on different nodes (0/2, 1/3) hold bitwise-identical
  parameters although they trained on different samples: the cross-node gradient all-reduce works;
- the sharded checkpoint is written by the first replica only (ranks 0 and 1: `__0_0`, `__1_0`);
- that checkpoint autoresumes on one node of 2 processes (a 1-D mesh), continuing from batch 12 at the
  loss it had reached, and trains to the end.

Two simulated nodes on one host would share /dev/shm, where MosaicML streaming registers each node's
dataset under the lowest free prefix; both nodes pick the same one and the second crashes
(FileExistsError). Real nodes each have their own /dev/shm, so each simulated node gets a private one
(a mount namespace via `unshare`); where that is not permitted the test is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.e2e.conftest import REPO, TINY_YAML, tiny_overrides

pytestmark = pytest.mark.slow

TRAIN_SH = os.path.join(REPO, 'launch', 'env', 'train.sh')
COMPOSER = os.path.join(os.path.dirname(sys.executable), 'composer')
LAYOUT = re.compile(r'rank (\d+): FSDP2 mesh (.+?) \(ranks (\[[\d, \[\]]*\])\), coordinate \[([\d, ]+)\]; '
                    r'parameter placements (.+?); (\S+) local \[(\d+), (\d+)\] of \[(\d+), (\d+)\]')
FINGERPRINT = re.compile(r'rank (\d+): local parameter shards after fit: fingerprint (\S+)')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _private_shm_prefix() -> list[str] | None:
    """A command prefix that runs its command with a fresh tmpfs on /dev/shm, or None if not permitted."""
    inner = ['sh', '-c', 'mount -t tmpfs foundry-node-shm /dev/shm && exec "$@"', 'sh']
    tries = [['unshare', '--mount']] if os.geteuid() == 0 else []
    tries.append(['unshare', '--user', '--map-root-user', '--mount'])
    for base in tries:
        try:
            probe = subprocess.run([*base, *inner, 'true'], capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return [*base, *inner]
    return None


def _run_nodes(nodes: int, local: int, overrides: list[str], run_dir: str, isolate: list[str],
               timeout: float = 240) -> list[str]:
    """Start train.sh once per node (as each machine would) and wait; returns every rank's log text."""
    port = _free_port()
    procs = []
    for node in range(nodes):
        # Each simulated machine gets its own /tmp, as real nodes have (machine-wide locks live there).
        node_tmp = os.path.join(run_dir, f'node{node}.tmp')
        os.makedirs(node_tmp, exist_ok=True)
        env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'COMPOSER': COMPOSER, 'TMPDIR': node_tmp,
               'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port), 'NODE_RANK': str(node),
               'WORLD_SIZE': str(nodes * local), 'LOCAL_WORLD_SIZE': str(local),
               'FOUNDRY_LOG_DIR': os.path.join(run_dir, f'node{node}')}
        out = open(os.path.join(run_dir, f'node{node}.console.txt'), 'w')
        procs.append((subprocess.Popen([*isolate, TRAIN_SH, TINY_YAML, *overrides], cwd=REPO, env=env,
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True), out))
    deadline = time.time() + timeout
    try:
        while any(p.poll() is None for p, _ in procs):
            # One node failing leaves the other blocked in a collective: stop at the first failure.
            if time.time() > deadline or any(p.poll() not in (None, 0) for p, _ in procs):
                break
            time.sleep(1)
    finally:
        for p, out in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
            out.close()
    logs = []
    for node in range(nodes):
        with open(os.path.join(run_dir, f'node{node}.console.txt')) as f:
            logs.append(f.read())
        rank_dir = os.path.join(run_dir, f'node{node}')
        for name in sorted(os.listdir(rank_dir)) if os.path.isdir(rank_dir) else []:
            with open(os.path.join(rank_dir, name)) as f:
                logs.append(f.read())
    codes = [p.returncode for p, _ in procs]
    assert codes == [0] * nodes, f'node exit codes {codes}; last log lines:\n' + '\n'.join(
        text[-2500:] for text in logs)
    return logs


def _layouts(logs: list[str]) -> dict[int, tuple]:
    return {int(m.group(1)): m.groups()[1:] for text in logs for m in LAYOUT.finditer(text)}


def _losses(metrics_path: str) -> list[tuple[int, float]]:
    """(batch, loss) for every train-loss line in file order, replays included (no dedup)."""
    rows = []
    with open(metrics_path) as f:
        for line in f:
            record = json.loads(line)
            if 'loss/train/total' in record:
                rows.append((record['batch'], record['loss/train/total']))
    return rows


def test_hsdp_over_two_simulated_nodes_then_resume_on_one_node(tiny_data, tmp_path):
    isolate = _private_shm_prefix()
    if isolate is None:
        pytest.skip('cannot give each simulated node its own /dev/shm (unshare --mount not permitted); '
                    'two nodes sharing one collide in MosaicML streaming\'s shared-memory registry')
    base = tiny_overrides(tiny_data, str(tmp_path), 'fsdp_config.sharding_strategy=HYBRID_SHARD',
                          'optimizer.lr=3e-3', 'save_interval=6ba')
    ckpt = tmp_path / 'checkpoints'
    metrics_path = str(tmp_path / 'run' / 'metrics.jsonl')

    # -- Two nodes x 2 processes: HSDP, 12 batches, sharded checkpoints at 6 and 12.
    phase1 = tmp_path / 'two_nodes'
    phase1.mkdir()
    logs = _run_nodes(2, 2, [*base, 'max_duration=12ba'], str(phase1), isolate)

    layouts = _layouts(logs)
    assert sorted(layouts) == [0, 1, 2, 3], f'layout lines for ranks {sorted(layouts)}'
    for rank, (mesh, ranks, coord, placements, name, local0, local1, full0, full1) in layouts.items():
        assert mesh == 'data_parallel_replicate=2 x data_parallel_shard=2', mesh
        assert ranks == '[[0, 1], [2, 3]]'  # shard groups are the nodes, replicas span them
        assert [int(c) for c in coord.split(',')] == [rank // 2, rank % 2]
        assert placements == '(Replicate(), Shard(dim=0))', placements
        assert (int(local0), int(local1)) == (int(full0) // 2, int(full1)), (name, local0, full0)

    prints = {int(m.group(1)): m.group(2) for text in logs for m in FINGERPRINT.finditer(text)}
    assert sorted(prints) == [0, 1, 2, 3]
    assert prints[0] == prints[2] and prints[1] == prints[3], f'replicas diverged: {prints}'
    assert prints[0] != prints[1]

    for step in (6, 12):
        files = sorted(p.name for p in (ckpt / f'ep0-ba{step}').iterdir())
        assert files == ['.metadata', '__0_0.distcp', '__1_0.distcp'], f'ep0-ba{step}: {files}'
    first_run = _losses(metrics_path)
    assert [b for b, _ in first_run] == list(range(12))

    # -- One node x 2 processes: autoresume from ep0-ba12 (a 1-D mesh now) and train to batch 20.
    phase2 = tmp_path / 'one_node'
    phase2.mkdir()
    logs = _run_nodes(1, 2, [*base, 'max_duration=20ba'], str(phase2), isolate)

    layouts = _layouts(logs)
    assert sorted(layouts) == [0, 1]
    assert all(layout[0] == 'data_parallel_shard=2' and layout[3] == '(Shard(dim=0),)' for layout in layouts.values())
    rows = _losses(metrics_path)
    resumed = rows[len(first_run):]
    assert [b for b, _ in resumed] == list(range(12, 20)), 'the resumed run did not continue at batch 12'
    start = sum(loss for _, loss in first_run[:3]) / 3
    end_first = sum(loss for _, loss in first_run[-3:]) / 3
    begin_resumed = sum(loss for _, loss in resumed[:3]) / 3
    end_resumed = sum(loss for _, loss in resumed[-3:]) / 3
    assert end_first < start - 0.3, f'phase 1 did not learn: {start:.3f} -> {end_first:.3f}'
    # Continues where it stopped (a fresh model would be back near `start`), and keeps learning.
    assert abs(begin_resumed - end_first) < 0.25, (end_first, begin_resumed)
    assert end_resumed < end_first, (end_first, end_resumed)
    assert sorted(p.name for p in (ckpt / 'ep0-ba20').iterdir()) == ['.metadata', '__0_0.distcp', '__1_0.distcp']
    assert os.path.realpath(ckpt / 'latest-rank0.pt') == str(ckpt / 'ep0-ba20')

    summary = [f'rank {r}: mesh {m[0]} coordinate [{m[2]}] placements {m[3]} local {m[5]}x{m[6]} of {m[7]}x{m[8]}'
               for r, m in sorted(_layouts_of_phase(phase1).items())]
    summary += [f'rank {r}: fingerprint after 12 batches {fp}' for r, fp in sorted(prints.items())]
    summary += [f'{d.name}: {sorted(p.name for p in d.iterdir())}' for d in sorted(ckpt.glob('ep0-ba*'), key=lambda d: int(d.name[6:]))]
    summary += [f'two nodes, losses batch 0-11: {[round(v, 3) for _, v in first_run]}',
                f'one node (resumed), losses batch 12-19: {[round(v, 3) for _, v in resumed]}']
    print('\n'.join(summary))


def _layouts_of_phase(run_dir) -> dict[int, tuple]:
    logs = [p.read_text() for p in sorted(run_dir.rglob('*.txt'))]
    return _layouts(logs)
