"""Real training runs in this process (one rank, FSDP2 on a 1-process mesh, tiny.yaml): full checkpoints,
resumption past a half-written checkpoint, autoresume off, weights from a Hugging Face folder, rotation and
object-store autoresume (a failed upload: test_upload_faults.py). One run takes a few seconds; the
multi-process behaviour is in tests/e2e.
"""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch

from foundry.config.errors import ConfigError
from foundry.loggers.jsonl import read_metrics
from foundry.models.mpt.configuration import DTYPE_KEY
from tests.checkpoint.helpers import tokenizer_files, truncate
from tests.e2e.conftest import TINY_YAML, tiny_data  # noqa: F401  (the corpus fixture)


def train_here(data_root: str, root: str, *extra: str):
    from foundry.config.load import load_config
    from foundry.train import train

    cfg = load_config(TINY_YAML, [f'variables.data_root={data_root}', f'train_loader.dataset.local={data_root}/english',
                                  f'run_folder={root}/run', f'save_folder={root}/checkpoints', 'max_duration=6ba',
                                  'save_interval=2ba', 'model.resid_pdrop=0.1', *extra])
    trainer = train(cfg)
    trainer.close()
    return trainer


def train_losses(root: str) -> dict[int, float]:
    return {b: m['loss/train/total'] for b, m in read_metrics(f'{root}/run/metrics.jsonl').items()
            if 'loss/train/total' in m}


def test_full_checkpoints_resume_exactly_past_a_half_written_one(tiny_data, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger='foundry')
    whole = str(tmp_path / 'whole')
    train_here(tiny_data, whole, 'fsdp_config.state_dict_type=full')
    assert sorted(f for f in os.listdir(f'{whole}/checkpoints') if f.endswith('.pt')) == [
        'ep0-ba2-rank0.pt', 'ep0-ba4-rank0.pt', 'ep0-ba6-rank0.pt', 'latest-rank0.pt']

    # What a kill during the save at batch 4 leaves: batch 2 whole, batch 4 half written, the pointer at 2.
    killed = str(tmp_path / 'killed')
    os.makedirs(f'{killed}/checkpoints')
    shutil.copy(f'{whole}/checkpoints/ep0-ba2-rank0.pt', f'{killed}/checkpoints/')
    shutil.copy(f'{whole}/checkpoints/ep0-ba4-rank0.pt', f'{killed}/checkpoints/')
    truncate(f'{killed}/checkpoints/ep0-ba4-rank0.pt', 0.5)
    os.symlink('ep0-ba2-rank0.pt', f'{killed}/checkpoints/latest-rank0.pt')

    caplog.clear()
    train_here(tiny_data, killed, 'fsdp_config.state_dict_type=full')
    text = caplog.text
    assert 'ep0-ba4-rank0.pt is incomplete (not a complete torch.save file' in text
    assert f'resuming from {killed}/checkpoints/ep0-ba2-rank0.pt (batch 2)' in text
    assert 'restored the checkpoint RNG state before batch 2' in text
    # Composer alone would have refused to start here ("may conflict with a future checkpoint").
    assert os.path.exists(f'{killed}/checkpoints/ep0-ba4-rank0.pt.incomplete')
    expected = train_losses(whole)
    assert train_losses(killed) == {b: expected[b] for b in range(2, 6)}


def test_autoresume_false_refuses_to_overwrite_then_starts_over_when_asked(tiny_data, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger='foundry')
    root = str(tmp_path)
    train_here(tiny_data, root, 'max_duration=2ba')
    with pytest.raises(ConfigError, match='already holds checkpoints .newest ep0-ba2. and autoresume is off'):
        train_here(tiny_data, root, 'max_duration=2ba', 'autoresume=false')
    caplog.clear()
    trainer = train_here(tiny_data, root, 'max_duration=2ba', 'autoresume=false', 'save_overwrite=true')
    assert 'autoresume: off (autoresume: false); this run starts at batch 0' in caplog.text
    assert 'resuming' not in caplog.text
    assert int(trainer.state.timestamp.batch) == 2  # trained 0 -> 2 again, not resumed at 2
    assert [d for d in os.listdir(f'{root}/checkpoints') if d.startswith('replaced-')]


def test_load_path_hf_folder_loads_its_weights(tiny_data, tmp_path, caplog):  # noqa: F811
    from foundry.checkpoint.weights import WeightsError
    from foundry.config.load import load_config
    from foundry.models.mpt.configuration import MPTConfig
    from foundry.models.mpt.modeling import MPTForCausalLM

    caplog.set_level(logging.INFO, logger='foundry')
    model_cfg = {k: v for k, v in load_config(TINY_YAML, [f'variables.data_root={tiny_data}']).model.items()
                 if k != 'name'}
    torch.manual_seed(11)
    hf_model = MPTForCausalLM(MPTConfig(**{**model_cfg, 'init_device': 'cpu'}))
    with torch.no_grad():
        for p in hf_model.parameters():
            p.normal_(0, 0.3)
    hf = str(tmp_path / 'hf')
    hf_model.save_pretrained(hf, max_shard_size='100KB')  # sharded, with an index, as mpt-7b ships

    # One batch: tiny.yaml warms the lr up from 0, so the first step leaves the loaded weights as they are.
    trainer = train_here(tiny_data, str(tmp_path / 'run'), f'load_path={hf}', 'max_duration=1ba')
    assert f'loaded {len(hf_model.state_dict())} tensors from the Hugging Face folder {hf}' in caplog.text
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    got = get_model_state_dict(trainer.state.model.model, options=StateDictOptions(full_state_dict=True))
    for name, tensor in hf_model.state_dict().items():
        assert torch.equal(got[name], tensor), name

    wrong = str(tmp_path / 'wrong')
    MPTForCausalLM(MPTConfig(**{**model_cfg, 'd_model': 64, 'init_device': 'cpu'})).save_pretrained(wrong)
    with pytest.raises(WeightsError, match=r'transformer\.wte\.weight: \[512, 64\] in Hugging Face folder .*, '
                                           r'\[512, 32\] in the model'):
        train_here(tiny_data, str(tmp_path / 'run2'), f'load_path={wrong}', 'max_duration=1ba')


