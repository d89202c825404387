"""The finetuning recipes pass the config layer, `foundry info` and `foundry plan` (StoryWriter at
65,536 tokens fits 8 x H100 at micro-batch 1 with activation checkpointing, not without)."""

from __future__ import annotations

import os

import pytest

from foundry.cli import main as foundry

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
RECIPES = {name: os.path.join(ROOT, 'yamls', 'finetune', f'mpt-7b-{name}.yaml')
           for name in ('instruct', 'chat', 'storywriter')}


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_recipe_info(name, capsys):
    assert foundry(['info', RECIPES[name]]) == 0
    out = capsys.readouterr().out
    assert 'parameters: 6,649,286,656' in out
    if name == 'storywriter':
        assert 'max_seq_len=65536' in out and 'global batch: 16 x 65536' in out
    else:
        assert 'train_loader: finetuning, max_seq_len 2048, packing_ratio auto' in out
        assert f'target_responses {"all" if name == "chat" else "last"}' in out


def test_storywriter_plan_on_8_h100(capsys):
    from foundry.config.load import load_config

    cfg = load_config(RECIPES['storywriter'], [])
    attn = cfg.model['attn_config']
    assert (attn['alibi_bias_max'], attn['clip_qkv'], cfg.optimizer['name']) == \
        (16, 6, 'decoupled_lionw')
    assert cfg.fsdp_config.activation_checkpointing is True
    assert foundry(['plan', RECIPES['storywriter'], '--gpus', '8', '--gpu', 'h100']) == 0
    out = capsys.readouterr().out
    assert 'seq 65536' in out and 'micro-batch 1' in out
    fits = next(line for line in out.splitlines() if line.strip().startswith('on 80 GiB'))
    assert 'fits (+' in fits and 'does not fit' in fits  # on with checkpointing, off without
