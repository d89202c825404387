"""plan_start: which checkpoint a run starts from, on real save folders, and what it says about it."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from foundry.checkpoint.errors import CheckpointError
from foundry.checkpoint.resume import plan_start
from foundry.config.errors import ConfigError
from tests.checkpoint.helpers import tiny_mpt, write_full, write_sharded

STATE = {'transformer.wte.weight': torch.ones(8, 4)}


def cfg(**kw):
    base = dict(load_path=None, load_weights_only=False, save_overwrite=False, autoresume=None)
    base.update(kw)
    return SimpleNamespace(**base)


def folder_with(tmp_path, *names, broken=()):
    folder = tmp_path / 'ckpt'
    for name in names:
        if name.endswith('.pt'):
            write_full(str(folder / name), STATE)
        else:
            write_sharded(str(folder / name), STATE)
    for name in broken:
        os.remove(folder / name / '.metadata')
    return str(folder)


def test_autoresume_takes_the_newest_whole_checkpoint_and_says_so(tmp_path):
    folder = folder_with(tmp_path, 'ep0-ba2', 'ep0-ba4', 'ep0-ba6', broken=['ep0-ba6'])
    start = plan_start(cfg(load_path='/ignored'), True, folder, 'sharded')
    assert start.resume.name == 'ep0-ba4' and start.load_path == f'{folder}/ep0-ba4' and not start.load_weights_only
    text = '\n'.join(start.lines)
    assert f'{folder}/ep0-ba6 is incomplete (no .metadata' in text and 'moved aside' in text
    assert 'latest-rank0.pt pointed to nothing; repointed to ep0-ba4' in text
    assert f'autoresume: on; resuming from {folder}/ep0-ba4 (batch 4) (load_path /ignored is ignored' in text
    assert os.path.isdir(f'{folder}/ep0-ba6.incomplete') and os.readlink(f'{folder}/latest-rank0.pt') == 'ep0-ba4'


def test_autoresume_with_nothing_saved_starts_at_zero(tmp_path):
    start = plan_start(cfg(), True, str(tmp_path / 'empty'), 'sharded')
    assert start.resume is None and start.load_path is None
    assert start.lines == [f'autoresume: on; no checkpoint in {tmp_path / "empty"}, so this run starts at batch 0']


def test_autoresume_refuses_a_checkpoint_of_the_other_layout(tmp_path):
    folder = folder_with(tmp_path, 'ep0-ba2-rank0.pt')
    with pytest.raises(ConfigError, match='ep0-ba2-rank0.pt is full but this run saves sharded'):
        plan_start(cfg(), True, folder, 'sharded')


def test_autoresume_off_never_clobbers_a_previous_run(tmp_path):
    folder = folder_with(tmp_path, 'ep0-ba2', 'ep0-ba4')
    with pytest.raises(ConfigError, match='already holds checkpoints .newest ep0-ba4. and autoresume is off'):
        plan_start(cfg(autoresume=False), False, folder, 'sharded')
    assert sorted(os.listdir(folder)) == ['ep0-ba2', 'ep0-ba4']  # untouched

    start = plan_start(cfg(autoresume=False, save_overwrite=True), False, folder, 'sharded')
    assert start.resume is None and start.load_path is None
    assert start.lines[-1] == 'autoresume: off (autoresume: false); this run starts at batch 0'
    parked = [d for d in os.listdir(folder) if d.startswith('replaced-')]
    assert len(parked) == 1 and sorted(os.listdir(os.path.join(folder, parked[0]))) == ['ep0-ba2', 'ep0-ba4']


def test_load_path_checkpoint_hf_folder_and_broken_checkpoint(tmp_path):
    folder = folder_with(tmp_path, 'ep0-ba2', 'ep0-ba4', 'ep0-ba6-rank0.pt', broken=['ep0-ba4'])
    start = plan_start(cfg(load_path=f'{folder}/ep0-ba2', load_weights_only=True), False, None, 'sharded')
    assert (start.load_path, start.load_weights_only, start.weights) == (f'{folder}/ep0-ba2', True, None)

    with pytest.raises(CheckpointError, match='is not a whole checkpoint: no .metadata'):
        plan_start(cfg(load_path=f'{folder}/ep0-ba4'), False, None, 'sharded')
    with pytest.raises(CheckpointError, match='does not exist'):
        plan_start(cfg(load_path=f'{folder}/nope'), False, None, 'sharded')

    # A full checkpoint into a sharded run: full state cannot be converted, weights can (foundry reads them).
    with pytest.raises(ConfigError, match='is a full checkpoint but this run uses sharded'):
        plan_start(cfg(load_path=f'{folder}/ep0-ba6-rank0.pt'), False, None, 'sharded')
    start = plan_start(cfg(load_path=f'{folder}/ep0-ba6-rank0.pt', load_weights_only=True), False, None, 'sharded')
    assert start.weights == f'{folder}/ep0-ba6-rank0.pt' and start.load_path is None

    hf = tmp_path / 'hf'
    tiny_mpt().save_pretrained(str(hf))
    start = plan_start(cfg(load_path=str(hf)), False, None, 'sharded')
    assert start.weights == str(hf) and start.load_path is None
    assert 'is a Hugging Face folder' in start.lines[-1]


def test_remote_hf_folder_is_downloaded(tmp_path, make_bucket, s3_endpoint):
    import boto3

    bucket = make_bucket('hf-weights')
    hf = tmp_path / 'hf'
    tiny_mpt().save_pretrained(str(hf))
    client = boto3.client('s3', endpoint_url=s3_endpoint)
    for file in os.listdir(hf):
        client.upload_file(str(hf / file), 'hf-weights', f'models/tiny/{file}')
    start = plan_start(cfg(load_path=f'{bucket}/models/tiny'), False, None, 'sharded')
    assert start.weights and sorted(os.listdir(start.weights)) == sorted(os.listdir(hf))
