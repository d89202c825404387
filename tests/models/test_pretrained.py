"""`model.pretrained_model_name_or_path`: a run starts from a folder in llm-foundry's layout (its config.json
keys, split Wq/Wk/Wv weights), in this process (one rank, FSDP2), with the folder's weights in the model."""

from __future__ import annotations

import json
import logging
import os

import torch
from safetensors.torch import save_file

from tests.checkpoint.test_runs_inprocess import train_here
from tests.e2e.conftest import tiny_data  # noqa: F401  (the corpus fixture)

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')


def llmfoundry_folder(path, seed: int = 5):
    """tiny.yaml's architecture written as llm-foundry 0.22 writes it with fused_qkv: false."""
    from foundry.models.mpt.configuration import MPTConfig
    from foundry.models.mpt.modeling import MPTForCausalLM

    with open(os.path.join(FIXTURES, 'llmfoundry_0.22_config.json')) as f:
        raw = json.load(f)
    raw.update(d_model=32, n_heads=2, n_layers=2, expansion_ratio=2, max_seq_len=32, vocab_size=512)
    raw['attn_config'].update(fused_qkv=False, attn_impl='flash')  # llm-foundry's default kernel
    torch.manual_seed(seed)
    model = MPTForCausalLM(MPTConfig(**{k: v for k, v in raw.items() if k not in ('architectures', 'model_type')}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    tensors = {}
    for name, tensor in model.state_dict().items():
        if '.attn.Wqkv.' in name:
            for part, value in zip(('Wq', 'Wk', 'Wv'), tensor.split([32, 32, 32])):
                tensors[name.replace('Wqkv', part)] = value.clone()
        else:
            tensors[name] = tensor.clone()
    os.makedirs(path)
    save_file(tensors, os.path.join(path, 'model.safetensors'))
    with open(os.path.join(path, 'config.json'), 'w') as f:
        json.dump(raw, f)
    return model


def test_a_run_starts_from_an_llmfoundry_folder(tiny_data, tmp_path, caplog):  # noqa: F811
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    caplog.set_level(logging.INFO, logger='foundry')
    folder = str(tmp_path / 'llmfoundry')
    source = llmfoundry_folder(folder)
    # tiny.yaml's own model keys describe the same architecture; the folder's config.json is the base.
    trainer = train_here(tiny_data, str(tmp_path / 'run'), f'model.pretrained_model_name_or_path={folder}',
                         'max_duration=1ba')
    assert f'loaded {len(source.state_dict())} tensors from the Hugging Face folder {folder}' in caplog.text
    # One batch: tiny.yaml warms the lr up from 0, so the weights are still the folder's.
    got = get_model_state_dict(trainer.state.model.model, options=StateDictOptions(full_state_dict=True))
    for name, tensor in source.state_dict().items():
        assert torch.equal(got[name], tensor), name
