"""`save_async: true` in real in-process runs (one rank, FSDP2 on a 1-process mesh, tiny.yaml): the same
checkpoints and losses as synchronous saves, the pointer moved only to whole checkpoints, and the run's
resume from them. The kill during a background write is in tests/e2e/test_resume.py."""

from __future__ import annotations

import logging
import os
import shutil

import pytest

from foundry.config.errors import ConfigError
from foundry.loggers.jsonl import read_metrics
from tests.checkpoint.test_runs_inprocess import train_here, train_losses
from tests.e2e.conftest import tiny_data  # noqa: F401  (the corpus fixture)


def test_async_saves_match_sync_saves_and_resume(tiny_data, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger='foundry')
    sync, background = str(tmp_path / 'sync'), str(tmp_path / 'async')
    train_here(tiny_data, sync)
    trainer = train_here(tiny_data, background, 'save_async=true')
    saver = trainer._checkpoint_saver
    assert type(saver).__name__ == 'AsyncCheckpointSaver' and len(saver.stall_seconds) == 3
    checkpoints = f'{background}/checkpoints'
    for name in ('ep0-ba2', 'ep0-ba4', 'ep0-ba6'):
        assert sorted(os.listdir(f'{checkpoints}/{name}')) == ['.metadata', '__0_0.distcp']
        assert f'checkpoint {checkpoints}/{name} written in the background' in caplog.text
    assert os.readlink(f'{checkpoints}/latest-rank0.pt') == 'ep0-ba6'
    stalls = {b: m['checkpoint/stall_s'] for b, m in read_metrics(f'{background}/run/metrics.jsonl').items()
              if 'checkpoint/stall_s' in m}
    assert sorted(stalls) == [2, 4, 6] and all(0 < s < 30 for s in stalls.values())
    assert train_losses(background) == train_losses(sync), 'writing in the background changes no loss'

    # Resume from the background-written checkpoint at batch 4 (as after a kill before batch 6 was saved).
    shutil.rmtree(f'{checkpoints}/ep0-ba6')
    os.remove(f'{checkpoints}/latest-rank0.pt')
    os.symlink('ep0-ba4', f'{checkpoints}/latest-rank0.pt')
    caplog.clear()
    train_here(tiny_data, background, 'save_async=true')
    assert f'resuming from {checkpoints}/ep0-ba4 (batch 4)' in caplog.text
    assert train_losses(background) == train_losses(sync), 'the resumed run continues exactly'
    assert os.readlink(f'{checkpoints}/latest-rank0.pt') == 'ep0-ba6'


def test_async_needs_sharded_local_checkpoints(tiny_data, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match='save_async: true. writes sharded checkpoints in the background'):
        train_here(tiny_data, str(tmp_path), 'save_async=true', 'fsdp_config.state_dict_type=full')
    with pytest.raises(ConfigError, match="needs a local `save_folder` for now; 's3://b/c' is an object store"):
        train_here(tiny_data, str(tmp_path), 'save_async=true', 'save_folder=s3://b/c')
