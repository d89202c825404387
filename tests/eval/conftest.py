"""A tiny MPT and a small BPE trained on the shipped smoke tasks' text, for token-level checks."""

from __future__ import annotations

import json
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, 'eval', 'local_data', 'smoke')


def smoke_text() -> str:
    parts = []
    for name in sorted(os.listdir(SMOKE)):
        with open(os.path.join(SMOKE, name), encoding='utf-8') as f:
            for line in f:
                row = json.loads(line)
                parts += [v if isinstance(v, str) else ' '.join(map(str, v)) for v in row.values() if not isinstance(v, int)]
    return '\n'.join(parts)


@pytest.fixture(scope='session')
def tokenizer(tmp_path_factory):
    from foundry.data.prep.demo_corpus import train_demo_tokenizer
    from foundry.data.tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp('eval_tok')
    text = root / 'text.txt'
    text.write_text(smoke_text(), encoding='utf-8')
    return build_tokenizer(train_demo_tokenizer([str(text)], vocab_size=512, out_path=str(root / 'tokenizer.json')))


@pytest.fixture(scope='session')
def tiny_model():
    from foundry.models.mpt.configuration import MPTConfig
    from foundry.models.mpt.modeling import MPTForCausalLM

    torch.manual_seed(0)
    config = MPTConfig(d_model=32, n_heads=2, n_layers=2, expansion_ratio=2, max_seq_len=64, vocab_size=512,
                       no_bias=True, attn_config={'attn_impl': 'torch', 'alibi': True}, init_device='cpu')
    model = MPTForCausalLM(config).eval()
    # Untrained logits are nearly flat; scale the output so choices differ by more than float noise.
    with torch.no_grad():
        model.transformer.wte.weight.mul_(20)
    return model


def hand_loglik(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """Sum of log p(cont | ctx) and whether every token is the argmax, from one plain forward of ctx + cont."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ctx + cont])).logits[0].float()
    total, greedy = 0.0, True
    for j, token in enumerate(cont):
        row = logits[len(ctx) - 1 + j]
        total += float(torch.log_softmax(row, -1)[token])
        greedy &= int(row.argmax()) == token
    return total, greedy
