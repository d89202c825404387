"""Tiny MPT configs shared by the model tests (a plain module: tests/ has no packages)."""

import torch

from foundry.models.mpt import MPTConfig, MPTForCausalLM

VOCAB = 97


def tiny_config(**overrides) -> MPTConfig:
    kwargs = dict(d_model=32, n_heads=4, n_layers=2, expansion_ratio=4, max_seq_len=64,
                  vocab_size=VOCAB, tokenizer_name=None)
    kwargs.update(overrides)
    return MPTConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> MPTForCausalLM:
    torch.manual_seed(seed)
    return MPTForCausalLM(tiny_config(**overrides)).eval()


def make_ids(batch: int = 2, seq: int = 16, seed: int = 1234) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, seq), generator=g)
