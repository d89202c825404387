"""Hugging Face MPT folders (mosaicml/mpt-7b layouts) and Composer checkpoints loaded into a model, weights only."""

from __future__ import annotations

import json
import os

import pytest
import torch

from foundry.checkpoint.weights import (CheckpointWeights, HFWeights, WeightsError, is_hf_folder, load_weights,
                                        weights_source)
from tests.checkpoint.helpers import tiny_mpt, write_full, write_sharded


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def save_bin_folder(model, folder: str, shards: int) -> None:
    """mosaicml/mpt-7b's layout: pytorch_model.bin, or pytorch_model-0000i-of-0000n.bin shards with
    pytorch_model.bin.index.json. transformers 5's save_pretrained writes only safetensors, so the
    files are written here as transformers 4 wrote them."""
    os.makedirs(folder)
    model.config.save_pretrained(folder)
    state = model.state_dict()
    if shards == 1:
        torch.save(state, os.path.join(folder, 'pytorch_model.bin'))
        return
    names = list(state)
    weight_map = {}
    for i in range(shards):
        file = f'pytorch_model-{i + 1:05d}-of-{shards:05d}.bin'
        part = names[i * len(names) // shards:(i + 1) * len(names) // shards]
        torch.save({n: state[n] for n in part}, os.path.join(folder, file))
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    with open(os.path.join(folder, 'pytorch_model.bin.index.json'), 'w') as f:
        json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map}, f)


@pytest.mark.parametrize('layout', ['safetensors', 'safetensors-sharded', 'bin', 'bin-sharded'])
def test_hf_folder_layouts_load_exactly(layout, tmp_path):
    source = tiny_mpt(seed=1)
    folder = str(tmp_path / 'hf')
    sharded = layout.endswith('-sharded')
    if layout.startswith('safetensors'):
        source.save_pretrained(folder, max_shard_size='20KB' if sharded else '10GB')
    else:
        save_bin_folder(source, folder, shards=3 if sharded else 1)
    index = 'model.safetensors.index.json' if layout.startswith('safetensors') else 'pytorch_model.bin.index.json'
    assert os.path.exists(os.path.join(folder, index)) == sharded
    with open(os.path.join(folder, 'config.json')) as f:
        assert json.load(f)['attn_config']['alibi'] is True  # MPT-7B's config layout
    assert is_hf_folder(folder)

    target = tiny_mpt(seed=2)
    source_weights = weights_source(folder)
    assert isinstance(source_weights, HFWeights)
    assert (len(set(source_weights.files.values())) > 1) == sharded
    count = load_weights(target, source_weights, 'test folder', max_bytes=4096)
    assert count == len(target.state_dict())
    _equal(source, target)


def test_shape_mismatch_names_the_tensor(tmp_path):
    folder = str(tmp_path / 'hf')
    tiny_mpt(d_model=64).save_pretrained(folder)
    target = tiny_mpt()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        load_weights(target, HFWeights(folder), f'Hugging Face folder {folder}')
    message = str(err.value)
    assert f'transformer.wte.weight: [128, 64] in Hugging Face folder {folder}, [128, 32] in the model' in message
    assert 'transformer.blocks.0.attn.Wqkv.weight: [192, 64]' in message
    # Checked before copying: nothing changed.
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    folder = str(tmp_path / 'hf')
    tiny_mpt(n_layers=3).save_pretrained(folder)
    with pytest.raises(WeightsError, match=r'not in the model: transformer\.blocks\.2\.'):
        load_weights(tiny_mpt(), HFWeights(folder), 'three layers')
    folder1 = str(tmp_path / 'hf1')
    tiny_mpt(n_layers=1).save_pretrained(folder1)
    with pytest.raises(WeightsError, match=r'missing from one layer: transformer\.blocks\.1\.'):
        load_weights(tiny_mpt(), HFWeights(folder1), 'one layer')


def test_untied_lm_head_in_the_folder_is_ignored_by_a_tied_model(tmp_path):
    from safetensors.torch import load_file, save_file

    source = tiny_mpt(seed=3)
    folder = str(tmp_path / 'hf')
    source.save_pretrained(folder)
    path = os.path.join(folder, 'model.safetensors')
    tensors = load_file(path)
    tensors['lm_head.weight'] = tensors['transformer.wte.weight'].clone()  # as some exporters write it
    save_file(tensors, path, metadata={'format': 'pt'})
    target = tiny_mpt(seed=4)
    load_weights(target, HFWeights(folder), 'folder')
    _equal(source, target)


def test_not_an_mpt_folder(tmp_path):
    folder = tmp_path / 'llama'
    folder.mkdir()
    (folder / 'config.json').write_text(json.dumps({'model_type': 'llama'}))
    (folder / 'model.safetensors').write_bytes(b'')
    with pytest.raises(WeightsError, match="Hugging Face 'llama' model; foundry trains MPT"):
        HFWeights(str(folder))


def test_missing_shard_file_named(tmp_path):
    folder = str(tmp_path / 'hf')
    tiny_mpt().save_pretrained(folder, max_shard_size='20KB')
    shard = sorted(f for f in os.listdir(folder) if f.endswith('.safetensors'))[0]
    os.remove(os.path.join(folder, shard))
    with pytest.raises(WeightsError, match=f'not in the folder: {shard}'):
        HFWeights(folder)


@pytest.mark.parametrize('kind', ['sharded', 'full'])
def test_composer_checkpoint_weights(kind, tmp_path):
    source = tiny_mpt(seed=5)
    state = dict(source.state_dict())
    state.pop('lm_head.weight', None)
    path = (write_sharded(str(tmp_path / 'ep0-ba2'), state) if kind == 'sharded'
            else write_full(str(tmp_path / 'ep0-ba2-rank0.pt'), state))
    weights = weights_source(path)
    assert isinstance(weights, CheckpointWeights)
    target = tiny_mpt(seed=6)
    load_weights(target, weights, 'checkpoint', max_bytes=2048)
    _equal(source, target)
