"""Parameter counts and training FLOPs of an MPT model, for MFU and logging.

Training FLOPs use llm-foundry's documented formula so our MFU is comparable with its published
table: per sequence of T tokens

    passes * (2 * N * T + 4 * n_layers * d_model * T^2)

passes = 3 (forward + backward), or 4 to count the recomputed forward of activation checkpointing
(hardware rather than model FLOPs). The attention term counts the full T x T score matrix, as
llm-foundry does, not the causal half.

N is the number of parameters that take part in a matrix multiply per token: all non-embedding
parameters plus the output (unembedding) projection, d_model * vocab_size. The input-embedding and
position-table lookups are gathers, not matmuls, so they are left out. For the default tied model
N equals the total parameter count (the shared table is counted once, as the output matmul), which
is exactly what llm-foundry uses; for untied models we do not count the input table a second time.
"""

from __future__ import annotations

import copy

from .mpt.configuration import MPTConfig


def count_parameters(config: MPTConfig) -> int:
    """Total parameters (tied tables counted once), from a meta-device build: nothing is allocated."""
    return sum(p.numel() for p in _meta_model(config).parameters())


def non_embedding_parameters(config: MPTConfig) -> int:
    """Parameters outside the token/position tables and the untied output head."""
    model = _meta_model(config)
    tables = {"transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"}
    return sum(p.numel() for name, p in model.named_parameters() if name not in tables)


def matmul_parameters(config: MPTConfig) -> int:
    """N of the FLOPs formula: non-embedding parameters + the d_model x vocab output projection."""
    return non_embedding_parameters(config) + config.d_model * config.vocab_size


def flops_per_token(config: MPTConfig, seq_len: int, *, passes: int = 3,
                    n_params: int | None = None) -> float:
    """Training FLOPs per token at sequence length `seq_len` (pass n_params to skip recounting)."""
    n = matmul_parameters(config) if n_params is None else n_params
    return passes * (2 * n + 4 * config.n_layers * config.d_model * seq_len)


def flops_per_sequence(config: MPTConfig, seq_len: int, *, passes: int = 3,
                       n_params: int | None = None) -> float:
    return flops_per_token(config, seq_len, passes=passes, n_params=n_params) * seq_len


def _meta_model(config: MPTConfig):
    from .mpt.modeling import MPTForCausalLM  # local: keeps this module importable on its own

    meta_config = copy.deepcopy(config)
    meta_config.init_device = "meta"
    return MPTForCausalLM(meta_config)