def test_hf_checkpointer_precision_and_interval(tiny_data, tmp_path):  # noqa: F811
    from safetensors import safe_open
    from transformers import AutoConfig

    hf = tmp_path / 'hf'
    train_here(tiny_data, str(tmp_path), 'max_duration=3ba', f'callbacks.hf_checkpointer.save_folder={hf}/{{run_name}}',
               'callbacks.hf_checkpointer.save_interval=2ba', 'callbacks.hf_checkpointer.precision=bf16')
    # Every 2 batches and at the end of training; {run_name} filled in; no half-written folder left.
    assert sorted(os.listdir(hf / 'tiny')) == ['ba2', 'ba3']
    folder = hf / 'tiny' / 'ba3'
    # The config, one weights file, and the tokenizer files this transformers writes.
    assert set(os.listdir(folder)) == {'config.json', 'model.safetensors'} | tokenizer_files(str(folder))
    assert {'tokenizer.json', 'tokenizer_config.json'} <= set(os.listdir(folder))
    with safe_open(str(folder / 'model.safetensors'), framework='pt') as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert getattr(AutoConfig.from_pretrained(str(folder)), DTYPE_KEY) == torch.bfloat16


def test_load_path_full_state_or_weights_only(tiny_data, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger='foundry')
    first = str(tmp_path / 'first')
    train_here(tiny_data, first, 'fsdp_config.state_dict_type=full', 'max_duration=4ba')
    checkpoint = f'{first}/checkpoints/ep0-ba2-rank0.pt'

    # Full training state: continues at batch 2 exactly as the first run did (another save folder).
    caplog.clear()
    trainer = train_here(tiny_data, str(tmp_path / 'full'), 'fsdp_config.state_dict_type=full', 'max_duration=4ba',
                         f'load_path={checkpoint}')
    assert f'loaded the full training state from {checkpoint}; training starts at batch 2' in caplog.text
    expected = train_losses(first)
    assert train_losses(str(tmp_path / 'full')) == {2: expected[2], 3: expected[3]}
    assert int(trainer.state.timestamp.batch) == 4

    # Weights only: batch 0 again, from those weights.
    caplog.clear()
    trainer = train_here(tiny_data, str(tmp_path / 'weights'), 'fsdp_config.state_dict_type=full', 'max_duration=1ba',
                         f'load_path={checkpoint}', 'load_weights_only=true')
    assert f'loaded model weights from {checkpoint}; training starts at batch 0' in caplog.text
    assert sorted(train_losses(str(tmp_path / 'weights'))) == [0]


def test_rotation_counts_the_checkpoints_from_before_the_restart(tiny_data, tmp_path):  # noqa: F811
    root = str(tmp_path)
    train_here(tiny_data, root, 'fsdp_config.state_dict_type=full')
    os.remove(f'{root}/checkpoints/ep0-ba6-rank0.pt')  # stopped after the batch-4 save
    os.remove(f'{root}/checkpoints/latest-rank0.pt')
    train_here(tiny_data, root, 'fsdp_config.state_dict_type=full', 'save_num_checkpoints_to_keep=2')
    # Composer alone keeps ep0-ba2 forever: its rotation only knows what this process saved.
    assert sorted(f for f in os.listdir(f'{root}/checkpoints') if f.startswith('ep')) == [
        'ep0-ba4-rank0.pt', 'ep0-ba6-rank0.pt']


def test_full_checkpoints_on_s3_autoresume(tiny_data, tmp_path, make_bucket, s3_endpoint, caplog,  # noqa: F811
                                           monkeypatch):
    """Composer's own autoresume looks for full checkpoints of a remote save folder only in loggers."""
    import boto3

    monkeypatch.setenv('FOUNDRY_UPLOAD_POLL_S', '1')  # Composer re-checks finished uploads every 30 s
    caplog.set_level(logging.INFO, logger='foundry')
    bucket = make_bucket('full-resume')
    args = ('fsdp_config.state_dict_type=full', f'save_folder={bucket}/{{run_name}}', 'max_duration=4ba')
    whole = str(tmp_path / 'whole')
    train_here(tiny_data, whole, *args)
    client = boto3.client('s3', endpoint_url=s3_endpoint)
    keys = sorted(o['Key'] for o in client.list_objects_v2(Bucket='full-resume')['Contents'])
    assert {'tiny/ep0-ba2-rank0.pt', 'tiny/ep0-ba4-rank0.pt', 'tiny/latest-rank0.pt.symlink',
            'tiny/hf_meta/config.json'} <= set(keys)
    client.delete_object(Bucket='full-resume', Key='tiny/ep0-ba4-rank0.pt')  # back to after batch 2
    client.delete_object(Bucket='full-resume', Key='tiny/latest-rank0.pt.symlink')
    caplog.clear()
    again = str(tmp_path / 'again')
    train_here(tiny_data, again, *args)
    assert f'autoresume: on; resuming from {bucket}/tiny/ep0-ba2-rank0.pt (batch 2)' in caplog.text
    expected = train_losses(whole)
    assert train_losses(again) == {2: expected[2], 3: expected[3]}
