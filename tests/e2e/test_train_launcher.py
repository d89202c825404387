"""The whole slice, launched as users launch it: composer -n 2 on CPU, FSDP2, LION, MDS data."""

import os

import pytest

from foundry.loggers.jsonl import read_metrics
from tests.e2e.conftest import launch, tiny_overrides

pytestmark = pytest.mark.slow


def test_two_process_fsdp_run_trains_and_writes_a_sharded_checkpoint(tiny_data, tmp_path):
    result = launch(tiny_overrides(tiny_data, str(tmp_path), 'max_duration=24ba', 'save_interval=12ba',
                                   'optimizer.lr=3e-3'))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    metrics = read_metrics(str(tmp_path / 'run' / 'metrics.jsonl'))
    losses = [metrics[b]['loss/train/total'] for b in sorted(metrics) if 'loss/train/total' in metrics[b]]
    assert len(losses) == 24
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.5, f'loss did not fall: first {first:.3f}, last {last:.3f}'

    checkpoint = tmp_path / 'checkpoints' / 'ep0-ba24'
    # Sharded: one distcp file per rank plus the index; and the run's HF metadata beside it.
    assert sorted(p.name for p in checkpoint.iterdir()) == ['.metadata', '__0_0.distcp', '__1_0.distcp']
    assert os.path.realpath(tmp_path / 'checkpoints' / 'latest-rank0.pt') == str(checkpoint)
    assert (tmp_path / 'checkpoints' / 'hf_meta' / 'config.json').exists()


def test_misspelt_key_fails_fast_with_one_clear_line(tiny_data, tmp_path):
    result = launch(tiny_overrides(tiny_data, str(tmp_path), 'optimizer.lrr=1e-3'))
    assert result.returncode == 2
    assert 'foundry: config error: unknown key `optimizer.lrr`: did you mean `optimizer.lr`?' in result.stderr
    output = result.stdout + result.stderr
    assert 'Traceback' not in output
    assert output.count('foundry:') == 1, output  # once: local rank 0; rank 1 ends quietly by the launcher's SIGTERM
    assert 'Begin global rank 1' not in output
